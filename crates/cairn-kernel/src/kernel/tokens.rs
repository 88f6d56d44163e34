//! API tokens: `TokenCreate` / `TokenRevoke` and `token.created.v1` / `token.revoked.v1`. Only
//! a secret's blake3 hash is logged; the projection maps it back to the token's name.

use cairn_log::{Space, StateRead, StateWrite, StoredEntry};

use super::rw::{check_name, get, put};
use super::{misrouted_command, misrouted_event, ApplyFailure, Decided};
use crate::command::{Command, Entity, Rejection};
use crate::echo::echo;
use crate::event::Event;
use crate::keys;
use crate::records::TokenRecord;
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    match command {
        Command::TokenCreate { name, role, hash } => {
            check_name("token", name)?;
            if get::<TokenRecord>(state, &keys::token(name))?.is_some() {
                return Err(Rejection::Exists(Entity::Token(name.clone())).into());
            }
            if state.get(Space::State, &keys::token_hash(hash))?.is_some() {
                return Err(Rejection::Invalid(format!(
                    "token {}: its secret's hash is already in use by another token",
                    echo(name)
                ))
                .into());
            }
            Ok(vec![Event::TokenCreated {
                name: name.clone(),
                role: *role,
                hash: *hash,
            }])
        }
        Command::TokenRevoke { name } => {
            get::<TokenRecord>(state, &keys::token(name))?
                .ok_or_else(|| Rejection::NotFound(Entity::Token(name.clone())))?;
            Ok(vec![Event::TokenRevoked { name: name.clone() }])
        }
        other => misrouted_command(Subsystem::Tokens, other),
    }
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    match event {
        Event::TokenCreated { name, role, hash } => {
            put(
                state,
                &keys::token(&name),
                &TokenRecord {
                    name: name.clone(),
                    role,
                    hash,
                    created_ms: entry.time_ms,
                    revision: entry.offset,
                },
            );
            state.put(Space::State, &keys::token_hash(&hash), name.as_bytes());
        }
        Event::TokenRevoked { name } => {
            let t = get::<TokenRecord>(state, &keys::token(&name))?.ok_or_else(|| {
                ApplyFailure(format!("token.revoked: token {name:?} does not exist"))
            })?;
            state.delete(Space::State, &keys::token(&name));
            state.delete(Space::State, &keys::token_hash(&t.hash));
        }
        other => return Err(misrouted_event(Subsystem::Tokens, &other)),
    }
    Ok(())
}
