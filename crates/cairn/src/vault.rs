//! The workspace vault key (`<data>/vault.key`) and the sealing of vault secrets with it.
//!
//! The key is 32 random bytes in a file of mode 0600, created at workspace init and never written
//! to the log; mirrors need a copy of the same file to read secrets. A secret is sealed with
//! XChaCha20-Poly1305 under a fresh random 24-byte nonce:
//!
//! ```text
//! sealed = version (1 byte, = 1) || nonce (24 bytes) || ciphertext || tag (16 bytes)
//! ```
//!
//! The associated data is the vault's identity (for example `owner/name`), so a sealed value
//! copied into another vault fails authentication instead of decrypting there.

use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::{RngCore, TryRngCore};
use zeroize::Zeroizing;

/// Length of the vault key, in bytes.
pub const VAULT_KEY_BYTES: usize = 32;
/// Largest secret value a vault holds, in bytes. [`VaultKey::seal`] does not check it: callers
/// must reject larger values before sealing.
pub const VAULT_VALUE_BYTES_MAX: usize = 64 * 1024;
/// The sealed-value format version this build writes and reads.
pub const SEALED_VERSION: u8 = 1;

const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const HEADER_BYTES: usize = 1 + NONCE_BYTES;
/// Length of a sealed empty value: the shortest valid sealed value.
const SEALED_BYTES_MIN: usize = HEADER_BYTES + TAG_BYTES;
/// Mode bits that must be clear on the key file: any group or other access.
const KEY_MODE_FORBIDDEN: u32 = 0o077;

/// A vault key file or a sealed value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// `create` found a key file already there.
    #[error("vault key {}: already exists", path.display())]
    KeyExists {
        /// The key file.
        path: PathBuf,
    },
    /// `load` found no key file.
    #[error("vault key {}: does not exist", path.display())]
    KeyMissing {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not a regular file.
    #[error("vault key {}: is not a regular file", path.display())]
    KeyNotFile {
        /// The key file.
        path: PathBuf,
    },
    /// The key file does not hold exactly [`VAULT_KEY_BYTES`] bytes.
    #[error("vault key {}: holds {len} bytes, expected {VAULT_KEY_BYTES}", path.display())]
    KeyLength {
        /// The key file.
        path: PathBuf,
        /// Its length (or [`VAULT_KEY_BYTES`] + 1 when longer).
        len: u64,
    },
    /// The key file can be read or written by group or others.
    #[error(
        "vault key {}: mode {mode:04o} gives group or others access, expected 0600 (chmod 600 it)",
        path.display()
    )]
    KeyMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading, writing or syncing the key file failed.
    #[error("vault key {}: {action}: {source}", path.display())]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The IO error.
        source: io::Error,
    },
    /// The operating system's random source failed while generating a key.
    #[error("vault key {}: random source failed: {reason}", path.display())]
    KeyRandom {
        /// The key file being created.
        path: PathBuf,
        /// The random source's error.
        reason: String,
    },
    /// A sealed value is shorter than any value `seal` produces.
    #[error("sealed vault value: {len} bytes is shorter than the minimum {SEALED_BYTES_MIN}")]
    SealedTooShort {
        /// Its length.
        len: usize,
    },
    /// A sealed value has a format version this build does not know.
    #[error(
        "sealed vault value: unknown format version {version} (this build reads {SEALED_VERSION})"
    )]
    SealedVersion {
        /// The version byte found.
        version: u8,
    },
    /// Decryption failed: wrong key, wrong vault (associated data), or corrupted bytes.
    #[error(
        "sealed vault value: authentication failed (wrong key, sealed for another vault, or corrupted)"
    )]
    SealedAuthentication,
}

/// The workspace's secret key. Never printed: `Debug` shows only that a key is present. The key
/// bytes are zeroed when this is dropped.
pub struct VaultKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(<redacted>)")
    }
}

impl VaultKey {
    /// Generates a new key from the operating system's random source and writes it to `path`
    /// (mode 0600, fsynced with its directory). Fails if `path` already exists. If writing fails
    /// after the file was created, the file is removed so that a retry can succeed.
    pub fn create(path: &Path) -> Result<VaultKey, VaultError> {
        let mut key = Zeroizing::new([0u8; VAULT_KEY_BYTES]);
        rand::rngs::OsRng
            .try_fill_bytes(key.as_mut_slice())
            .map_err(|error| VaultError::KeyRandom {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
        let io_error = |action: &'static str| {
            move |source: io::Error| VaultError::KeyIo {
                path: path.to_owned(),
                action,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    VaultError::KeyExists {
                        path: path.to_owned(),
                    }
                } else {
                    io_error("create")(source)
                }
            })?;
        let written = write_key(&mut file, key.as_slice());
        drop(file);
        if let Err((action, source)) = written {
            // Best effort: a partial key file would make every later create and load fail.
            let _ = std::fs::remove_file(path);
            return Err(io_error(action)(source));
        }
        sync_parent(path).map_err(io_error("sync its directory"))?;
        Ok(VaultKey::from_bytes(&key))
    }

    /// Reads the key at `path`. Fails if the file is missing, is not a regular file, gives group
    /// or others any access, or does not hold exactly [`VAULT_KEY_BYTES`] bytes.
    pub fn load(path: &Path) -> Result<VaultKey, VaultError> {
        let io_error = |action: &'static str| {
            move |source: io::Error| VaultError::KeyIo {
                path: path.to_owned(),
                action,
                source,
            }
        };
        let file = File::open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                VaultError::KeyMissing {
                    path: path.to_owned(),
                }
            } else {
                io_error("open")(source)
            }
        })?;
        // Checked on the open file, so the checks and the read see the same file.
        let metadata = file.metadata().map_err(io_error("stat"))?;
        if !metadata.is_file() {
            return Err(VaultError::KeyNotFile {
                path: path.to_owned(),
            });
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & KEY_MODE_FORBIDDEN != 0 {
            return Err(VaultError::KeyMode {
                path: path.to_owned(),
                mode,
            });
        }
        // One byte more than a key, to tell "too long" from "exactly right".
        let mut bytes = Zeroizing::new(Vec::with_capacity(VAULT_KEY_BYTES + 1));
        file.take(VAULT_KEY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error("read"))?;
        let Ok(key) = <&[u8; VAULT_KEY_BYTES]>::try_from(bytes.as_slice()) else {
            return Err(VaultError::KeyLength {
                path: path.to_owned(),
                len: bytes.len() as u64,
            });
        };
        Ok(VaultKey::from_bytes(key))
    }

    fn from_bytes(key: &[u8; VAULT_KEY_BYTES]) -> VaultKey {
        VaultKey {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Encrypts `plaintext` for the vault identified by `aad`, under a fresh random nonce, so two
    /// seals of the same value differ. Does not enforce [`VAULT_VALUE_BYTES_MAX`]; the caller
    /// must.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = XNonce::default();
        rand::rng().fill_bytes(nonce.as_mut_slice());
        let mut sealed = Vec::with_capacity(SEALED_BYTES_MIN + plaintext.len());
        sealed.push(SEALED_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, aad, &mut sealed[HEADER_BYTES..])
            .expect(
                "xchacha20poly1305 only refuses plaintexts over 256 GiB, far above any vault value",
            );
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// Decrypts a value made by [`VaultKey::seal`] with the same key and the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < SEALED_BYTES_MIN {
            return Err(VaultError::SealedTooShort { len: sealed.len() });
        }
        let (header, rest) = sealed.split_at(HEADER_BYTES);
        let (version, nonce) = (header[0], &header[1..]);
        if version != SEALED_VERSION {
            return Err(VaultError::SealedVersion { version });
        }
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let mut plaintext = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                aad,
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| VaultError::SealedAuthentication)?;
        Ok(plaintext)
    }
}

/// Writes the whole key, makes it 0600 whatever the umask did, and fsyncs it.
fn write_key(file: &mut File, key: &[u8]) -> Result<(), (&'static str, io::Error)> {
    file.write_all(key).map_err(|error| ("write", error))?;
    file.set_permissions(Permissions::from_mode(0o600))
        .map_err(|error| ("chmod 600", error))?;
    file.sync_all().map_err(|error| ("sync", error))
}

/// Fsyncs the directory holding `path`, so the new file's directory entry is durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"netmon/api-token";

    fn key() -> (tempfile::TempDir, VaultKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = VaultKey::create(&dir.path().join("vault.key")).unwrap();
        (dir, key)
    }

    #[test]
    fn seal_then_open_round_trips() {
        let (_dir, key) = key();
        for plaintext in [&b""[..], b"s3cret", &[7u8; VAULT_VALUE_BYTES_MAX]] {
            let sealed = key.seal(plaintext, AAD);
            assert_eq!(sealed.len(), SEALED_BYTES_MIN + plaintext.len());
            assert_eq!(sealed[0], SEALED_VERSION);
            assert_eq!(key.open(&sealed, AAD).unwrap(), plaintext);
        }
    }

    #[test]
    fn a_loaded_key_opens_what_the_created_key_sealed() {
        let (dir, key) = key();
        let sealed = key.seal(b"s3cret", AAD);
        let loaded = VaultKey::load(&dir.path().join("vault.key")).unwrap();
        assert_eq!(loaded.open(&sealed, AAD).unwrap(), b"s3cret");
    }

    #[test]
    fn another_vaults_aad_fails() {
        let (_dir, key) = key();
        let sealed = key.seal(b"s3cret", AAD);
        let error = key.open(&sealed, b"netmon/other").unwrap_err();
        assert!(matches!(error, VaultError::SealedAuthentication), "{error}");
    }

    #[test]
    fn another_key_fails() {
        let (_dir, key) = key();
        let (_other_dir, other) = self::key();
        let sealed = key.seal(b"s3cret", AAD);
        assert!(matches!(
            other.open(&sealed, AAD),
            Err(VaultError::SealedAuthentication)
        ));
    }

    #[test]
    fn any_flipped_byte_fails() {
        let (_dir, key) = key();
        let sealed = key.seal(b"s3cret", AAD);
        for i in 0..sealed.len() {
            let mut corrupted = sealed.clone();
            corrupted[i] ^= 0x01;
            let error = key.open(&corrupted, AAD).unwrap_err();
            let expected = if i == 0 {
                matches!(error, VaultError::SealedVersion { version: 0 })
            } else {
                matches!(error, VaultError::SealedAuthentication)
            };
            assert!(expected, "byte {i}: {error}");
        }
    }

    #[test]
    fn short_and_unknown_version_are_named() {
        let (_dir, key) = key();
        let error = key
            .open(&[SEALED_VERSION; SEALED_BYTES_MIN - 1], AAD)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "sealed vault value: 40 bytes is shorter than the minimum 41"
        );
        let mut sealed = key.seal(b"x", AAD);
        sealed[0] = 2;
        let error = key.open(&sealed, AAD).unwrap_err();
        assert_eq!(
            error.to_string(),
            "sealed vault value: unknown format version 2 (this build reads 1)"
        );
    }

    #[test]
    fn two_seals_of_one_value_differ_and_hide_it() {
        let (_dir, key) = key();
        let plaintext = b"correct horse battery staple";
        let first = key.seal(plaintext, AAD);
        let second = key.seal(plaintext, AAD);
        assert_ne!(first, second);
        assert_ne!(first[1..HEADER_BYTES], second[1..HEADER_BYTES]);
        for sealed in [&first, &second] {
            assert!(!sealed.windows(plaintext.len()).any(|w| w == plaintext));
            // Not even a 4-byte piece of it survives.
            assert!(!sealed.windows(4).any(|w| w == b"hors"));
        }
    }

    #[test]
    fn create_writes_32_bytes_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        VaultKey::create(&path).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
        assert_eq!(metadata.len(), VAULT_KEY_BYTES as u64);
    }

    #[test]
    fn create_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let key = VaultKey::create(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let error = VaultKey::create(&path).unwrap_err();
        assert!(matches!(error, VaultError::KeyExists { .. }), "{error}");
        assert!(
            error.to_string().ends_with("vault.key: already exists"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let sealed = key.seal(b"s3cret", AAD);
        assert!(VaultKey::load(&path).unwrap().open(&sealed, AAD).is_ok());
    }

    #[test]
    fn load_refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        VaultKey::create(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let error = VaultKey::load(&path).unwrap_err();
        assert!(
            matches!(error, VaultError::KeyMode { mode: 0o644, .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("mode 0644"), "{message}");
    }

    #[test]
    fn load_refuses_a_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        for (bytes, len) in [(16, 16), (0, 0), (VAULT_KEY_BYTES + 10, 33)] {
            std::fs::write(&path, vec![1u8; bytes]).unwrap();
            std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
            let error = VaultKey::load(&path).unwrap_err();
            assert!(
                matches!(error, VaultError::KeyLength { len: l, .. } if l == len),
                "{error}"
            );
        }
    }

    #[test]
    fn load_refuses_a_missing_file_and_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let error = VaultKey::load(&path).unwrap_err();
        assert!(matches!(error, VaultError::KeyMissing { .. }), "{error}");
        assert!(error.to_string().ends_with("vault.key: does not exist"));

        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o700)).unwrap();
        let error = VaultKey::load(&path).unwrap_err();
        assert!(matches!(error, VaultError::KeyNotFile { .. }), "{error}");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let key = VaultKey::create(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert_eq!(shown, "VaultKey(<redacted>) VaultKey(<redacted>)");
        assert!(!shown.contains(&format!("{:?}", &bytes[..4])));
    }
}
