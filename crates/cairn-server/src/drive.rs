//! The Drive over the API (`docs/drive.md`): [`DriveRequest`], every drive operation a CLI
//! command runs, with its HTTP form under `/v1/drive/` and the role it needs; the service side,
//! which checks each text argument once and runs it as the caller's [`DriveActor`]; and
//! [`from_http`], which turns a route back into the request.
//!
//! Drive paths travel in the URL, one percent-encoded segment per drive segment. The server
//! decodes each segment of the raw path on its own, so an encoded `/` (`%2F`) cannot join two
//! segments: it is refused, as are `..`, empty segments and everything else
//! [`DrivePath::parse`] refuses, with the same message in local and remote mode.

use std::collections::HashMap;

use axum::http::Method;
use cairn::drive::SeenItem;
use cairn::kernel::drive::{
    check_type_name, DataVersion, DriveActor, DriveCommand, DriveItem, DrivePath, DriveType, Level,
    Who, DRIVE_LIST_ITEMS_MAX,
};
use cairn::kernel::echo::echo;
use cairn::kernel::model::Role;
use cairn::{CommandOptions, Workspace};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{codes, seg, ApiError, Http};

/// One drive operation. Paths, versions, levels and names travel as text and are checked by
/// the service, so both modes refuse bad values with the same message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "drive", rename_all = "snake_case")]
pub enum DriveRequest {
    /// `cairn drive add PATH [--type T]`: a folder, or an item of a type.
    Add {
        /// Drive path (`a/b/c`).
        path: String,
        /// Its type; none for a folder.
        type_name: Option<String>,
    },
    /// `cairn drive show PATH`: one item.
    Show {
        /// Drive path.
        path: String,
    },
    /// `cairn drive ls [PATH] [--after NAME] [--limit N]`: the items under `PATH` (none: the
    /// root), one page.
    List {
        /// Drive path of the parent, or none for the root.
        path: Option<String>,
        /// List the names after this one (the `next` of the page before).
        after: Option<String>,
        /// At most this many (default and most: `DRIVE_LIST_ITEMS_MAX`).
        limit: Option<u64>,
    },
    /// `cairn drive mv FROM TO`: moves or renames an item with everything under it.
    Move {
        /// Drive path of the item.
        from: String,
        /// Its new path.
        to: String,
    },
    /// `cairn drive rm PATH`: deletes an item with everything under it.
    Rm {
        /// Drive path.
        path: String,
    },
    /// `cairn drive put PATH (--json J | --file F) [--version X.Y.Z]`
    Put {
        /// Drive path.
        path: String,
        /// The data.
        data: Value,
        /// `MAJOR.MINOR.PATCH`, or none for the next version.
        version: Option<String>,
    },
    /// `cairn drive get PATH [--version V]`: one data version (none: the current one).
    Get {
        /// Drive path.
        path: String,
        /// `MAJOR.MINOR.PATCH`.
        version: Option<String>,
    },
    /// `cairn drive rm PATH --version V`: deletes one data version.
    RmVersion {
        /// Drive path.
        path: String,
        /// `MAJOR.MINOR.PATCH`.
        version: String,
    },
    /// `cairn drive versions PATH`
    Versions {
        /// Drive path.
        path: String,
    },
    /// `cairn drive perm set PATH WHO LEVEL`
    PermSet {
        /// Drive path.
        path: String,
        /// `token:NAME` or `role:ROLE`.
        who: String,
        /// `deny`, `read`, `edit`, `admin`, or `inherit` (clears it).
        level: String,
    },
    /// `cairn drive type set T SCHEMA.json --version N [--migration NAME]`
    TypeSet {
        /// Type name.
        name: String,
        /// Its new version.
        version: u32,
        /// Its JSON Schema.
        schema: Value,
        /// A registered migration's name.
        migration: Option<String>,
    },
    /// `cairn drive type list`
    TypeList,
    /// `cairn drive type show T`
    TypeShow {
        /// Type name.
        name: String,
    },
}

impl DriveRequest {
    /// `(least role, reads only)`.
    ///
    /// Drive commands need only a `read` token here: what a token may do in the drive is
    /// the drive's permissions (which may grant a read token `edit` on a subtree, or deny a
    /// write token), checked by the kernel on every drive command. A `mirror` token may do
    /// nothing. Setting a type is for workspace admins.
    pub(crate) fn class(&self) -> (Role, bool) {
        use DriveRequest::*;
        match self {
            Show { .. }
            | List { .. }
            | Get { .. }
            | Versions { .. }
            | TypeList
            | TypeShow { .. } => (Role::Read, true),
            Add { .. }
            | Move { .. }
            | Rm { .. }
            | Put { .. }
            | RmVersion { .. }
            | PermSet { .. } => (Role::Read, false),
            TypeSet { .. } => (Role::Admin, false),
        }
    }

    /// The request's HTTP form.
    pub(crate) fn http(&self) -> Http {
        use DriveRequest::*;
        let get = |path: String| Http {
            method: "GET",
            path,
            query: vec![],
            body: None,
        };
        let with = |method: &'static str, path: String, body: Value| Http {
            method,
            path,
            query: vec![],
            body: Some(body),
        };
        match self {
            Add { path, type_name } => with(
                "POST",
                drive_url("items", path),
                json!({ "type": type_name }),
            ),
            Show { path } => get(drive_url("items", path)),
            List { path, after, limit } => {
                let mut query = Vec::new();
                if let Some(a) = after {
                    query.push(("after", a.clone()));
                }
                if let Some(l) = limit {
                    query.push(("limit", l.to_string()));
                }
                let url = match path {
                    None => "/v1/drive/children".into(),
                    Some(p) => drive_url("children", p),
                };
                Http { query, ..get(url) }
            }
            Move { from, to } => with(
                "POST",
                "/v1/drive/move".into(),
                json!({ "from": from, "to": to }),
            ),
            Rm { path } => Http {
                method: "DELETE",
                ..get(drive_url("items", path))
            },
            Put {
                path,
                data,
                version,
            } => with(
                "PUT",
                drive_url("data", path),
                json!({ "data": data, "version": version }),
            ),
            Get { path, version } => Http {
                query: version.iter().map(|v| ("version", v.clone())).collect(),
                ..get(drive_url("data", path))
            },
            RmVersion { path, version } => Http {
                method: "DELETE",
                query: vec![("version", version.clone())],
                ..get(drive_url("data", path))
            },
            Versions { path } => get(drive_url("versions", path)),
            PermSet { path, who, level } => with(
                "PUT",
                drive_url("perms", path),
                json!({ "who": who, "level": level }),
            ),
            TypeSet {
                name,
                version,
                schema,
                migration,
            } => with(
                "PUT",
                format!("/v1/drive/types/{}", seg(name)),
                json!({ "version": version, "schema": schema, "migration": migration }),
            ),
            TypeList => get("/v1/drive/types".into()),
            TypeShow { name } => get(format!("/v1/drive/types/{}", seg(name))),
        }
    }
}

/// `/v1/drive/<what>/<path>`, each segment of the drive path percent-encoded on its own.
fn drive_url(what: &str, path: &str) -> String {
    let segments: Vec<String> = path.split('/').map(seg).collect();
    format!("/v1/drive/{what}/{}", segments.join("/"))
}

/// The request a route under `/v1/drive/` stands for. `raw_path` is the URI's path as it
/// came (not percent-decoded); `body` is read only by the routes that take one.
pub(crate) fn from_http(
    method: &Method,
    raw_path: &str,
    query: &HashMap<String, String>,
    body: impl FnOnce() -> Result<Value, ApiError>,
) -> Result<DriveRequest, ApiError> {
    let rest = raw_path.strip_prefix("/v1/drive/").unwrap_or_default();
    let (what, tail) = match rest.split_once('/') {
        Some((what, tail)) => (what, Some(tail)),
        None => (rest, None),
    };
    let path = || -> Result<String, ApiError> {
        match tail {
            Some(t) => decode_path(t),
            None => Err(ApiError::bad(format!(
                "{raw_path} names no drive item: add its path, as in /v1/drive/{what}/a/b"
            ))),
        }
    };
    let version = || query.get("version").cloned();
    let m = method.as_str();
    Ok(match (what, m) {
        ("items", "POST") => {
            let b: AddBody = typed(body()?)?;
            DriveRequest::Add {
                path: path()?,
                type_name: b.type_name,
            }
        }
        ("items", "GET") => DriveRequest::Show { path: path()? },
        ("items", "DELETE") => DriveRequest::Rm { path: path()? },
        ("children", "GET") => DriveRequest::List {
            path: tail.map(decode_path).transpose()?,
            after: query.get("after").cloned(),
            limit: query
                .get("limit")
                .map(|l| {
                    l.parse().map_err(|_| {
                        ApiError::bad(format!(
                            "query parameter limit={} is not a non-negative integer",
                            echo(l)
                        ))
                    })
                })
                .transpose()?,
        },
        ("move", "POST") if tail.is_none() => {
            let b: MoveBody = typed(body()?)?;
            DriveRequest::Move {
                from: b.from,
                to: b.to,
            }
        }
        ("data", "PUT") => {
            let b: PutBody = typed(body()?)?;
            DriveRequest::Put {
                path: path()?,
                data: b.data,
                version: b.version,
            }
        }
        ("data", "GET") => DriveRequest::Get {
            path: path()?,
            version: version(),
        },
        ("data", "DELETE") => DriveRequest::RmVersion {
            path: path()?,
            version: version().ok_or_else(|| {
                ApiError::bad(
                    "DELETE /v1/drive/data/PATH needs ?version=X.Y.Z (to delete the item, \
                     DELETE /v1/drive/items/PATH)",
                )
            })?,
        },
        ("versions", "GET") => DriveRequest::Versions { path: path()? },
        ("perms", "PUT") => {
            let b: PermBody = typed(body()?)?;
            DriveRequest::PermSet {
                path: path()?,
                who: b.who,
                level: b.level,
            }
        }
        ("types", "GET") if tail.is_none() => DriveRequest::TypeList,
        ("types", "GET") => DriveRequest::TypeShow {
            name: decode_segment(tail.unwrap_or_default())?,
        },
        ("types", "PUT") if tail.is_some() => {
            let b: TypeBody = typed(body()?)?;
            DriveRequest::TypeSet {
                name: decode_segment(tail.unwrap_or_default())?,
                version: b.version,
                schema: b.schema,
                migration: b.migration,
            }
        }
        ("items" | "data" | "children" | "versions" | "perms" | "types" | "move", _) => {
            return Err(ApiError::new(
                codes::METHOD_NOT_ALLOWED,
                format!("{m} is not allowed on {}", echo(raw_path)),
            ))
        }
        _ => {
            return Err(ApiError::new(
                codes::NOT_FOUND,
                format!("no such endpoint: {m} {}", echo(raw_path)),
            ))
        }
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad(format!("request body is not the expected JSON: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    #[serde(default, rename = "type")]
    type_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    data: Value,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermBody {
    who: String,
    level: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeBody {
    version: u32,
    schema: Value,
    #[serde(default)]
    migration: Option<String>,
}

/// A drive path from the raw URL: each segment decoded on its own; one that decodes to a `/`
/// is refused (the path itself is checked later, by [`DrivePath::parse`]).
fn decode_path(raw: &str) -> Result<String, ApiError> {
    let segments = raw
        .split('/')
        .map(decode_segment)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(segments.join("/"))
}

/// One percent-decoded URL segment, which must be UTF-8 and hold no `/`.
fn decode_segment(raw: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad(format!("path segment {} {why}", echo(raw)));
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("has a `%` that is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| bad("does not decode to UTF-8"))?;
    if text.contains('/') {
        return Err(bad(
            "encodes a `/` (%2F): a drive path's segments are separated by a literal `/`",
        ));
    }
    Ok(text)
}

/// A drive path given as text, or the reason it is not one (`invalid`, as the kernel would).
pub fn parse_path(text: &str) -> Result<DrivePath, ApiError> {
    DrivePath::parse(text).map_err(|e| ApiError::new("invalid", e))
}

fn parse_version(text: &str) -> Result<DataVersion, ApiError> {
    DataVersion::parse(text).map_err(|e| ApiError::new("invalid", e))
}

/// Runs one drive request as `actor`.
pub(crate) async fn run(
    ws: &Workspace,
    actor: &DriveActor,
    req: DriveRequest,
    opts: &CommandOptions,
) -> Result<Value, ApiError> {
    let command = |op: DriveCommand| async move {
        let c = ws.drive(actor, op, opts).await?;
        crate::service::committed(c)
    };
    match req {
        DriveRequest::Add { path, type_name } => {
            let path = parse_path(&path)?;
            if let Some(t) = &type_name {
                check_type_name(t).map_err(|e| ApiError::new("invalid", e))?;
            }
            command(DriveCommand::Add { path, type_name }).await
        }
        DriveRequest::Show { path } => {
            let seen = ws.drive_item(actor, &parse_path(&path)?).await?;
            Ok(item_json(&seen))
        }
        DriveRequest::List { path, after, limit } => {
            let parent = path.as_deref().map(parse_path).transpose()?;
            let limit = limit.map_or(DRIVE_LIST_ITEMS_MAX, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            });
            let page = ws
                .drive_list(actor, parent.as_ref(), after.as_deref(), limit)
                .await?;
            Ok(json!({
                "items": page.items.iter().map(item_json).collect::<Vec<_>>(),
                "next": page.next,
            }))
        }
        DriveRequest::Move { from, to } => {
            let (from, to) = (parse_path(&from)?, parse_path(&to)?);
            command(DriveCommand::Move { from, to }).await
        }
        DriveRequest::Rm { path } => {
            command(DriveCommand::Delete {
                path: parse_path(&path)?,
            })
            .await
        }
        DriveRequest::Put {
            path,
            data,
            version,
        } => {
            let path = parse_path(&path)?;
            let version = version.as_deref().map(parse_version).transpose()?;
            command(DriveCommand::Put {
                path,
                version,
                data: data.to_string(),
            })
            .await
        }
        DriveRequest::Get { path, version } => {
            let path = parse_path(&path)?;
            let version = version.as_deref().map(parse_version).transpose()?;
            let got = ws.drive_get(actor, &path, version).await?;
            Ok(json!({
                "path": path.to_string(),
                "version": got.as_ref().map(|d| d.version.to_string()),
                "data": got.map(|d| d.data),
            }))
        }
        DriveRequest::RmVersion { path, version } => {
            let path = parse_path(&path)?;
            let version = parse_version(&version)?;
            command(DriveCommand::DeleteVersion { path, version }).await
        }
        DriveRequest::Versions { path } => {
            let path = parse_path(&path)?;
            let read = ws.drive_versions(actor, &path).await?;
            Ok(Value::Array(
                read.versions
                    .iter()
                    .map(|v| {
                        json!({
                            "version": v.to_string(),
                            "current": Some(*v) == read.current,
                        })
                    })
                    .collect(),
            ))
        }
        DriveRequest::PermSet { path, who, level } => {
            let path = parse_path(&path)?;
            let who = Who::parse(&who).map_err(|e| ApiError::new("invalid", e))?;
            let level = match level.as_str() {
                "inherit" => None,
                other => Some(Level::parse(other).map_err(|e| {
                    ApiError::new("invalid", format!("{e} (or inherit, to clear it)"))
                })?),
            };
            command(DriveCommand::SetPerm { path, who, level }).await
        }
        DriveRequest::TypeSet {
            name,
            version,
            schema,
            migration,
        } => {
            check_type_name(&name).map_err(|e| ApiError::new("invalid", e))?;
            command(DriveCommand::SetType {
                name,
                version,
                schema: schema.to_string(),
                migration,
            })
            .await
        }
        DriveRequest::TypeList => {
            let types = ws.drive_types().await?;
            Ok(Value::Array(
                types.iter().map(|t| type_json(t, false)).collect(),
            ))
        }
        DriveRequest::TypeShow { name } => {
            let t = ws.drive_type(&name).await?.ok_or_else(|| {
                ApiError::new(
                    codes::NOT_FOUND,
                    format!("drive type {} does not exist", echo(&name)),
                )
            })?;
            Ok(type_json(&t, true))
        }
    }
}

/// An item as JSON: `{path, name, type, current, level, perms, created, revision}`; `perms`
/// (`{"token:ann": "edit", ...}`) only for whom has `admin` on it, else `null`.
fn item_json(seen: &SeenItem) -> Value {
    let DriveItem {
        path,
        type_name,
        current,
        perms,
        created,
        revision,
    } = &seen.item;
    let perms = (seen.level == Level::Admin).then(|| {
        perms
            .iter()
            .map(|(who, level)| (who.to_string(), json!(level.as_str())))
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "path": path.to_string(),
        "name": path.name(),
        "type": type_name,
        "current": current.map(|v| v.to_string()),
        "level": seen.level.as_str(),
        "perms": perms,
        "created": created,
        "revision": revision,
    })
}

/// A type as JSON; its schema (parsed) only when `schema`.
fn type_json(t: &DriveType, schema: bool) -> Value {
    let mut v = json!({
        "name": t.name,
        "version": t.version,
        "migration": t.migration,
        "revision": t.revision,
    });
    if schema {
        v["schema"] = serde_json::from_str(&t.schema).unwrap_or(Value::String(t.schema.clone()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drive_request_comes_back_from_its_http_form() {
        let s = |x: &str| x.to_string();
        let all = [
            DriveRequest::Add {
                path: s("a/b"),
                type_name: Some(s("note")),
            },
            DriveRequest::Add {
                path: s("a"),
                type_name: None,
            },
            DriveRequest::Show { path: s("a/b.c") },
            DriveRequest::List {
                path: None,
                after: None,
                limit: None,
            },
            DriveRequest::List {
                path: Some(s("a")),
                after: Some(s("b-c")),
                limit: Some(7),
            },
            DriveRequest::Move {
                from: s("a"),
                to: s("b/c"),
            },
            DriveRequest::Rm { path: s("a") },
            DriveRequest::Put {
                path: s("a/b"),
                data: json!({"x": [1, "two"]}),
                version: Some(s("1.2.3")),
            },
            DriveRequest::Put {
                path: s("a/b"),
                data: json!(null),
                version: None,
            },
            DriveRequest::Get {
                path: s("a/b"),
                version: Some(s("1.0.0")),
            },
            DriveRequest::Get {
                path: s("a/b"),
                version: None,
            },
            DriveRequest::RmVersion {
                path: s("a"),
                version: s("2.0.0"),
            },
            DriveRequest::Versions { path: s("a") },
            DriveRequest::PermSet {
                path: s("a"),
                who: s("role:read"),
                level: s("inherit"),
            },
            DriveRequest::TypeSet {
                name: s("app:note"),
                version: 3,
                schema: json!({"type": "object"}),
                migration: Some(s("fill-defaults")),
            },
            DriveRequest::TypeList,
            DriveRequest::TypeShow {
                name: s("app:note"),
            },
            // Bad text is carried as it is, for the service to refuse with its message.
            DriveRequest::Show {
                path: s("A B/%2F/../"),
            },
        ];
        for req in all {
            let h = req.http();
            let method = Method::from_bytes(h.method.as_bytes()).unwrap();
            let query: HashMap<String, String> = h
                .query
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let body = h.body.clone().unwrap_or(Value::Null);
            let back = from_http(&method, &h.path, &query, || Ok(body)).unwrap();
            assert!(back == req, "{} {} did not come back", h.method, h.path);
        }
    }

    #[test]
    fn an_encoded_slash_or_a_bad_escape_in_a_raw_path_is_refused_naming_it() {
        let q = HashMap::new();
        let get = |p: &str| from_http(&Method::GET, p, &q, || Ok(Value::Null));
        let e = get("/v1/drive/items/a%2Fb").err().unwrap();
        assert!(
            e.message.contains("%2F") && e.message.contains("a%2Fb"),
            "{e}"
        );
        let e = get("/v1/drive/items/a%2fb").err().unwrap();
        assert!(e.message.contains("%2F"), "{e}");
        let e = get("/v1/drive/items/a%zz").err().unwrap();
        assert!(e.message.contains("hex"), "{e}");
        let e = get("/v1/drive/items/%ff").err().unwrap();
        assert!(e.message.contains("UTF-8"), "{e}");
        // Dots, empty segments and upper case reach the path check as they are.
        let r = get("/v1/drive/items/a/../b").unwrap();
        assert!(
            r == DriveRequest::Show {
                path: "a/../b".into()
            }
        );
        let r = get("/v1/drive/items//a").unwrap();
        assert!(r == DriveRequest::Show { path: "/a".into() });
        let e = parse_path("a/../b").unwrap_err();
        assert_eq!(e.code, "invalid");
        let e = get("/v1/drive/nope/a").err().unwrap();
        assert_eq!(e.status, 404);
        let e = from_http(&Method::PATCH, "/v1/drive/items/a", &q, || Ok(Value::Null))
            .err()
            .unwrap();
        assert_eq!(e.status, 405);
    }
}
