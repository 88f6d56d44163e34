//! `cairn drive ...`: the Drive's commands (`docs/drive.md`), the request each one runs, and
//! how its answer is printed. Drive paths are checked here before anything is sent, with the
//! service's own check, so a path a URL library would rewrite (`a/../b`) never leaves the CLI
//! and both modes refuse it with the same message.

use std::path::PathBuf;

use cairn_server::api::Request;
use cairn_server::drive::{parse_path, DriveRequest};
use clap::Subcommand;
use serde_json::Value;

use crate::{output, print_json, Failure};

/// The Drive: a tree of items with versioned JSON data, typed by JSON Schemas.
#[derive(Subcommand)]
pub enum Drive {
    /// Add a folder, or an item of a type (`--type`), under an existing parent.
    #[command(
        after_help = "Example:\n  cairn drive add notes\n  cairn drive add notes/first --type note"
    )]
    Add {
        /// Drive path (`a/b/c`: lower-case letters, digits, `.`, `_`, `-`).
        path: String,
        /// The item's type (see `drive type set`); a folder when absent.
        #[arg(long = "type", value_name = "TYPE")]
        type_name: Option<String>,
    },
    /// Put a data version: the next one, or `--version X.Y.Z` (never below the current one).
    #[command(
        after_help = "Example:\n  cairn drive put notes/first '{\"text\": \"hello\"}'\n  cairn drive put notes/first --file note.json --version 2.0.0"
    )]
    Put {
        /// Drive path.
        path: String,
        /// The data, as JSON text (or give `--file`).
        #[arg(
            value_name = "JSON",
            conflicts_with = "file",
            required_unless_present = "file"
        )]
        value: Option<String>,
        /// A file holding the data as JSON (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// `MAJOR.MINOR.PATCH`.
        #[arg(long, value_name = "X.Y.Z")]
        version: Option<String>,
    },
    /// Print a data version (the current one unless `--version`).
    #[command(after_help = "Example:\n  cairn drive get notes/first --version 1.0.0")]
    Get {
        /// Drive path.
        path: String,
        /// `MAJOR.MINOR.PATCH`.
        #[arg(long, value_name = "X.Y.Z")]
        version: Option<String>,
    },
    /// List the items under PATH (the root when absent) that this token may read, in name
    /// order, one page (the next page: `--after` the name it ends with).
    #[command(
        after_help = "Example:\n  cairn drive ls notes --json\n  cairn drive ls notes --limit 100 --after n099"
    )]
    Ls {
        /// Drive path of the parent.
        path: Option<String>,
        /// List the names after this one.
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
        /// At most this many (default and most: 10000).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Show one item: its type, current version, your level and (for its admins) permissions.
    #[command(after_help = "Example:\n  cairn drive show notes/first")]
    Show {
        /// Drive path.
        path: String,
    },
    /// Move or rename an item, with everything under it.
    #[command(after_help = "Example:\n  cairn drive mv notes/first archive/first")]
    Mv {
        /// Drive path of the item.
        from: String,
        /// Its new path (its parent must exist).
        to: String,
    },
    /// Delete an item with everything under it, or with `--version` one data version (the
    /// current one falls back to the newest left).
    #[command(
        after_help = "Example:\n  cairn drive rm archive\n  cairn drive rm notes/first --version 2.0.0"
    )]
    Rm {
        /// Drive path.
        path: String,
        /// Delete only this data version.
        #[arg(long, value_name = "X.Y.Z")]
        version: Option<String>,
    },
    /// List an item's data versions (`*` marks the current one).
    #[command(after_help = "Example:\n  cairn drive versions notes/first --json")]
    Versions {
        /// Drive path.
        path: String,
    },
    /// Permissions on items.
    #[command(subcommand)]
    Perm(Perm),
    /// Types: their JSON Schemas, versions and migrations.
    #[command(subcommand)]
    Type(Type),
}

/// `cairn drive perm ...`
#[derive(Subcommand)]
pub enum Perm {
    /// Set what WHO may do on PATH and below: deny, read, edit, admin, or inherit (clear it).
    #[command(
        after_help = "Example:\n  cairn drive perm set notes token:ann edit\n  cairn drive perm set notes/private role:read deny"
    )]
    Set {
        /// Drive path.
        path: String,
        /// `token:NAME` or `role:read|write|admin|mirror`.
        who: String,
        /// deny | read | edit | admin | inherit
        level: String,
    },
}

/// `cairn drive type ...`
#[derive(Subcommand)]
pub enum Type {
    /// Set a type's JSON Schema at a version. A higher version rewrites every item's data
    /// through `--migration` (this binary registers `fill-defaults`), all in one commit.
    #[command(
        after_help = "Example:\n  cairn drive type set note note-v2.json --version 2 --migration fill-defaults"
    )]
    Set {
        /// Type name (`[a-z][a-z0-9_.:-]{0,63}`).
        name: String,
        /// A file holding the JSON Schema.
        schema: PathBuf,
        /// The type's new version.
        #[arg(long, value_name = "N")]
        version: u32,
        /// A registered migration.
        #[arg(long, value_name = "NAME")]
        migration: Option<String>,
    },
    /// List types.
    #[command(after_help = "Example:\n  cairn drive type list")]
    List,
    /// Show a type with its schema.
    #[command(after_help = "Example:\n  cairn drive type show note")]
    Show {
        /// Type name.
        name: String,
    },
}

/// A drive path given on the command line, refused here as the service would refuse it.
fn path(text: &str) -> Result<String, Failure> {
    parse_path(text).map_err(|e| Failure::Other(e.message))?;
    Ok(text.to_string())
}

fn json_file(file: &PathBuf, what: &str) -> Result<Value, Failure> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::Other(format!("cannot read {what} from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::Other(format!("cannot read {}: {e}", file.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::Other(format!("{} is not JSON: {e}", file.display())))
}

/// The request a drive command runs, and whether it writes.
pub fn request_of(cmd: &Drive) -> Result<(Request, bool), Failure> {
    let (req, writes) = match cmd {
        Drive::Add { path: p, type_name } => (
            DriveRequest::Add {
                path: path(p)?,
                type_name: type_name.clone(),
            },
            true,
        ),
        Drive::Put {
            path: p,
            value,
            file,
            version,
        } => {
            let data = match (value, file) {
                (Some(text), _) => serde_json::from_str(text)
                    .map_err(|e| Failure::Other(format!("the data is not JSON: {e}")))?,
                (None, Some(f)) => json_file(f, "the data")?,
                (None, None) => {
                    return Err(Failure::Usage("give the data as JSON, or --file F".into()))
                }
            };
            (
                DriveRequest::Put {
                    path: path(p)?,
                    data,
                    version: version.clone(),
                },
                true,
            )
        }
        Drive::Get { path: p, version } => (
            DriveRequest::Get {
                path: path(p)?,
                version: version.clone(),
            },
            false,
        ),
        Drive::Ls {
            path: p,
            after,
            limit,
        } => (
            DriveRequest::List {
                path: p.as_deref().map(path).transpose()?,
                after: after.clone(),
                limit: *limit,
            },
            false,
        ),
        Drive::Show { path: p } => (DriveRequest::Show { path: path(p)? }, false),
        Drive::Mv { from, to } => (
            DriveRequest::Move {
                from: path(from)?,
                to: path(to)?,
            },
            true,
        ),
        Drive::Rm {
            path: p,
            version: None,
        } => (DriveRequest::Rm { path: path(p)? }, true),
        Drive::Rm {
            path: p,
            version: Some(v),
        } => (
            DriveRequest::RmVersion {
                path: path(p)?,
                version: v.clone(),
            },
            true,
        ),
        Drive::Versions { path: p } => (DriveRequest::Versions { path: path(p)? }, false),
        Drive::Perm(Perm::Set {
            path: p,
            who,
            level,
        }) => (
            DriveRequest::PermSet {
                path: path(p)?,
                who: who.clone(),
                level: level.clone(),
            },
            true,
        ),
        Drive::Type(Type::Set {
            name,
            schema,
            version,
            migration,
        }) => (
            DriveRequest::TypeSet {
                name: name.clone(),
                version: *version,
                schema: json_file(schema, "the schema")?,
                migration: migration.clone(),
            },
            true,
        ),
        Drive::Type(Type::List) => (DriveRequest::TypeList, false),
        Drive::Type(Type::Show { name }) => (DriveRequest::TypeShow { name: name.clone() }, false),
    };
    Ok((Request::Drive(req), writes))
}

/// Prints a read's answer for people; `false` for a command's answer (printed as every
/// command's is).
pub fn print(cmd: &Drive, v: &Value) -> bool {
    match cmd {
        Drive::Get { path, .. } => match &v["data"] {
            Value::Null if v["version"].is_null() => eprintln!("({path} has no data)"),
            data => print_json(data),
        },
        Drive::Ls { path, .. } => {
            output::list(
                &v["items"],
                &["PATH", "TYPE", "CURRENT", "LEVEL", "REVISION"],
                &["path", "type", "current", "level", "revision"],
            );
            if let Some(next) = v["next"].as_str() {
                let path = path.as_deref().map(|p| format!("{p} ")).unwrap_or_default();
                eprintln!("(more: cairn drive ls {path}--after {next})");
            }
        }
        Drive::Show { .. } => {
            output::fields(
                v,
                &["path", "type", "current", "level", "created", "revision"],
            );
            match v["perms"].as_object() {
                Some(perms) if perms.is_empty() => println!("perms     none set here"),
                Some(perms) => {
                    println!("perms");
                    for (who, level) in perms {
                        println!("  {who}  {}", output::s(level));
                    }
                }
                // Shown to the item's admins only.
                None => {}
            }
        }
        Drive::Versions { .. } => {
            for row in v.as_array().into_iter().flatten() {
                let mark = if row["current"] == Value::Bool(true) {
                    " *"
                } else {
                    ""
                };
                println!("{}{mark}", output::s(&row["version"]));
            }
        }
        Drive::Type(Type::List) => output::list(
            v,
            &["NAME", "VERSION", "MIGRATION", "REVISION"],
            &["name", "version", "migration", "revision"],
        ),
        Drive::Type(Type::Show { .. }) => {
            output::fields(v, &["name", "version", "migration", "revision"]);
            println!("schema");
            print_json(&v["schema"]);
        }
        Drive::Add { .. }
        | Drive::Put { .. }
        | Drive::Mv { .. }
        | Drive::Rm { .. }
        | Drive::Perm(_)
        | Drive::Type(Type::Set { .. }) => return false,
    }
    true
}
