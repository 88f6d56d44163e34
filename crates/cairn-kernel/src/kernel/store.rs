//! Store-level records: `AcceptWalLoss` and `store.wal_loss_accepted.v1`, the audit trail of a
//! WAL loss an operator accepted. No state records it.

use super::{misrouted_command, misrouted_event, ApplyFailure, Decided};
use crate::command::Command;
use crate::event::Event;
use crate::Subsystem;

pub(super) fn decide(command: &Command) -> Decided {
    let Command::AcceptWalLoss(loss) = command else {
        misrouted_command(Subsystem::Store, command)
    };
    Ok(vec![Event::WalLossAccepted(loss.clone())])
}

pub(super) fn apply(event: Event) -> Result<(), ApplyFailure> {
    match event {
        // The audit trail of a loss; no state records it.
        Event::WalLossAccepted(_) => Ok(()),
        other => Err(misrouted_event(Subsystem::Store, &other)),
    }
}
