//! A directory as one byte stream (how `backup` and `replay` reach a remote client): a magic
//! line, then per file `path length (u16 BE) | path | size (u64 BE) | bytes`, then a zero path
//! length and the blake3 hash of everything before it. The reader refuses absolute paths,
//! `..` and empty segments, checks the hash, and writes into `<dir>.partial` first, renaming
//! it to `dir` only when the whole stream checked out: nothing is half-written (a
//! `<dir>.partial` left by an interrupted transfer is removed by the next one, see
//! `cairn_store::PartialDir`).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every bundle.
pub const BUNDLE_MAGIC: &[u8] = b"CAIRNBUNDLE1\n";
/// Longest relative path in a bundle.
pub const BUNDLE_PATH_BYTES_MAX: usize = 4096;

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        source: io::Error,
    },
    /// The stream is not a well-formed bundle.
    #[error("bad bundle stream: {0}")]
    Malformed(String),
    /// The target directory cannot be built (it exists, or its `.partial` is in use).
    #[error(transparent)]
    Target(#[from] cairn_store::StoreError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let context = context.into();
    move |source| BundleError::Io { context, source }
}

/// Writes every regular file under `dir` into `out` as a bundle; returns the bytes written.
pub fn write_bundle(dir: &Path, out: &mut dyn Write) -> Result<u64, BundleError> {
    let mut files = Vec::new();
    collect(dir, PathBuf::new(), &mut files)?;
    files.sort();
    let mut h = HashingWriter {
        out,
        hasher: blake3::Hasher::new(),
        written: 0,
    };
    h.write_all(BUNDLE_MAGIC).map_err(io_err("write bundle"))?;
    for rel in files {
        let name = rel
            .to_str()
            .ok_or_else(|| BundleError::Malformed(format!("path {rel:?} is not UTF-8")))?
            .replace(std::path::MAIN_SEPARATOR, "/");
        if name.is_empty() || name.len() > BUNDLE_PATH_BYTES_MAX {
            return Err(BundleError::Malformed(format!(
                "path {name:?} is longer than {BUNDLE_PATH_BYTES_MAX} bytes"
            )));
        }
        let path = dir.join(&rel);
        let mut f = fs::File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
        let size = f
            .metadata()
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        h.write_all(&(name.len() as u16).to_be_bytes())
            .and_then(|_| h.write_all(name.as_bytes()))
            .and_then(|_| h.write_all(&size.to_be_bytes()))
            .map_err(io_err("write bundle"))?;
        let copied = io::copy(&mut (&mut f).take(size), &mut h)
            .map_err(io_err(format!("read {}", path.display())))?;
        if copied != size {
            return Err(BundleError::Malformed(format!(
                "{} changed size while it was sent",
                path.display()
            )));
        }
    }
    h.write_all(&0u16.to_be_bytes())
        .map_err(io_err("write bundle"))?;
    let hash = *h.hasher.finalize().as_bytes();
    h.out.write_all(&hash).map_err(io_err("write bundle"))?;
    h.out.flush().map_err(io_err("write bundle"))?;
    Ok(h.written + 32)
}

fn collect(root: &Path, rel: PathBuf, out: &mut Vec<PathBuf>) -> Result<(), BundleError> {
    let dir = root.join(&rel);
    for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
        let kind = entry
            .file_type()
            .map_err(io_err(format!("stat {}", entry.path().display())))?;
        let child = rel.join(entry.file_name());
        if kind.is_dir() {
            collect(root, child, out)?;
        } else if kind.is_file() {
            out.push(child);
        }
    }
    Ok(())
}

struct HashingWriter<'a> {
    out: &'a mut dyn Write,
    hasher: blake3::Hasher,
    written: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads a bundle from `input` into `dir` (which must not exist). `progress` sees bytes read.
/// Returns the number of files written.
pub fn read_bundle(
    input: impl Read,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BundleError> {
    let partial = cairn_store::PartialDir::create(dir, "write")?;
    let files = read_into(input, partial.path(), progress)?;
    partial.commit()?;
    Ok(files)
}

fn read_into(
    input: impl Read,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BundleError> {
    let mut r = HashingReader {
        inner: input,
        hasher: blake3::Hasher::new(),
        read: 0,
    };
    let truncated = |_| BundleError::Malformed("the stream ended early".into());
    let mut magic = vec![0u8; BUNDLE_MAGIC.len()];
    r.read_exact(&mut magic).map_err(truncated)?;
    if magic != BUNDLE_MAGIC {
        return Err(BundleError::Malformed(
            "it does not start with the bundle magic".into(),
        ));
    }
    let mut files = 0;
    loop {
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(truncated)?;
        let len = u16::from_be_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > BUNDLE_PATH_BYTES_MAX {
            return Err(BundleError::Malformed(format!("a path of {len} bytes")));
        }
        let mut name = vec![0u8; len];
        r.read_exact(&mut name).map_err(truncated)?;
        let name = String::from_utf8(name)
            .map_err(|_| BundleError::Malformed("a path is not UTF-8".into()))?;
        if name.starts_with('/')
            || name
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            || name == cairn_store::partial::PARTIAL_MARKER_FILE
        {
            return Err(BundleError::Malformed(format!("unsafe path {name:?}")));
        }
        let mut size = [0u8; 8];
        r.read_exact(&mut size).map_err(truncated)?;
        let size = u64::from_be_bytes(size);
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        }
        let mut f =
            fs::File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        let copied = io::copy(&mut (&mut r).take(size), &mut f)
            .map_err(io_err(format!("write {}", path.display())))?;
        if copied != size {
            return Err(BundleError::Malformed("the stream ended early".into()));
        }
        f.sync_all()
            .map_err(io_err(format!("sync {}", path.display())))?;
        files += 1;
        progress(r.read);
    }
    let expected = *r.hasher.finalize().as_bytes();
    let mut hash = [0u8; 32];
    r.inner.read_exact(&mut hash).map_err(truncated)?;
    if hash != expected {
        return Err(BundleError::Malformed(
            "its checksum does not match (corrupted in transit)".into(),
        ));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_round_trips_and_any_flipped_byte_is_refused() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("db/sub")).unwrap();
        fs::write(src.path().join("db/a"), b"hello").unwrap();
        fs::write(src.path().join("db/sub/b"), vec![7u8; 10_000]).unwrap();
        fs::write(src.path().join("top"), b"").unwrap();
        let mut bytes = Vec::new();
        write_bundle(src.path(), &mut bytes).unwrap();

        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("copy");
        assert_eq!(read_bundle(&bytes[..], &dst, &mut |_| {}).unwrap(), 3);
        assert_eq!(fs::read(dst.join("db/a")).unwrap(), b"hello");
        assert_eq!(fs::read(dst.join("db/sub/b")).unwrap(), vec![7u8; 10_000]);
        assert_eq!(fs::read(dst.join("top")).unwrap(), b"");

        for at in [0, BUNDLE_MAGIC.len() + 3, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            let dst = out.path().join(format!("bad{at}"));
            assert!(
                read_bundle(&bad[..], &dst, &mut |_| {}).is_err(),
                "flip at {at}"
            );
            assert!(!dst.exists(), "nothing is left behind for a bad stream");
            assert!(!PathBuf::from(format!("{}.partial", dst.display())).exists());
        }
        let dst = out.path().join("short");
        assert!(read_bundle(&bytes[..bytes.len() - 40], &dst, &mut |_| {}).is_err());
        assert!(!dst.exists());
    }

    #[test]
    fn paths_that_escape_the_directory_are_refused() {
        for name in ["../x", "/etc/x", "a//b", "a/./b"] {
            let mut bytes = BUNDLE_MAGIC.to_vec();
            bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&0u64.to_be_bytes());
            let out = tempfile::tempdir().unwrap();
            let err = read_bundle(&bytes[..], &out.path().join("x"), &mut |_| {}).unwrap_err();
            assert!(err.to_string().contains("unsafe path"), "{name}: {err}");
        }
    }
}
