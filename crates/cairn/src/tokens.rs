//! API token secrets: drawn at random by the runtime, stored only as their blake3 hash (in the
//! projection, through `token.created` events, so tokens are audited and replicate).

use rand::RngCore;

/// Prefix of every token secret (lets secret scanners recognize leaked ones).
pub const TOKEN_PREFIX: &str = "cairn_";

/// A fresh secret: the prefix and 32 random bytes in hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", cairn_log::hex(&bytes))
}

/// The hash a secret is stored and looked up by (surrounding whitespace, such as a token
/// file's trailing newline, is not part of the secret).
pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.trim().as_bytes()).as_bytes()
}
