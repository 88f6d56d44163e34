//! Schema versions and migrations: `MigrateSchema` and `schema.migrated.v1`, the refusal of a
//! workspace too new for this binary, and the migrations the leader must still record.

use cairn_log::{StateError, StateRead, StateWrite};

use super::rw::{get, put};
use super::{misrouted_command, misrouted_event, ApplyFailure, Decided, Kernel, OpenError};
use crate::command::{Command, Entity, Rejection};
use crate::event::Event;
use crate::ext::{Migration, Schema};
use crate::keys;
use crate::records::SchemaRecord;
use crate::Subsystem;

/// The kernel's own schema version.
pub const SCHEMA_VERSION: u32 = 3;
/// Oldest binary schema version that can open data written by this one (3: an accepted WAL
/// loss is an event a version-2 binary cannot apply, so it must refuse the workspace at open,
/// as version 1 refuses API tokens).
pub const SCHEMA_COMPAT_VERSION: u32 = 3;
/// Name of the kernel's own schema.
pub const SCHEMA_NAME: &str = "cairn";

/// The kernel's own schema: version 1 is the initial layout; version 2 adds API tokens
/// (`token.created.v1`, `token.revoked.v1`), which version-1 binaries cannot apply; version 3
/// adds the record of an accepted WAL loss (`store.wal_loss_accepted.v1`).
pub fn builtin_schema() -> Schema {
    Schema {
        name: SCHEMA_NAME.into(),
        version: SCHEMA_VERSION,
        migrations: vec![
            Migration {
                to: 1,
                compat: 1,
                name: "initial".into(),
                apply: |_| Ok(()),
            },
            Migration {
                to: 2,
                compat: 2,
                name: "api-tokens".into(),
                apply: |_| Ok(()),
            },
            Migration {
                to: 3,
                compat: 3,
                name: "wal-loss-record".into(),
                apply: |_| Ok(()),
            },
        ],
    }
}

pub(super) fn decide(kernel: &Kernel, state: &dyn StateRead, command: &Command) -> Decided {
    let Command::MigrateSchema { schema, from, to } = command else {
        misrouted_command(Subsystem::Schema, command)
    };
    let def = kernel
        .schemas
        .get(schema)
        .ok_or_else(|| Rejection::NotFound(Entity::Schema(schema.clone())))?;
    let stored = get::<SchemaRecord>(state, &keys::schema(schema))?.map_or(0, |r| r.version);
    if stored != *from || *to != from + 1 {
        return Err(Rejection::state(
            Entity::Schema(schema.clone()),
            format!("is at version {stored}; cannot migrate {from} → {to}"),
        )
        .into());
    }
    let m = def.migrations.iter().find(|m| m.to == *to).ok_or_else(|| {
        Rejection::state(
            Entity::Schema(schema.clone()),
            format!("no migration to version {to} is registered"),
        )
    })?;
    Ok(vec![Event::SchemaMigrated {
        schema: schema.clone(),
        from: *from,
        to: *to,
        compat: m.compat,
        name: m.name.clone(),
    }])
}

pub(super) fn apply(
    kernel: &Kernel,
    state: &mut dyn StateWrite,
    event: Event,
) -> Result<(), ApplyFailure> {
    let Event::SchemaMigrated {
        schema,
        from: _,
        to,
        compat,
        name,
    } = event
    else {
        return Err(misrouted_event(Subsystem::Schema, &event));
    };
    let m = kernel
        .schemas
        .get(&schema)
        .and_then(|s| s.migrations.iter().find(|m| m.to == to && m.name == name))
        .ok_or_else(|| {
            ApplyFailure(format!(
                "schema {schema:?} migration {name:?} to version {to} is not known \
                 to this binary; upgrade it (mirrors are upgraded before the leader)"
            ))
        })?;
    (m.apply)(state)
        .map_err(|e| ApplyFailure(format!("schema {schema:?} migration {name:?} failed: {e}")))?;
    put(
        state,
        &keys::schema(&schema),
        &SchemaRecord {
            version: to,
            compat,
        },
    );
    Ok(())
}

/// A migration to a compatibility version newer than this binary's cannot be folded here.
pub(super) fn understands(kernel: &Kernel, event: &Event) -> Result<(), String> {
    if let Event::SchemaMigrated { schema, compat, .. } = event {
        if let Some(known) = kernel.schemas.get(schema) {
            if *compat > known.version {
                return Err(format!(
                    "schema {schema:?} migrates to compatibility version {compat}; \
                     this binary supports version {}",
                    known.version
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a workspace whose stored compat version of any registered schema is newer than
/// this binary's version of it.
pub(super) fn check_open(kernel: &Kernel, state: &dyn StateRead) -> Result<(), OpenError> {
    for schema in kernel.schemas.values() {
        if let Some(stored) = get::<SchemaRecord>(state, &keys::schema(&schema.name))? {
            if stored.compat > schema.version {
                return Err(OpenError::TooNew {
                    schema: schema.name.clone(),
                    stored: stored.version,
                    compat: stored.compat,
                    binary: schema.version,
                });
            }
        }
    }
    Ok(())
}

/// The migrations the leader must still record, in order.
pub(super) fn pending_migrations(
    kernel: &Kernel,
    state: &dyn StateRead,
) -> Result<Vec<Command>, StateError> {
    let mut out = Vec::new();
    for schema in kernel.schemas.values() {
        let stored =
            get::<SchemaRecord>(state, &keys::schema(&schema.name))?.map_or(0, |r| r.version);
        for m in &schema.migrations {
            if m.to > stored {
                out.push(Command::MigrateSchema {
                    schema: schema.name.clone(),
                    from: m.to - 1,
                    to: m.to,
                });
            }
        }
    }
    Ok(out)
}
