//! Leader epochs: `StartEpoch` and `epoch.started.v1`, the first entry of a promoted mirror's
//! epoch. The projection keeps the epoch history (each epoch's first offset) and the current
//! epoch, so two nodes can find where their logs fork.

use cairn_log::{StateRead, StateWrite, StoredEntry};

use super::rw::{get, put};
use super::{misrouted_command, misrouted_event, ApplyFailure, Decided};
use crate::command::{Command, Rejection};
use crate::event::{EpochStarted, Event};
use crate::keys;
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    let Command::StartEpoch {
        epoch,
        leader,
        prev_head,
    } = command
    else {
        misrouted_command(Subsystem::Epoch, command)
    };
    let current = get::<u64>(state, keys::EPOCH_CURRENT)?.unwrap_or(1);
    if *epoch <= current {
        return Err(Rejection::Invalid(format!(
            "epoch {epoch} does not follow the current epoch {current}"
        ))
        .into());
    }
    Ok(vec![Event::EpochStarted(EpochStarted {
        epoch: *epoch,
        leader: leader.clone(),
        prev_head: *prev_head,
    })])
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let Event::EpochStarted(e) = event else {
        return Err(misrouted_event(Subsystem::Epoch, &event));
    };
    put(state, &keys::epoch(e.epoch), &entry.offset);
    put(state, keys::EPOCH_CURRENT, &e.epoch);
    Ok(())
}
