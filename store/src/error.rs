//! Errors of the RocksDB store, and how RocksDB's errors map onto them: by kind, never
//! by text alone, so that damage is reported as damage (naming the file when RocksDB or
//! its info log does) and only a real lock conflict as "in use by another process".

use std::path::{Path, PathBuf};

use rocksdb::ErrorKind;

use crate::rocks::SCHEMA_VERSION;

/// Errors of the RocksDB store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the database lock.
    #[error(
        "the data directory {0} is in use by another process (the RocksDB lock is held); stop the other murmur daemon first"
    )]
    Locked(PathBuf),
    /// The database is damaged: RocksDB reported corruption (a checksum mismatch in a
    /// WAL record, an SST block, the MANIFEST; an unreadable CURRENT), a file the
    /// database needs is missing, or it holds fewer events than it had made durable.
    #[error("{}", damaged_text(.dir, .file, .detail))]
    Damaged {
        /// The database directory, when known (errors met at open).
        dir: Option<PathBuf>,
        /// The damaged or missing file, when RocksDB's message (or its info LOG) names
        /// one.
        file: Option<PathBuf>,
        /// What RocksDB (or the startup check) reported.
        detail: String,
    },
    /// RocksDB reported an error that is neither damage nor the lock.
    #[error("RocksDB: {0}")]
    Db(rocksdb::Error),
    /// The file system is full: nothing of the write was stored.
    #[error("the disk is full ({0}); nothing of this write was stored")]
    NoSpace(String),
    /// Stored data does not decode or contradicts itself.
    #[error(
        "corrupt store: {0} (with the node stopped, `murmur verify` lists every problem and `murmur repair` rebuilds the store)"
    )]
    Corrupt(String),
    /// Written by a newer murmur.
    #[error(
        "store schema version {found} is newer than this murmur supports ({SCHEMA_VERSION}); upgrade murmur"
    )]
    Schema {
        /// The version found on disk.
        found: u32,
    },
    /// A file operation of `murmur repair` failed.
    #[error("cannot {} {}: {}", .what, .path.display(), .err)]
    Io {
        /// What was being done ("copy", "rename", ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
}

impl StoreError {
    /// True for damaged or inconsistent data ([`StoreError::Damaged`],
    /// [`StoreError::Corrupt`]), where the operator's path is `murmur verify` and
    /// `murmur repair`; never for the lock or other I/O errors.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Self::Damaged { .. } | Self::Corrupt(_))
    }

    /// True for a failed write caused by the machine rather than the data: a full disk,
    /// no descriptors left, another I/O error. RocksDB then stops taking writes (its
    /// "background error") and stays stopped after the cause is gone; the daemon
    /// reopens the store once the disk takes writes again.
    pub fn is_environmental(&self) -> bool {
        match self {
            Self::NoSpace(_) | Self::Io { .. } => true,
            Self::Db(e) => e.kind() == ErrorKind::IOError,
            _ => false,
        }
    }

    /// The damaged file named by RocksDB, if any.
    pub fn damaged_file(&self) -> Option<&Path> {
        match self {
            Self::Damaged { file, .. } => file.as_deref(),
            _ => None,
        }
    }

    /// Fills in the database directory of a [`StoreError::Damaged`] met at open.
    pub(crate) fn in_dir(self, dir: &Path) -> Self {
        match self {
            Self::Damaged {
                dir: None,
                file,
                detail,
            } => Self::Damaged {
                dir: Some(dir.to_path_buf()),
                file,
                detail,
            },
            other => other,
        }
    }
}

fn damaged_text(dir: &Option<PathBuf>, file: &Option<PathBuf>, detail: &str) -> String {
    let mut s = match dir {
        Some(d) => format!("the database in {} is damaged", d.display()),
        None => "the database is damaged".to_owned(),
    };
    if let Some(f) = file {
        s.push_str(&format!(" (file {})", f.display()));
    }
    s.push_str(&format!(
        ": {}. murmur does not run on a database that may be missing acknowledged events. \
         Stop murmur and run `murmur repair`: it keeps a copy of the damaged database, \
         salvages every event that still verifies, and the node then fetches what is \
         missing from its peers (logs are signed and hash-linked). \
         Or restore the data directory from a backup",
        detail.trim_end_matches('.')
    ));
    s
}

/// RocksDB errors met outside open (reads, writes): corruption becomes
/// [`StoreError::Damaged`] (RocksDB names the SST in a block checksum mismatch),
/// everything else [`StoreError::Db`].
impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        if e.kind() == ErrorKind::Corruption {
            let detail = e.into_string();
            let file = named_file(None, &detail);
            StoreError::Damaged {
                dir: None,
                file,
                detail,
            }
        } else if e.kind() == ErrorKind::IOError && e.as_ref().contains("No space left on device") {
            // RocksDB's status has a NoSpace subcode, but the C API gives only the kind
            // and the message, which carries strerror(ENOSPC).
            StoreError::NoSpace(e.into_string())
        } else {
            StoreError::Db(e)
        }
    }
}

/// What an error at open means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    Locked,
    Damaged,
    Other,
}

/// Classifies a RocksDB error by its kind (`rocksdb::Error::kind`, which reads the
/// status code RocksDB puts first: "Corruption: ...", "IO error: ...").
///
/// - `Corruption`: damage, whatever the text ("block checksum mismatch" used to be taken
///   for a lock because it contains "lock").
/// - `IOError` from taking the lock: RocksDB's `PosixFileSystem::LockFile`
///   (env/fs_posix.cc) fails with "While lock file: <db>/LOCK: <strerror>" when
///   `fcntl(F_SETLK)` finds another process's lock, and with "lock hold by current
///   process, acquire time .. acquiring thread ..: <db>/LOCK: No locks available" when
///   this process holds it already. Both name the LOCK file. Other I/O errors about
///   LOCK (it cannot be created: permissions, read-only file system) are not a
///   conflict and stay [`StoreError::Db`].
/// - `IOError` "No such file or directory" naming a database file (a MANIFEST that
///   CURRENT points to, an SST the MANIFEST lists): damage.
pub(crate) fn classify(kind: ErrorKind, msg: &str) -> OpenFailure {
    match kind {
        ErrorKind::Corruption => OpenFailure::Damaged,
        ErrorKind::IOError if is_lock_conflict(msg) => OpenFailure::Locked,
        ErrorKind::IOError
            if msg.contains("No such file or directory") && named_file(None, msg).is_some() =>
        {
            OpenFailure::Damaged
        }
        _ => OpenFailure::Other,
    }
}

fn is_lock_conflict(msg: &str) -> bool {
    msg.contains("/LOCK: ")
        && (msg.contains("While lock file: ") || msg.contains("lock hold by current process"))
}

/// Maps an error from opening (or repairing) the database in `db`.
pub(crate) fn open_error(db: &Path, e: rocksdb::Error) -> StoreError {
    let class = classify(e.kind(), e.as_ref());
    match class {
        OpenFailure::Locked => StoreError::Locked(db.to_path_buf()),
        OpenFailure::Damaged => {
            let detail = e.into_string();
            let file = named_file(Some(db), &detail).or_else(|| file_from_info_log(db));
            StoreError::Damaged {
                dir: Some(db.to_path_buf()),
                file,
                detail,
            }
        }
        OpenFailure::Other => StoreError::Db(e),
    }
}

/// A RocksDB file name that holds data: SSTs, WALs, blob files. (`LOG` and
/// `LOG.old.*` are RocksDB's info logs, not WALs.)
pub(crate) fn is_data_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".log") || name.ends_with(".blob")
}

fn is_db_file(name: &str) -> bool {
    is_data_file(name)
        || name.starts_with("MANIFEST-")
        || name.starts_with("OPTIONS-")
        || name == "CURRENT"
}

/// The database file a RocksDB message names: a path token whose file name is one of
/// RocksDB's (block checksum mismatches end "in <db>/000012.sst offset .."); else
/// `CURRENT` for "CURRENT file ..." errors; else the WAL of "log number: N" (the
/// MANIFEST's WAL tracking).
pub(crate) fn named_file(dir: Option<&Path>, msg: &str) -> Option<PathBuf> {
    for raw in msg.split_whitespace() {
        let tok = raw
            .trim_start_matches(['(', '\'', '"'])
            .trim_end_matches([':', ',', ';', ')', '\'', '"']);
        let tok = tok.strip_suffix('.').unwrap_or(tok);
        if tok.contains('/') && is_db_file(tok.rsplit('/').next().unwrap_or_default()) {
            return Some(PathBuf::from(tok));
        }
    }
    let dir = dir?;
    if msg.contains("CURRENT file") {
        return Some(dir.join("CURRENT"));
    }
    let at = msg.find("log number: ")? + "log number: ".len();
    let digits: String = msg[at..].chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    Some(dir.join(format!("{n:06}.log")))
}

/// RocksDB reports a bad WAL or MANIFEST record without the file's name, but its info
/// log (`LOG` in the database directory, started by the failed open) has it: WAL
/// recovery logs "<wal>: dropping N bytes; Corruption: ..." (db_impl_open.cc), and
/// MANIFEST recovery logs "Recovering from manifest file: <path>" before reading it and
/// "Recovered from manifest file:..." after. Only used to name the file in the message.
fn file_from_info_log(dir: &Path) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 1 << 20;
    let mut f = std::fs::File::open(dir.join("LOG")).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut buf = Vec::new();
    f.take(TAIL).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let mut wal: Option<&str> = None;
    let mut manifest: Option<&str> = None;
    for line in text.lines() {
        if let Some(i) = line.find(": dropping ")
            && line.contains("Corruption")
            && let Some(tok) = line[..i].split_whitespace().last()
            && tok.contains('/')
        {
            wal = Some(tok);
        }
        const READING: &str = "Recovering from manifest file: ";
        if let Some(i) = line.find(READING) {
            manifest = Some(line[i + READING.len()..].trim());
        } else if line.contains("Recovered from manifest file:") {
            manifest = None;
        }
    }
    wal.or(manifest)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}
