//! The node key file: the 32-byte ed25519 seed, raw, mode 0600, in the data directory.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use murmur_core::Keypair;

/// Errors around the key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// I/O on the file failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not 32 bytes.
    #[error("node key {path} is {len} bytes; a key file holds exactly 32")]
    BadLength {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// Others can read the file.
    #[error("node key {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The OS random number generator failed.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the key at `path`.
pub fn load(path: &Path) -> Result<Keypair, KeyFileError> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mode = f.metadata().map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    let mut buf = Vec::with_capacity(33);
    (&mut f).take(33).read_to_end(&mut buf).map_err(io(path))?;
    let seed: [u8; 32] = buf
        .as_slice()
        .try_into()
        .map_err(|_| KeyFileError::BadLength {
            path: path.display().to_string(),
            len: buf.len(),
        })?;
    Ok(Keypair::from_seed(&seed))
}

/// 32 random bytes from the OS.
pub fn random_bytes() -> Result<[u8; 32], KeyFileError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| KeyFileError::Random(e.to_string()))?;
    Ok(b)
}

/// Creates a new key at `path` (mode 0600, never overwriting) and returns it.
pub fn create(path: &Path) -> Result<Keypair, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(&seed).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(Keypair::from_seed(&seed))
}

/// Loads the key at `path`, creating it first if there is none. Returns the key and
/// whether it was created.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool), KeyFileError> {
    if path.exists() {
        load(path).map(|k| (k, false))
    } else {
        create(path).map(|k| (k, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_and_refuse_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let (k, created) = load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(k.author(), k2.author());
        assert!(create(&p).is_err(), "never overwrites");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&p), Err(KeyFileError::Permissions { .. })));
        let q = dir.path().join("short.key");
        fs::write(&q, [1u8; 5]).unwrap();
        fs::set_permissions(&q, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load(&q),
            Err(KeyFileError::BadLength { len: 5, .. })
        ));
    }
}
