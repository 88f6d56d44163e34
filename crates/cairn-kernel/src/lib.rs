//! cairn's lifecycle domain, sans-IO: commands, events, `decide` (validate against state) and
//! pure `apply`, over the `StateRead`/`StateWrite` keyspace shared with the store.

pub mod manifest;
pub mod model;
