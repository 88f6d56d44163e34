//! The Drive's decide and apply (`crate::drive` holds its vocabulary and reads). Every command
//! checks the actor's level on the items it touches; data is validated against its type's
//! JSON Schema here, in decide, never in apply; a type migration runs here once and its outcome
//! is what the log records, so apply only writes recorded data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_log::{Space, StateRead, StateWrite, StoredEntry};

use super::{misrouted_event, ApplyFailure, DecideError, Decided, Kernel};
use crate::command::{Entity, Rejection};
use crate::drive::{
    self, check_type_name, keys, DataPut, DataVersion, DriveActor, DriveCommand, DriveEvent,
    DriveItem, DrivePath, DriveType, ItemAdded, ItemDeleted, ItemMoved, Level, Migrated,
    MigrationInput, PermSet, Rewritten, TypeSet, VersionDeleted, DRIVE_DATA_BYTES_MAX,
    DRIVE_MIGRATION_BYTES_MAX, DRIVE_MIGRATION_CHUNK_BYTES_MAX, DRIVE_SCHEMA_BYTES_MAX,
    DRIVE_SCHEMA_CACHE_MAX, DRIVE_SUBTREE_ITEMS_MAX,
};
use crate::echo::echo;
use crate::event::Event;
use crate::Subsystem;

/// Compiled JSON Schemas by schema text: each is compiled once.
#[derive(Default)]
pub(super) struct Validators(Mutex<BTreeMap<String, Arc<jsonschema::Validator>>>);

impl Validators {
    fn get(&self, schema_text: &str) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(schema_text) {
            return Ok(Arc::clone(v));
        }
        let schema: serde_json::Value =
            serde_json::from_str(schema_text).map_err(|e| format!("not JSON: {e}"))?;
        let v = Arc::new(
            jsonschema::validator_for(&schema).map_err(|e| format!("not a JSON Schema: {e}"))?,
        );
        if cache.len() >= DRIVE_SCHEMA_CACHE_MAX {
            cache.clear();
        }
        cache.insert(schema_text.to_string(), Arc::clone(&v));
        Ok(v)
    }
}

/// The first way `value` fails `validator`: the error and where (a JSON pointer).
fn first_error(
    validator: &jsonschema::Validator,
    value: &serde_json::Value,
) -> Option<(String, String)> {
    let found = validator
        .iter_errors(value)
        .next()
        .map(|e| (e.to_string(), e.instance_path().to_string()));
    found
}

fn item_entity(path: &DrivePath) -> Entity {
    Entity::DriveItem(path.to_string())
}

fn denied(actor: &DriveActor, path: Option<&DrivePath>, needed: Level) -> DecideError {
    Rejection::Denied {
        who: actor.token.clone(),
        what: path.map_or_else(
            || "the drive's root".to_string(),
            |p| format!("drive item {p}"),
        ),
        needed: needed.as_str().to_string(),
    }
    .into()
}

/// Checks that `actor` has at least `needed` on `path` (`None`: the root).
fn need(
    state: &dyn StateRead,
    actor: &DriveActor,
    path: Option<&DrivePath>,
    needed: Level,
) -> Result<(), DecideError> {
    let have = match path {
        Some(p) => drive::level(state, actor, p)?,
        None => drive::root_level(actor),
    };
    match (have >= needed, path) {
        (true, _) => Ok(()),
        // What the actor may not even read, it is not told exists.
        (false, Some(p)) if have < Level::Read => Err(Rejection::NotFound(item_entity(p)).into()),
        (false, _) => Err(denied(actor, path, needed)),
    }
}

/// Refuses a path that is taken: as `exists` to whom may read what is there, as `denied`
/// (without saying why) to whom may not.
fn taken(state: &dyn StateRead, actor: &DriveActor, path: &DrivePath) -> Result<(), DecideError> {
    if drive::item(state, path)?.is_none() {
        return Ok(());
    }
    if drive::level(state, actor, path)? < Level::Read {
        return Err(denied(actor, Some(path), Level::Edit));
    }
    Err(Rejection::Exists(item_entity(path)).into())
}

fn existing(state: &dyn StateRead, path: &DrivePath) -> Result<DriveItem, DecideError> {
    drive::item(state, path)?.ok_or_else(|| Rejection::NotFound(item_entity(path)).into())
}

/// The item and everything under it, bounded; edit is needed on each of them.
fn editable_subtree(
    state: &dyn StateRead,
    actor: &DriveActor,
    path: &DrivePath,
) -> Result<Vec<DriveItem>, DecideError> {
    let Some(items) = drive::subtree(state, path, DRIVE_SUBTREE_ITEMS_MAX)? else {
        return Err(Rejection::Invalid(format!(
            "drive item {path} has more than {DRIVE_SUBTREE_ITEMS_MAX} items under it \
             (DRIVE_SUBTREE_ITEMS_MAX): move or delete parts of it first"
        ))
        .into());
    };
    // Items come in path order, each after its parent: levels are resolved from the top, one
    // item at a time, instead of walking every item's ancestors again.
    let mut levels: BTreeMap<&DrivePath, Level> = BTreeMap::new();
    for i in &items {
        let level = match i.path.parent().and_then(|p| levels.get(&p).copied()) {
            Some(inherited) => drive::level_under(i, actor, inherited),
            None => drive::level(state, actor, &i.path)?,
        };
        levels.insert(&i.path, level);
        if level < Level::Edit {
            return Err(Rejection::Denied {
                who: actor.token.clone(),
                what: format!("drive item {path} (an item under it)"),
                needed: Level::Edit.as_str().to_string(),
            }
            .into());
        }
    }
    Ok(items)
}

/// Parses data and checks it against the item's type, returning its canonical JSON text.
fn checked_data(
    kernel: &Kernel,
    state: &dyn StateRead,
    item: &DriveItem,
    data: &str,
) -> Result<String, DecideError> {
    let too_big = |len: usize| -> DecideError {
        Rejection::Invalid(format!(
            "data for drive item {} is {len} bytes, more than {DRIVE_DATA_BYTES_MAX} \
             (DRIVE_DATA_BYTES_MAX)",
            item.path
        ))
        .into()
    };
    if data.len() > DRIVE_DATA_BYTES_MAX {
        return Err(too_big(data.len()));
    }
    let value: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        Rejection::Invalid(format!(
            "data for drive item {} is not JSON: {e}",
            item.path
        ))
    })?;
    // What is recorded is the canonical text, which may be longer than what was sent.
    let canonical = value.to_string();
    if canonical.len() > DRIVE_DATA_BYTES_MAX {
        return Err(too_big(canonical.len()));
    }
    if let Some(t) = &item.type_name {
        let ty = drive::drive_type(state, t)?
            .ok_or_else(|| Rejection::NotFound(Entity::DriveType(t.clone())))?;
        let validator = kernel
            .validators
            .get(&ty.schema)
            .map_err(|e| Rejection::Invalid(format!("drive type {t}: {e}")))?;
        if let Some((err, at)) = first_error(&validator, &value) {
            return Err(Rejection::Invalid(format!(
                "data for drive item {} does not match type {t} version {}: {err} (at {at})",
                item.path, ty.version,
            ))
            .into());
        }
    }
    Ok(canonical)
}

pub(super) fn decide(
    kernel: &Kernel,
    state: &dyn StateRead,
    actor: &DriveActor,
    command: &DriveCommand,
) -> Decided {
    let ev = |e: DriveEvent| Ok(vec![Event::Drive(e)]);
    match command {
        DriveCommand::Add { path, type_name } => {
            let parent = path.parent();
            need(state, actor, parent.as_ref(), Level::Edit)?;
            if let Some(p) = &parent {
                existing(state, p)?;
            }
            taken(state, actor, path)?;
            if let Some(t) = type_name {
                check_type_name(t).map_err(Rejection::Invalid)?;
                if drive::drive_type(state, t)?.is_none() {
                    return Err(Rejection::NotFound(Entity::DriveType(t.clone())).into());
                }
            }
            ev(DriveEvent::ItemAdded(ItemAdded {
                path: path.clone(),
                type_name: type_name.clone(),
            }))
        }
        DriveCommand::Move { from, to } => {
            need(state, actor, Some(from), Level::Edit)?;
            existing(state, from)?;
            if to.is_within(from) {
                return Err(Rejection::Invalid(format!(
                    "drive item {from} cannot move under itself ({to})"
                ))
                .into());
            }
            let parent = to.parent();
            need(state, actor, parent.as_ref(), Level::Edit)?;
            if let Some(p) = &parent {
                existing(state, p)?;
            }
            taken(state, actor, to)?;
            for item in editable_subtree(state, actor, from)? {
                item.path.rebased(from, to).map_err(|e| {
                    Rejection::Invalid(format!(
                        "moving drive item {from} to {to} would put {} at an invalid path: {e}",
                        item.path
                    ))
                })?;
            }
            ev(DriveEvent::ItemMoved(ItemMoved {
                from: from.clone(),
                to: to.clone(),
            }))
        }
        DriveCommand::Delete { path } => {
            need(state, actor, Some(path), Level::Edit)?;
            existing(state, path)?;
            editable_subtree(state, actor, path)?;
            ev(DriveEvent::ItemDeleted(ItemDeleted { path: path.clone() }))
        }
        DriveCommand::Put {
            path,
            version,
            data,
        } => {
            need(state, actor, Some(path), Level::Edit)?;
            let item = existing(state, path)?;
            let version = match (version, item.current) {
                (Some(v), Some(cur)) if *v < cur => {
                    return Err(Rejection::state(
                        item_entity(path),
                        format!("its data is at version {cur}; version {v} would go backwards"),
                    )
                    .into())
                }
                (Some(v), _) => *v,
                (None, Some(cur)) => cur.next().ok_or_else(|| {
                    Rejection::state(
                        item_entity(path),
                        format!(
                            "its data is at version {cur}, the last patch of {}.{}: name the \
                             next version",
                            cur.major, cur.minor
                        ),
                    )
                })?,
                (None, None) => DataVersion::FIRST,
            };
            let data = checked_data(kernel, state, &item, data)?;
            ev(DriveEvent::DataPut(DataPut {
                path: path.clone(),
                version,
                data,
            }))
        }
        DriveCommand::DeleteVersion { path, version } => {
            need(state, actor, Some(path), Level::Edit)?;
            existing(state, path)?;
            if drive::data(state, path, *version)?.is_none() {
                return Err(Rejection::NotFound(Entity::DriveVersion(
                    path.to_string(),
                    version.to_string(),
                ))
                .into());
            }
            ev(DriveEvent::VersionDeleted(VersionDeleted {
                path: path.clone(),
                version: *version,
            }))
        }
        DriveCommand::SetPerm { path, who, level } => {
            need(state, actor, Some(path), Level::Admin)?;
            let item = existing(state, path)?;
            if item.perms.get(who) == level.as_ref() {
                return Ok(Vec::new());
            }
            ev(DriveEvent::PermSet(PermSet {
                path: path.clone(),
                who: who.clone(),
                level: *level,
            }))
        }
        DriveCommand::SetType {
            name,
            version,
            schema,
            migration,
        } => set_type(
            kernel,
            state,
            actor,
            name,
            *version,
            schema,
            migration.as_deref(),
        ),
    }
}

fn set_type(
    kernel: &Kernel,
    state: &dyn StateRead,
    actor: &DriveActor,
    name: &str,
    version: u32,
    schema: &str,
    migration: Option<&str>,
) -> Decided {
    check_type_name(name).map_err(Rejection::Invalid)?;
    if drive::root_level(actor) < Level::Admin {
        return Err(denied(actor, None, Level::Admin));
    }
    let invalid = |m: String| DecideError::from(Rejection::Invalid(m));
    if schema.len() > DRIVE_SCHEMA_BYTES_MAX {
        return Err(invalid(format!(
            "the schema of drive type {name} is {} bytes, more than {DRIVE_SCHEMA_BYTES_MAX} \
             (DRIVE_SCHEMA_BYTES_MAX)",
            schema.len()
        )));
    }
    if version == 0 {
        return Err(invalid(format!("drive type {name}: versions start at 1")));
    }
    let validator = kernel
        .validators
        .get(schema)
        .map_err(|e| invalid(format!("the schema of drive type {name} is {e}")))?;
    let schema_value: serde_json::Value =
        serde_json::from_str(schema).expect("the validator parsed this schema text");
    // The canonical text is what is recorded (and what later checks of data look up).
    let schema_text = schema_value.to_string();
    if schema_text.len() > DRIVE_SCHEMA_BYTES_MAX {
        return Err(invalid(format!(
            "the schema of drive type {name} is {} bytes as recorded, more than \
             {DRIVE_SCHEMA_BYTES_MAX} (DRIVE_SCHEMA_BYTES_MAX)",
            schema_text.len()
        )));
    }
    let current = drive::drive_type(state, name)?;
    let from_version = match &current {
        Some(t) if version < t.version => {
            return Err(Rejection::state(
                Entity::DriveType(name.into()),
                format!(
                    "it is at version {}; version {version} would go backwards",
                    t.version
                ),
            )
            .into())
        }
        Some(t) if version == t.version => {
            if t.schema == schema_text {
                return Ok(Vec::new());
            }
            return Err(Rejection::state(
                Entity::DriveType(name.into()),
                format!(
                    "version {version} already has another schema; a new schema needs a new \
                     version"
                ),
            )
            .into());
        }
        Some(t) => Some(t.version),
        None => None,
    };
    let migrate = match migration {
        None => None,
        Some(m) => match kernel.migrations.get(m) {
            Some(f) => Some((m, Arc::clone(f))),
            None => {
                return Err(invalid(format!(
                    "migration {} is not registered in this binary (registered: {})",
                    echo(m),
                    kernel
                        .migrations
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        },
    };
    if migrate.is_some() && from_version.is_none() {
        return Err(invalid(format!(
            "drive type {name} is new: it has no items for migration {} to rewrite",
            echo(migration.unwrap_or_default())
        )));
    }
    let mut events = vec![Event::Drive(DriveEvent::TypeSet(TypeSet {
        name: name.to_string(),
        version,
        schema: schema_text,
        migration: migration.map(str::to_string),
    }))];
    let Some(from_version) = from_version else {
        return Ok(events);
    };
    // Every stored data version of every item of the type, rewritten (or kept) and checked
    // against the new schema. Only rewritten data is recorded.
    let mut chunk: Vec<Rewritten> = Vec::new();
    let (mut chunk_bytes, mut total_bytes, mut read_bytes) = (0usize, 0usize, 0usize);
    let flush = |chunk: &mut Vec<Rewritten>, events: &mut Vec<Event>| {
        if !chunk.is_empty() {
            events.push(Event::Drive(DriveEvent::Migrated(Migrated {
                type_name: name.to_string(),
                version,
                rewritten: std::mem::take(chunk),
            })));
        }
    };
    for path in drive::items_of_type(state, name)? {
        for v in drive::versions(state, &path)? {
            let text = drive::data(state, &path, v)?.ok_or_else(|| {
                cairn_log::StateError::corrupt(format!("drive data {path} {v} vanished"))
            })?;
            // Decide runs on the one writer: a longer upgrade would stall every command.
            read_bytes += text.len();
            if read_bytes > DRIVE_MIGRATION_BYTES_MAX {
                return Err(invalid(format!(
                    "the upgrade of drive type {name} to version {version} reads more than \
                     {DRIVE_MIGRATION_BYTES_MAX} bytes of stored data \
                     (DRIVE_MIGRATION_BYTES_MAX): it would hold every other command back \
                     while it runs"
                )));
            }
            let old: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                cairn_log::StateError::corrupt(format!("drive data {path} {v} is not JSON: {e}"))
            })?;
            let new = match &migrate {
                None => old.clone(),
                Some((m, f)) => {
                    let input = MigrationInput {
                        path: &path,
                        version: v,
                        from_version,
                        to_version: version,
                        schema: &schema_value,
                    };
                    f.migrate(&input, old.clone()).map_err(|e| {
                        invalid(format!(
                            "migration {m} failed on drive item {path} version {v}: {e}"
                        ))
                    })?
                }
            };
            if let Some((err, at)) = first_error(&validator, &new) {
                return Err(invalid(format!(
                    "drive item {path} version {v} does not match type {name} version \
                     {version}{}: {err} (at {at})",
                    migration.map_or(String::new(), |m| format!(" after migration {m}")),
                )));
            }
            if new == old {
                continue;
            }
            let data = new.to_string();
            if data.len() > DRIVE_DATA_BYTES_MAX {
                return Err(invalid(format!(
                    "migration of drive item {path} version {v} makes {} bytes of data, more \
                     than {DRIVE_DATA_BYTES_MAX} (DRIVE_DATA_BYTES_MAX)",
                    data.len()
                )));
            }
            let size = data.len() + path.as_str().len() + 32;
            total_bytes += size;
            if total_bytes > DRIVE_MIGRATION_BYTES_MAX {
                return Err(invalid(format!(
                    "the migration of drive type {name} to version {version} rewrites more than \
                     {DRIVE_MIGRATION_BYTES_MAX} bytes (DRIVE_MIGRATION_BYTES_MAX)"
                )));
            }
            if chunk_bytes + size > DRIVE_MIGRATION_CHUNK_BYTES_MAX {
                flush(&mut chunk, &mut events);
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push(Rewritten {
                path: path.clone(),
                version: v,
                data,
            });
        }
    }
    flush(&mut chunk, &mut events);
    Ok(events)
}

fn put_item(state: &mut dyn StateWrite, item: &DriveItem) {
    let bytes = cairn_log::codec::encode_value(item)
        .expect("drive records are plain serde types that the codec always encodes");
    state.put(Space::Drive, &keys::item(&item.path), &bytes);
}

fn applied_item(state: &dyn StateRead, path: &DrivePath) -> Result<DriveItem, ApplyFailure> {
    drive::item(state, path)?
        .ok_or_else(|| ApplyFailure(format!("drive item {path} does not exist")))
}

/// Removes an item's record, data versions and type index entry; returns its data.
fn take_item(
    state: &mut dyn StateWrite,
    item: &DriveItem,
) -> Result<Vec<(DataVersion, Vec<u8>)>, ApplyFailure> {
    let mut data = Vec::new();
    for v in drive::versions(state, &item.path)? {
        let k = keys::version(&item.path, v);
        if let Some(bytes) = state.get(Space::Drive, &k)? {
            data.push((v, bytes));
        }
        state.delete(Space::Drive, &k);
    }
    if let Some(t) = &item.type_name {
        state.delete(Space::Drive, &keys::typed_item(t, &item.path));
    }
    state.delete(Space::Drive, &keys::item(&item.path));
    Ok(data)
}

fn subtree_for_apply(
    state: &dyn StateRead,
    path: &DrivePath,
) -> Result<Vec<DriveItem>, ApplyFailure> {
    // Decide bounded the subtree; apply takes what the state holds.
    drive::subtree(state, path, usize::MAX)?
        .ok_or_else(|| ApplyFailure(format!("drive subtree {path} is unbounded")))
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let Event::Drive(event) = event else {
        return Err(misrouted_event(Subsystem::Drive, &event));
    };
    match event {
        DriveEvent::ItemAdded(e) => {
            if let Some(t) = &e.type_name {
                state.put(Space::Drive, &keys::typed_item(t, &e.path), b"");
            }
            put_item(
                state,
                &DriveItem {
                    path: e.path,
                    type_name: e.type_name,
                    current: None,
                    perms: BTreeMap::new(),
                    created: entry.offset,
                    revision: entry.offset,
                },
            );
        }
        DriveEvent::ItemMoved(e) => {
            for mut item in subtree_for_apply(state, &e.from)? {
                let data = take_item(state, &item)?;
                item.path = item.path.rebased(&e.from, &e.to).map_err(|why| {
                    ApplyFailure(format!(
                        "drive.item_moved: {} cannot move: {why}",
                        item.path
                    ))
                })?;
                item.revision = entry.offset;
                for (v, bytes) in data {
                    state.put(Space::Drive, &keys::version(&item.path, v), &bytes);
                }
                if let Some(t) = &item.type_name {
                    state.put(Space::Drive, &keys::typed_item(t, &item.path), b"");
                }
                put_item(state, &item);
            }
        }
        DriveEvent::ItemDeleted(e) => {
            for item in subtree_for_apply(state, &e.path)? {
                take_item(state, &item)?;
            }
        }
        DriveEvent::DataPut(e) => {
            let mut item = applied_item(state, &e.path)?;
            state.put(
                Space::Drive,
                &keys::version(&e.path, e.version),
                e.data.as_bytes(),
            );
            item.current = Some(item.current.map_or(e.version, |c| c.max(e.version)));
            item.revision = entry.offset;
            put_item(state, &item);
        }
        DriveEvent::VersionDeleted(e) => {
            let mut item = applied_item(state, &e.path)?;
            state.delete(Space::Drive, &keys::version(&e.path, e.version));
            item.current = drive::versions(state, &e.path)?.last().copied();
            item.revision = entry.offset;
            put_item(state, &item);
        }
        DriveEvent::PermSet(e) => {
            let mut item = applied_item(state, &e.path)?;
            match e.level {
                Some(l) => item.perms.insert(e.who, l),
                None => item.perms.remove(&e.who),
            };
            item.revision = entry.offset;
            put_item(state, &item);
        }
        DriveEvent::TypeSet(e) => {
            let record = DriveType {
                name: e.name,
                version: e.version,
                schema: e.schema,
                migration: e.migration,
                revision: entry.offset,
            };
            let bytes = cairn_log::codec::encode_value(&record)
                .expect("drive records are plain serde types that the codec always encodes");
            state.put(Space::Drive, &keys::type_record(&record.name), &bytes);
        }
        DriveEvent::Migrated(e) => {
            for r in e.rewritten {
                let k = keys::version(&r.path, r.version);
                if state.get(Space::Drive, &k)?.is_none() {
                    return Err(ApplyFailure(format!(
                        "drive.migrated: item {} has no version {}",
                        r.path, r.version
                    )));
                }
                state.put(Space::Drive, &k, r.data.as_bytes());
            }
        }
    }
    Ok(())
}
