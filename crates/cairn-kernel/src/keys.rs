//! The projection's canonical key forms (all in `Space::State` unless noted). Names never
//! contain `/` (see `model::is_item_name`), so `/`-joined keys are unambiguous and a prefix
//! ending in `/` selects exactly one parent's children. Documented in `docs/lifecycle.md`.

use uuid::Uuid;

/// `pkg/<name>` → `PackageRecord`.
pub fn package(name: &str) -> Vec<u8> {
    format!("pkg/{name}").into_bytes()
}
/// Prefix of every package record.
pub const PACKAGES: &[u8] = b"pkg/";

/// `pkgstatus/<name>` → `PackageStatus`: the package record's status alone, kept in step with
/// it, so that resource writes check their package without decoding its manifest.
pub fn package_status(name: &str) -> Vec<u8> {
    format!("pkgstatus/{name}").into_bytes()
}

/// `onload/<name>` → empty, while an installed package's `onload` is pending or running (lets
/// the engine find them without scanning every package).
pub fn onload_wanted(name: &str) -> Vec<u8> {
    format!("onload/{name}").into_bytes()
}
/// Prefix of the onload index.
pub const ONLOADS_WANTED: &[u8] = b"onload/";

/// `kept/<owner>` → empty: `owner` has resources kept by an uninstall (an install of the name
/// adopts them; without the marker it skips looking).
pub fn kept(owner: &str) -> Vec<u8> {
    format!("kept/{owner}").into_bytes()
}

/// `feature/<name>` → `FeatureRecord`.
pub fn feature(name: &str) -> Vec<u8> {
    format!("feature/{name}").into_bytes()
}
/// Prefix of every feature record.
pub const FEATURES: &[u8] = b"feature/";

/// `<table>/<owner>/<name>` → the resource record of a kind (`var`, `queue`, `vault`, `daemon`,
/// `model`).
pub fn resource(table: &str, owner: &str, name: &str) -> Vec<u8> {
    format!("{table}/{owner}/{name}").into_bytes()
}
/// Prefix of every resource of a kind owned by `owner`.
pub fn resources_of(table: &str, owner: &str) -> Vec<u8> {
    format!("{table}/{owner}/").into_bytes()
}

/// `qitem/<owner>/<queue>/<seq as 8 bytes BE>` → item bytes.
pub fn queue_item(owner: &str, queue: &str, seq: u64) -> Vec<u8> {
    let mut k = queue_items(owner, queue);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
/// Prefix of a queue's items.
pub fn queue_items(owner: &str, queue: &str) -> Vec<u8> {
    format!("qitem/{owner}/{queue}/").into_bytes()
}

/// `conn/<plug pkg>/<plug>/<slot pkg>/<slot>` → `ConnRecord`.
pub fn connection(plug: &(String, String), slot: &(String, String)) -> Vec<u8> {
    format!("conn/{}/{}/{}/{}", plug.0, plug.1, slot.0, slot.1).into_bytes()
}
/// Prefix of every connection record.
pub const CONNECTIONS: &[u8] = b"conn/";

/// `undesired/<plug pkg>/<plug>/<slot pkg>/<slot>` → empty: an auto-connection the user
/// disconnected, never auto-connected again. Survives uninstall on purpose.
pub fn undesired(plug: &(String, String), slot: &(String, String)) -> Vec<u8> {
    format!("undesired/{}/{}/{}/{}", plug.0, plug.1, slot.0, slot.1).into_bytes()
}

/// `change/<uuid>` → `ChangeRecord`.
pub fn change(id: Uuid) -> Vec<u8> {
    format!("change/{}", id.hyphenated()).into_bytes()
}
/// Prefix of every change record.
pub const CHANGES: &[u8] = b"change/";

/// `active/<uuid>` → empty, for every change that is not ready (lets the engine find work
/// without scanning finished changes).
pub fn active_change(id: Uuid) -> Vec<u8> {
    format!("active/{}", id.hyphenated()).into_bytes()
}
/// Prefix of the active-change index.
pub const ACTIVE_CHANGES: &[u8] = b"active/";

/// `busy/<package>` → the id (16 bytes) of the change in progress on that package.
pub fn busy(package: &str) -> Vec<u8> {
    format!("busy/{package}").into_bytes()
}

/// `schema/<name>` → `SchemaRecord`.
pub fn schema(name: &str) -> Vec<u8> {
    format!("schema/{name}").into_bytes()
}

/// `idem/key/<key>` → `IdemRecord`.
pub fn idem_key(key: &str) -> Vec<u8> {
    let mut k = b"idem/key/".to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}
/// `idem/seq/<seq as 8 bytes BE>` → the key recorded at that sequence number (retention).
pub fn idem_seq(seq: u64) -> Vec<u8> {
    let mut k = b"idem/seq/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
/// `idem/next` → the next sequence number (8 bytes BE).
pub const IDEM_NEXT: &[u8] = b"idem/next";

/// `ext/<app>/` prefix of an extension's own keyspace.
pub fn ext_prefix(app: &str) -> Vec<u8> {
    format!("ext/{app}/").into_bytes()
}

/// `extapp/<app>` → `(kind, offset)` of the first event of that extension: lets open refuse a
/// workspace that uses an extension this binary does not register, naming kind and offset.
pub fn ext_app(app: &str) -> Vec<u8> {
    format!("extapp/{app}").into_bytes()
}
/// Prefix of the extension-use index.
pub const EXT_APPS: &[u8] = b"extapp/";

/// `token/<name>` → `TokenRecord`.
pub fn token(name: &str) -> Vec<u8> {
    format!("token/{name}").into_bytes()
}
/// Prefix of every token record.
pub const TOKENS: &[u8] = b"token/";

/// `tokenhash/<32-byte hash>` → the token's name (authentication looks a secret up by hash).
pub fn token_hash(hash: &[u8; 32]) -> Vec<u8> {
    let mut k = b"tokenhash/".to_vec();
    k.extend_from_slice(hash);
    k
}

/// `epoch/current`: the epoch the log is in (absent: 1, the first).
pub const EPOCH_CURRENT: &[u8] = b"epoch/current";

/// `epoch/n/<epoch, 8 bytes big-endian>`: the first offset of that epoch (its `epoch.started`).
pub fn epoch(epoch: u64) -> Vec<u8> {
    let mut k = b"epoch/n/".to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}
