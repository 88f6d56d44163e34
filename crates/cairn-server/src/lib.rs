//! cairn-server: the HTTP API over one open workspace.
//!
//! - [`api::Request`]: every operation a CLI command runs, with its HTTP form and the role it
//!   needs; [`api::ApiError`] the JSON error every failure becomes.
//! - [`Service`]: runs a `Request` against a [`cairn::Workspace`] and answers with the JSON
//!   value both the CLI (local mode) and the API print.
//! - [`serve`]: the axum server (bearer tokens checked against the projection, body limits,
//!   `/metrics`, graceful shutdown).
//! - [`drive`]: the Drive's requests, their HTTP form and their answers.
//! - [`bundle`]: a directory as one checked byte stream (remote `backup` and `replay`).
//! - [`console`]: the operator's web console under `/ui/` (static files in the binary).

// `cairn::Error` carries the kernel's rejection, which names its entity in full for messages;
// it is moved once per request, so boxing buys nothing measurable.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod bundle;
pub mod console;
pub mod drive;
pub mod handoff;
mod http;
pub mod metrics;
pub mod service;

pub use api::{ApiError, Request};
pub use http::{serve, MIN_OFFSET_HEADER, OFFSET_HEADER, REQUEST_BODY_BYTES_MAX};
pub use service::{Caller, Service, SyncMirrors, SYNC_TIMEOUT_MS_DEFAULT};
