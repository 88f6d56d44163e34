//! The kernel plugged into the store: the store's `StateMachine` over `cairn_kernel::Kernel`.

use std::ops::Range;

use cairn_kernel::{Command, DecideError, Kernel, Rejection, PROJECTION_VERSION};
use cairn_log::{StateError, StateRead, StateWrite, StoredEntry};
use cairn_store::{ApplyError, DecideCtx, Event, StateMachine};

/// The lifecycle kernel as the store's state machine.
#[derive(Clone, Debug, Default)]
pub struct KernelMachine(pub Kernel);

impl StateMachine for KernelMachine {
    type Command = Command;
    type Rejection = Rejection;

    fn projection_version(&self) -> u64 {
        PROJECTION_VERSION
    }

    /// Drive commands are bulk: a drive load must not make lifecycle commands wait for
    /// groups of its size (`docs/drive.md`, "Storage").
    fn lane(&self, command: &Command) -> cairn_store::Lane {
        match command {
            Command::Drive { .. } => cairn_store::Lane::Bulk,
            _ => cairn_store::Lane::Foreground,
        }
    }

    fn decide(
        &self,
        state: &dyn StateRead,
        _ctx: &DecideCtx,
        command: &Command,
    ) -> Result<Vec<Event>, cairn_store::DecideError<Rejection>> {
        match self.0.decide(state, command) {
            Ok(events) => Ok(events
                .into_iter()
                .map(|e| Event {
                    kind: e.kind().to_string(),
                    payload: e.encode(),
                })
                .collect()),
            Err(DecideError::Rejected(r)) => Err(cairn_store::DecideError::Rejected(r)),
            Err(DecideError::State(e)) => Err(cairn_store::DecideError::State(e)),
        }
    }

    fn apply(&self, state: &mut dyn StateWrite, entry: &StoredEntry) -> Result<(), ApplyError> {
        self.0
            .apply(state, entry)
            .map_err(|f| ApplyError::new(entry, f.0))
    }

    fn idempotent(
        &self,
        state: &dyn StateRead,
        key: &str,
    ) -> Result<Option<Range<u64>>, StateError> {
        self.0.idempotent(state, key)
    }

    fn check_open(&self, state: &dyn StateRead) -> Result<(), cairn_store::CheckOpenError> {
        self.0.check_open(state).map_err(|e| match e {
            cairn_kernel::OpenError::State(e) => cairn_store::CheckOpenError::State(e),
            other => cairn_store::CheckOpenError::Incompatible(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use cairn_kernel::drive::{DriveActor, DriveCommand, DrivePath};
    use cairn_kernel::model::FeatureState;
    use cairn_kernel::Command;
    use cairn_store::{Lane, StateMachine};

    use super::KernelMachine;

    #[test]
    fn drive_commands_are_bulk_and_lifecycle_commands_foreground() {
        let machine = KernelMachine::default();
        let drive = Command::Drive {
            actor: DriveActor::admin("bench"),
            op: DriveCommand::Add {
                path: DrivePath::parse("docs").unwrap(),
                type_name: None,
            },
        };
        assert_eq!(machine.lane(&drive), Lane::Bulk);
        let feature = Command::FeatureSet {
            name: "f".into(),
            state: FeatureState::Enabled,
            expect_revision: None,
        };
        assert_eq!(machine.lane(&feature), Lane::Foreground);
    }
}
