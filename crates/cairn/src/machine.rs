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
