//! cairn: the embedder's facade and runtime (tokio).
//!
//! - [`Workspace::init`] / [`Workspace::open`]: one workspace directory, opened exclusively as
//!   leader; pending schema migrations are recorded and interrupted changes resume at open.
//! - Async commands ([`Workspace::install`], [`Workspace::uninstall`], [`Workspace::connect`],
//!   [`Workspace::feature_set`], ...) return committed offsets or a typed rejection
//!   ([`Error::Rejected`]).
//! - [`Workspace::view`] snapshot reads (with `cairn_kernel::query`), [`Workspace::subscribe`],
//!   [`Workspace::wait_for`], [`Workspace::wait_change`].
//! - The change engine (`engine`) runs hooks ([`hooks`]) as child processes in their own
//!   process group, or as registered in-process handlers; secrets are sealed with the
//!   workspace key ([`vault`]) before they reach the log.
//! - The daemon supervisor ([`daemons`], policy in [`supervise`]) runs packages' daemons on
//!   the leader and records what it sees (`daemon.observed.v2`).

// `Error::Rejected` carries the kernel's rejection, which names its entity in full for
// messages; errors are moved once per command, so boxing buys nothing measurable.
#![allow(clippy::result_large_err)]

pub mod daemons;
pub mod drive;
mod engine;
mod error;
pub mod hooks;
mod machine;
mod subscribe;
pub mod supervise;
pub mod tokens;
pub mod tools;
pub mod vault;
mod workspace;

pub use cairn_kernel as kernel;
pub use cairn_store as store;
pub use error::Error;
pub use machine::KernelMachine;
pub use subscribe::{Subscription, SUBSCRIBER_BATCH_ENTRIES};
pub use workspace::{
    Access, CommandOptions, Daemons, HookContext, HookHandler, HookRunStats, LogBytes, NodeRole,
    Onloads, Options, Workspace, MIRROR_MARKER_FILE, VAULT_KEY_FILE,
};
