//! The Drive for embedders (`docs/drive.md`): drive commands on a [`Workspace`], and typed,
//! permission-checked reads of items, data versions and types, run off the async executor
//! (a listing or a large data version is read on the blocking pool).
//!
//! Every command names its actor ([`DriveActor`]); the kernel checks the actor's level on the
//! items it touches. Reads check `read` on the item (a listing shows only the items the actor
//! may read). Type migrations are registered on the kernel
//! ([`cairn_kernel::Kernel::with_drive_migration`]) and run only on a leader.

use std::sync::Arc;

use cairn_kernel::drive::{
    self, DataVersion, DriveActor, DriveCommand, DriveItem, DrivePath, DriveType, Level, Who,
    DRIVE_LIST_ITEMS_MAX,
};
use cairn_kernel::{Command, Entity, Rejection};
use cairn_store::{Committed, ReadView};

use crate::error::Error;
use crate::workspace::{CommandOptions, Workspace};

/// One data version of an item, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct DriveData {
    /// The version.
    pub version: DataVersion,
    /// The data.
    pub data: serde_json::Value,
}

/// An item as one actor sees it: its permissions only when `level` is `admin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenItem {
    /// The item (its `perms` empty unless `level` is `admin`).
    pub item: DriveItem,
    /// What the actor may do on it.
    pub level: Level,
}

/// An item's data versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveVersions {
    /// Every stored version, ascending.
    pub versions: Vec<DataVersion>,
    /// The current one (`None`: no data).
    pub current: Option<DataVersion>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveListing {
    /// The items, in path order.
    pub items: Vec<SeenItem>,
    /// The name to list `after` for the next page; `None` when this was the last one.
    pub next: Option<String>,
}

/// The item at `path`, which `actor` must be allowed to read (an item it may not read is
/// "not found", as if it did not exist); its permissions are shown to those with `admin` on
/// it only.
fn readable(view: &ReadView, actor: &DriveActor, path: &DrivePath) -> Result<SeenItem, Error> {
    let level = drive::level(view, actor, path).map_err(Error::from)?;
    let not_found = || Error::Rejected(Rejection::NotFound(Entity::DriveItem(path.to_string())));
    if level < Level::Read {
        return Err(not_found());
    }
    let item = drive::item(view, path)
        .map_err(Error::from)?
        .ok_or_else(not_found)?;
    Ok(shown(item, level))
}

/// What a reader at `level` sees of an item: its permissions only with `admin`.
fn shown(mut item: DriveItem, level: Level) -> SeenItem {
    if level < Level::Admin {
        item.perms.clear();
    }
    SeenItem { item, level }
}

impl Workspace {
    /// Runs one drive command as `actor`.
    pub async fn drive(
        &self,
        actor: &DriveActor,
        op: DriveCommand,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::Drive {
            actor: actor.clone(),
            op,
        };
        self.execute(command, opts).await
    }

    /// Adds a folder (`type_name` none) or an item of a type.
    pub async fn drive_add(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
        type_name: Option<&str>,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::Add {
            path: path.clone(),
            type_name: type_name.map(str::to_string),
        };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Puts a data version (`None`: the next one).
    pub async fn drive_put(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
        version: Option<DataVersion>,
        data: &serde_json::Value,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::Put {
            path: path.clone(),
            version,
            data: data.to_string(),
        };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Moves or renames an item with everything under it.
    pub async fn drive_move(
        &self,
        actor: &DriveActor,
        from: &DrivePath,
        to: &DrivePath,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::Move {
            from: from.clone(),
            to: to.clone(),
        };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Deletes an item with everything under it.
    pub async fn drive_delete(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::Delete { path: path.clone() };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Deletes one data version (the current one falls back to the newest left).
    pub async fn drive_delete_version(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
        version: DataVersion,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::DeleteVersion {
            path: path.clone(),
            version,
        };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Sets (or with `None` clears) a permission on an item.
    pub async fn drive_set_perm(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
        who: Who,
        level: Option<Level>,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::SetPerm {
            path: path.clone(),
            who,
            level,
        };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Sets a type's schema at `version`, migrating its items' data with `migration`.
    pub async fn drive_set_type(
        &self,
        actor: &DriveActor,
        name: &str,
        version: u32,
        schema: &serde_json::Value,
        migration: Option<&str>,
    ) -> Result<Committed, Error> {
        let op = DriveCommand::SetType {
            name: name.to_string(),
            version,
            schema: schema.to_string(),
            migration: migration.map(str::to_string),
        };
        self.drive(actor, op, &CommandOptions::default()).await
    }

    /// Runs `read` on a snapshot, on the blocking pool.
    async fn drive_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadView) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let view = Arc::new(self.view()?);
        tokio::task::spawn_blocking(move || read(&view))
            .await
            .map_err(|e| Error::Internal(format!("drive read task failed: {e}")))?
    }

    /// The item at `path`, if `actor` may read it.
    pub async fn drive_item(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
    ) -> Result<SeenItem, Error> {
        let (actor, path) = (actor.clone(), path.clone());
        self.drive_read(move |view| readable(view, &actor, &path))
            .await
    }

    /// The items directly under `parent` (`None`: the root) that `actor` may read, in path
    /// order: those whose names sort after `after`, at most `limit` (and at most
    /// [`DRIVE_LIST_ITEMS_MAX`]). `next` is the cursor to go on from when more may follow: the
    /// last listed name (never the name of an item the actor may not read).
    pub async fn drive_list(
        &self,
        actor: &DriveActor,
        parent: Option<&DrivePath>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DriveListing, Error> {
        let (actor, parent) = (actor.clone(), parent.cloned());
        let after = after.map(str::to_string);
        let limit = limit.clamp(1, DRIVE_LIST_ITEMS_MAX);
        self.drive_read(move |view| {
            let inherited = match &parent {
                Some(p) => readable(view, &actor, p)?.level,
                None => drive::root_level(&actor),
            };
            // Pages of children until one more than `limit` readable ones are found (so
            // `next` is given only when there is more), or none are left.
            let mut items = Vec::new();
            let mut cursor = after;
            loop {
                let page = drive::children(
                    view,
                    parent.as_ref(),
                    cursor.as_deref(),
                    DRIVE_LIST_ITEMS_MAX,
                )
                .map_err(Error::from)?;
                let full = page.len() == DRIVE_LIST_ITEMS_MAX;
                cursor = page.last().map(|i| i.path.name().to_string());
                for item in page {
                    let level = drive::level_under(&item, &actor, inherited);
                    if level >= Level::Read {
                        items.push(shown(item, level));
                        if items.len() > limit {
                            break;
                        }
                    }
                }
                if items.len() > limit || !full {
                    break;
                }
            }
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|i| i.item.path.name().to_string())
            } else {
                None
            };
            Ok(DriveListing { items, next })
        })
        .await
    }

    /// The data versions of `path`, ascending, and its current one (read from one snapshot).
    pub async fn drive_versions(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
    ) -> Result<DriveVersions, Error> {
        let (actor, path) = (actor.clone(), path.clone());
        self.drive_read(move |view| {
            let current = readable(view, &actor, &path)?.item.current;
            let versions = drive::versions(view, &path).map_err(Error::from)?;
            Ok(DriveVersions { versions, current })
        })
        .await
    }

    /// One data version of `path` (`None`: the current one); `None` when the item has no data.
    pub async fn drive_get(
        &self,
        actor: &DriveActor,
        path: &DrivePath,
        version: Option<DataVersion>,
    ) -> Result<Option<DriveData>, Error> {
        let (actor, path) = (actor.clone(), path.clone());
        self.drive_read(move |view| {
            let item = readable(view, &actor, &path)?.item;
            let Some(version) = version.or(item.current) else {
                return Ok(None);
            };
            let Some(text) = drive::data(view, &path, version).map_err(Error::from)? else {
                return Err(Error::Rejected(Rejection::NotFound(Entity::DriveVersion(
                    path.to_string(),
                    version.to_string(),
                ))));
            };
            let data = serde_json::from_str(&text).map_err(|e| {
                Error::from(cairn_log::StateError::corrupt(format!(
                    "drive data {path} {version} is not JSON: {e}"
                )))
            })?;
            Ok(Some(DriveData { version, data }))
        })
        .await
    }

    /// Every drive type.
    pub async fn drive_types(&self) -> Result<Vec<DriveType>, Error> {
        self.drive_read(|view| drive::types(view).map_err(Error::from))
            .await
    }

    /// The drive type `name`, if it exists.
    pub async fn drive_type(&self, name: &str) -> Result<Option<DriveType>, Error> {
        let name = name.to_string();
        self.drive_read(move |view| drive::drive_type(view, &name).map_err(Error::from))
            .await
    }
}
