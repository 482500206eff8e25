//! The RocksDB store.
//!
//! Column families (see [`crate::keys`] for the key layout):
//!
//! | family | key | value |
//! |---|---|---|
//! | `events` | event key | canonical event bytes |
//! | `heads` | log key | seq (8) · id (32) · time ms (8) · logical (4) · base (8) · pruned-to offset (8) · bytes held (8) · bytes pruned (8) · flags (1: started over) |
//! | `by_id` | event id (32) | event key · offset (8, big-endian) |
//! | `arrivals` | offset (8, big-endian) | event key |
//! | `forks` | log key | len of first event (4) · first event · second event |
//! | `meta` | name | value (`schema` → version, `own_logs_unconfirmed` → unix time; idempotency keys; named consumers, see [`crate::consumers`]) |
//! | `docs` | see [`crate::docs`] | document indexes and snapshots |
//!
//! Every `insert` is one `WriteBatch` covering the events and all their index entries;
//! with [`Durability::Sync`] it is written with one WAL fsync, however many events it
//! holds (this is the group commit). Writes are serialised by one mutex; reads go
//! straight to RocksDB from any thread.
//!
//! Damage is an error, never a quiet loss: see [`db_options`] for the WAL recovery mode,
//! [`StoreError::Damaged`] for how RocksDB's errors are classified (by kind, not by
//! text), and the durability mark ([`MARK_FILE`]) that catches a database that comes
//! back with fewer events than it had made durable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::accept::{self, ForkProof, Head, LogState, Verdict};
use murmur_core::storage::{
    ArrivalPage, Cut, DocArrival, Durability, LogSummary, Outcome, Pruned, ReadStore, Snapshot,
    Store,
};
use murmur_core::vv::{self, VersionVector};
use murmur_core::{
    AuthorId, DocId, Event, EventId, MAX_EVENT_BYTES, Offset, Pattern, Seq, Timestamp, Topic,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    DBRecoveryMode, Options, WriteBatch, WriteOptions,
};

pub use crate::error::StoreError;
pub(crate) use crate::error::{is_data_file, open_error};
use crate::keys::{event_key, log_key, split_log_key, topic_of, topic_prefix};

/// Schema version written to `meta`; a store with a newer one is refused. Version 2
/// (retention) adds the offset to the id index (pruning deletes an event's arrival
/// entry through it) and the base to pruned logs' head records; version 3 the bytes
/// each log holds (`max_bytes` rules) and has pruned, and whether it started over at a
/// peer's base, to every head record. Older stores are upgraded
/// at open.
pub const SCHEMA_VERSION: u32 = 3;

pub(crate) const CF_EVENTS: &str = "events";
pub(crate) const CF_HEADS: &str = "heads";
pub(crate) const CF_BY_ID: &str = "by_id";
pub(crate) const CF_ARRIVALS: &str = "arrivals";
pub(crate) const CF_FORKS: &str = "forks";
pub(crate) const CF_META: &str = "meta";
const FAMILIES: [&str; 7] = [
    crate::docs::CF_DOCS,
    CF_EVENTS,
    CF_HEADS,
    CF_BY_ID,
    CF_ARRIVALS,
    CF_FORKS,
    CF_META,
];

/// `meta` key set by `murmur repair`: this node may have lost events of its own logs
/// that it had already published (value: unix seconds, 8 bytes big-endian).
const META_OWN_UNCONFIRMED: &[u8] = b"own_logs_unconfirmed";
/// Written by [`RocksStore::probe_write`] (unix seconds of the last probe).
const META_WRITE_PROBE: &[u8] = b"write_probe";
/// The least next offset (u64, big-endian), written when a log is truncated: its
/// events may have been the newest arrivals, and offsets are never reused.
const META_NEXT_FLOOR: &[u8] = b"next_offset_floor";

/// Most log states cached in memory; the cache is dropped whole when it grows past this
/// (it refills from the `heads` family on demand).
const STATE_CACHE_MAX: usize = 65_536;

/// The durability mark: a small file in the database directory holding an offset below
/// which every event was durable (fsynced) when it was written. RocksDB ignores files
/// whose names it does not know, and `murmur repair` copies it with the rest.
///
/// At open, a database whose next offset is below the mark has lost durable events
/// (RocksDB dropped part of its data: a WAL record whose damaged length looked like a
/// torn tail, a MANIFEST that lost its tail, a torn copy) and is refused as damaged.
/// Written at most once a second after a synced commit, and at [`Store::flush`]
/// (clean shutdown), so it costs at most one small fsynced file a second.
pub const MARK_FILE: &str = "MURMUR-DURABLE";
/// XORed into the mark to detect a damaged mark file (which is then ignored, with a
/// warning: a damaged mark must not stop a node whose data is fine).
const MARK_CHECK: u64 = 0x6d75_726d_7572_0001;
const MARK_EVERY: Duration = Duration::from_secs(1);

/// Refuses to let RocksDB create a database where one is expected: with
/// `create_if_missing`, RocksDB takes a missing CURRENT for a new database
/// (db_impl_open.cc `DBImpl::Recover` → `NewDB`), writes a fresh MANIFEST and later
/// deletes the SSTs it does not list — every stored event, without an error.
fn check_creatable(path: &Path) -> Result<()> {
    if path.join("CURRENT").try_exists().unwrap_or(true) {
        return Ok(());
    }
    if let Some(old) = crate::repair::sibling(path, crate::repair::OLD_SUFFIX)
        && old.try_exists().unwrap_or(false)
    {
        return Err(StoreError::Damaged {
            dir: Some(path.to_path_buf()),
            file: None,
            detail: format!(
                "a `murmur repair` was interrupted: the database is in {}",
                old.display()
            ),
        });
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(StoreError::Io {
                what: "read",
                path: path.to_path_buf(),
                err,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(name) = name.to_str()
            && is_data_file(name)
        {
            return Err(StoreError::Damaged {
                dir: Some(path.to_path_buf()),
                file: Some(path.join("CURRENT")),
                detail: format!(
                    "CURRENT is missing, but the directory holds database files such as {name}"
                ),
            });
        }
    }
    Ok(())
}

type Result<T> = std::result::Result<T, StoreError>;

/// Tuning of the RocksDB store. The defaults keep an idle node small.
#[derive(Debug, Clone)]
pub struct RocksConfig {
    /// Shared block cache, bytes.
    pub block_cache_bytes: usize,
    /// Memtable budget across all column families, bytes.
    pub write_buffer_bytes: usize,
    /// Most open SST files (-1: unlimited).
    pub max_open_files: i32,
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            block_cache_bytes: 8 << 20,
            write_buffer_bytes: 16 << 20,
            max_open_files: 256,
        }
    }
}

/// RocksDB's options and the column families, for open and for `murmur repair`.
///
/// WAL recovery mode, from RocksDB 11.8's sources (`log::Reader::ReadRecord` in
/// db/log_reader.cc, `DBImpl::HandleNonOkStatusOrOldLogRecord` in
/// db/db_impl/db_impl_open.cc):
/// - `PointInTime`, RocksDB's default, stops replaying at the first bad record and
///   opens without an error: every later record, fsynced and acknowledged or not, is
///   dropped. That was finding 1 of issue 12 (a flipped WAL byte lost 2,000 events).
/// - `AbsoluteConsistency` also fails on an incomplete record at the end of the WAL
///   ("truncated header", "truncated record body", "error reading trailing data"). A
///   crash or power cut in the middle of an append leaves exactly that, for a write
///   whose fsync never returned and that was never acknowledged; a node would then
///   refuse to start after an ordinary crash (or SIGKILL between two `write`s of one
///   record).
/// - `TolerateCorruptedTailRecords` (chosen) ignores only an incomplete record at the
///   end of a WAL file (a truncated header or body at end of file, zero padding) and
///   fails the open with `Corruption` on a checksum mismatch or a malformed record
///   anywhere, the last complete one included. An acknowledged record was fsynced, so
///   it is complete on disk and can only go bad by damage — which is an error.
///   Known limit (log_reader.cc, `kBadRecordLen` when `eof_`): a damaged *length*
///   field in a record header within the last 32 KiB block of a WAL reads like a
///   truncated tail and is ignored; the durability mark ([`MARK_FILE`]) turns that
///   loss into an error when the lost events are older than the mark (always after a
///   clean shutdown).
///
/// `paranoid_checks` must stay on (it is RocksDB's default): without it the WAL
/// reporter's status is dropped (db_impl_open.cc) and corruption is ignored in every
/// mode. `track_and_verify_wals_in_manifest` records the synced size of each closed
/// WAL in the MANIFEST, so a missing or shortened older WAL (a torn copy, a lost
/// file) is a `Corruption` at open instead of a silent hole. WAL recycling stays off
/// (RocksDB disables it with this recovery mode anyway).
pub(crate) fn db_options(
    config: &RocksConfig,
    create: bool,
) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let cache = Cache::new_lru_cache(config.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);

    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(true);
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_paranoid_checks(true);
    opts.set_track_and_verify_wals_in_manifest(true);
    opts.set_db_write_buffer_size(config.write_buffer_bytes);
    opts.set_max_open_files(config.max_open_files);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    // A column family written rarely (heads: once per log per write) keeps old WAL
    // files alive until it is flushed; past this size RocksDB flushes it. Twice the
    // memtable budget keeps the WAL (uncompressed, replayed at start) small.
    opts.set_max_total_wal_size(
        u64::try_from(config.write_buffer_bytes.max(2 << 20) * 2).unwrap_or(64 << 20),
    );

    let families = FAMILIES
        .iter()
        .map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            cf.set_write_buffer_size((config.write_buffer_bytes / 4).max(1 << 20));
            cf.set_max_write_buffer_number(2);
            if *name == CF_EVENTS {
                cf.set_compression_type(DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        })
        .collect();
    (opts, families)
}

/// Deletes gathered for one write: keys and key ranges, by column family.
#[derive(Debug, Default)]
pub(crate) struct Deletes {
    keys: Vec<(&'static str, Vec<u8>)>,
    ranges: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
}

impl Deletes {
    pub(crate) fn key(&mut self, cf: &'static str, key: Vec<u8>) {
        self.keys.push((cf, key));
    }

    fn range(&mut self, cf: &'static str, from: Vec<u8>, to: Vec<u8>) {
        self.ranges.push((cf, from, to));
    }

    fn apply(&self, store: &RocksStore, batch: &mut WriteBatch) {
        for (cf, k) in &self.keys {
            batch.delete_cf(store.cf(cf), k);
        }
        for (cf, from, to) in &self.ranges {
            batch.delete_range_cf(store.cf(cf), from, to);
        }
    }
}

/// Retention's cuts read and turned into deletes (see [`RocksStore::prepare_prune`]),
/// waiting for [`RocksStore::commit_prune`].
#[derive(Debug, Default)]
pub struct PreparedPrune {
    logs: Vec<PreparedLog>,
    /// [`RocksStore::truncate`]s done before it was prepared.
    truncations: u64,
}

#[derive(Debug)]
struct PreparedLog {
    lk: Vec<u8>,
    /// The log's base the deletes start from: the commit checks it has not moved.
    base: Seq,
    below: Seq,
    top: Offset,
    done: Pruned,
    deletes: Deletes,
}

struct Writer {
    states: HashMap<Vec<u8>, LogState>,
    /// The offset in the durability mark file.
    marked: u64,
    /// When the mark was last written (or attempted).
    mark_at: Option<Instant>,
}

/// The RocksDB-backed [`Store`].
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    writer: Mutex<Writer>,
    next_offset: AtomicU64,
    /// The highest `pruned_to` of any log (see `ReadStore::pruned_to`).
    pruned_to: AtomicU64,
    /// Truncations so far: a prune prepared before one is not committed (what it read
    /// may name events a truncation took back and a write stored again).
    truncations: AtomicU64,
    /// This open created the database (there was none).
    created: bool,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Reads the durability mark; `None` when there is none or it is unreadable (a damaged
/// mark is reported and ignored).
fn read_mark(dir: &Path) -> Option<u64> {
    let path = dir.join(MARK_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, file = %path.display(), "cannot read the durability mark; not checking it");
            return None;
        }
    };
    let mut parts = text.split_whitespace();
    let mark = match (
        parts.next().map(str::parse::<u64>),
        parts.next().map(str::parse::<u64>),
        parts.next(),
    ) {
        (Some(Ok(n)), Some(Ok(check)), None) if check == n ^ MARK_CHECK => Some(n),
        _ => None,
    };
    if mark.is_none() {
        tracing::warn!(file = %path.display(), "the durability mark is damaged; not checking it");
    }
    mark
}

/// Writes the durability mark durably: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_mark_file(dir: &Path, next: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{MARK_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{next} {}\n", next ^ MARK_CHECK).as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(MARK_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

impl RocksStore {
    /// Opens (creating if needed) the store at `path` and checks its integrity: schema
    /// version, every head against its log, the newest arrival, the durability mark.
    ///
    /// Damage is [`StoreError::Damaged`] (naming the file when RocksDB does), another
    /// process holding the database is [`StoreError::Locked`].
    pub fn open(path: &Path, config: &RocksConfig) -> Result<Self> {
        check_creatable(path)?;
        let created = !path.join("CURRENT").try_exists().unwrap_or(true);
        let mut store = Self::open_db(path, config, true)?;
        store.created = created;
        store.startup_checks().map_err(|e| e.in_dir(path))?;
        Ok(store)
    }

    /// True when this open created the database: there was none. A node whose key
    /// already existed then has no record of what it published before (a wiped or
    /// replaced disk), the same situation as after `murmur repair`; see
    /// [`Self::own_logs_unconfirmed`].
    pub fn created(&self) -> bool {
        self.created
    }

    /// Opens an existing database without the startup checks, for `murmur repair`,
    /// which reads a database that may not pass them. Never creates one.
    pub(crate) fn open_unchecked(path: &Path, config: &RocksConfig) -> Result<Self> {
        Self::open_db(path, config, false)
    }

    /// Opens an existing database for `murmur repair`'s first step, skipping every bad
    /// WAL record (`SkipAnyCorruptedRecords`: RocksDB goes on with the records after
    /// it). Recovery then writes each column family's data to SST files; RocksDB's
    /// repair needs that, as it learns column families only from SST files and drops
    /// the WAL records of any other (db/repair.cc).
    pub(crate) fn open_salvaging(path: &Path, config: &RocksConfig) -> Result<Self> {
        let (mut opts, families) = db_options(config, false);
        opts.set_wal_recovery_mode(DBRecoveryMode::SkipAnyCorruptedRecord);
        opts.set_paranoid_checks(false);
        Self::with_options(path, &opts, families)
    }

    fn open_db(path: &Path, config: &RocksConfig, create: bool) -> Result<Self> {
        let (opts, families) = db_options(config, create);
        Self::with_options(path, &opts, families)
    }

    fn with_options(
        path: &Path,
        opts: &Options,
        families: Vec<ColumnFamilyDescriptor>,
    ) -> Result<Self> {
        let db = DB::open_cf_descriptors(opts, path, families).map_err(|e| open_error(path, e))?;
        Ok(RocksStore {
            db,
            path: path.to_path_buf(),
            writer: Mutex::new(Writer {
                states: HashMap::new(),
                marked: 0,
                mark_at: None,
            }),
            next_offset: AtomicU64::new(0),
            pruned_to: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            created: false,
        })
    }

    fn startup_checks(&self) -> Result<()> {
        self.check_schema()?;
        self.next_offset
            .store(self.load_next_offset()?, Ordering::Release);
        self.check_heads()?;
        self.check_mark()
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // The families are created at open; a missing one is a bug, not an input error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| unreachable!("column family {name} is created at open"))
    }

    /// A database that comes back with fewer events than its durability mark lost
    /// durable (acknowledged) events somewhere below RocksDB's own checks.
    fn check_mark(&self) -> Result<()> {
        let Some(mark) = read_mark(&self.path) else {
            return Ok(());
        };
        let next = self.next_offset.load(Ordering::Acquire);
        if next < mark {
            return Err(StoreError::Damaged {
                dir: Some(self.path.clone()),
                file: None,
                detail: format!(
                    "it holds {next} events, but {mark} had been written durably \
                     ({MARK_FILE}): RocksDB dropped data while opening it"
                ),
            });
        }
        if let Ok(mut w) = self.writer.lock() {
            w.marked = mark;
        }
        Ok(())
    }

    /// Records that every event below `next` is durable (see [`MARK_FILE`]). A failure
    /// is logged, not returned: the events are durable either way, only the check at
    /// the next open is weaker.
    fn write_mark(&self, writer: &mut Writer, next: u64) {
        match write_mark_file(&self.path, next) {
            Ok(()) => writer.marked = next,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.path.display(), "cannot write the durability mark")
            }
        }
        writer.mark_at = Some(Instant::now());
    }

    /// Inserts `events` like [`Store::insert`], and records each idempotency key of
    /// `keys` (with the id of the event it published, at `now_ms`) in the same atomic
    /// write: a key is durable exactly when its event is.
    pub fn insert_keyed(
        &self,
        events: &[Event],
        keys: &[KeyOf],
        now_ms: u64,
        durability: Durability,
    ) -> Result<Vec<Outcome>> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        let keys: HashMap<EventId, &KeyOf> = keys.iter().map(|k| (k.id, k)).collect();
        self.insert_inner(
            &mut writer,
            WriteBatch::default(),
            HashMap::new(),
            events,
            durability,
            Some((&keys, now_ms)),
        )
    }

    /// What an idempotency key published: when (ms since the epoch), the event's id, and
    /// the event with its offset if the store still holds it (retention may have pruned
    /// it since).
    pub fn idempotency(&self, key: &str) -> Result<Option<Keyed>> {
        let Some(v) = self.db.get_cf(self.cf(CF_META), idem_key(key))? else {
            return Ok(None);
        };
        if v.len() != IDEM_VALUE {
            return Err(corrupt("idempotency entry is not 72 bytes"));
        }
        let at_ms = u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
        let mut id = [0u8; 32];
        id.copy_from_slice(&v[8..40]);
        let id = EventId(id);
        let mut request = [0u8; 32];
        request.copy_from_slice(&v[40..]);
        let event = match self.db.get_pinned_cf(self.cf(CF_BY_ID), id.0)? {
            Some(b) => {
                let (ek, off) = split_by_id(&b)?;
                self.get_event(ek)?.map(|e| (Offset(off), e))
            }
            None => None,
        };
        Ok(Some(Keyed {
            at_ms,
            id,
            request,
            event,
        }))
    }

    /// Deletes idempotency keys recorded before `before_ms`, reading at most `budget`
    /// of them from the key `from` on (`None`: the first); returns how many it deleted
    /// and where the next call goes on (`None`: it read to the end). Call it from the
    /// store's writer (a key written again meanwhile must not be deleted).
    pub fn prune_idempotency(
        &self,
        before_ms: u64,
        budget: usize,
        from: Option<&str>,
    ) -> Result<(usize, Option<String>)> {
        let meta = self.cf(CF_META);
        let mut it = self.db.raw_iterator_cf(meta);
        it.seek(idem_key(from.unwrap_or("")));
        let mut batch = WriteBatch::default();
        let (mut read, mut deleted) = (0usize, 0usize);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(IDEM_PREFIX) {
                return self.finish_idem_prune(batch, deleted, None);
            }
            if read >= budget {
                let next = String::from_utf8_lossy(&k[IDEM_PREFIX.len()..]).into_owned();
                return self.finish_idem_prune(batch, deleted, Some(next));
            }
            read += 1;
            let at = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            if at < before_ms {
                batch.delete_cf(meta, k);
                deleted += 1;
            }
            it.next();
        }
        it.status()?;
        self.finish_idem_prune(batch, deleted, None)
    }

    fn finish_idem_prune(
        &self,
        batch: WriteBatch,
        deleted: usize,
        next: Option<String>,
    ) -> Result<(usize, Option<String>)> {
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok((deleted, next))
    }

    /// Set by `murmur repair` (unix seconds): the node may have lost events of its own
    /// logs that peers already hold. Until it is cleared, the daemon must not sign new
    /// events on its own logs (a different event at a seq it already published is a
    /// fork of its own log): it first fetches its own logs back from peers.
    pub fn own_logs_unconfirmed(&self) -> Result<Option<u64>> {
        match self.db.get_cf(self.cf(CF_META), META_OWN_UNCONFIRMED)? {
            None => Ok(None),
            Some(v) => {
                Ok(Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
                    |_| corrupt("own_logs_unconfirmed is not 8 bytes"),
                )?)))
            }
        }
    }

    /// Marks the node's own logs unconfirmed (see [`Self::own_logs_unconfirmed`]),
    /// durably.
    pub fn set_own_logs_unconfirmed(&self, since_unix_secs: u64) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(
            self.cf(CF_META),
            META_OWN_UNCONFIRMED,
            since_unix_secs.to_be_bytes(),
            &wo,
        )?;
        Ok(())
    }

    /// One small synced write: does the store take writes? After a failed write RocksDB
    /// may refuse every later one until it is reopened; see
    /// [`StoreError::is_environmental`].
    pub fn probe_write(&self) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.db
            .put_cf_opt(self.cf(CF_META), META_WRITE_PROBE, now.to_be_bytes(), &wo)?;
        Ok(())
    }

    /// Clears the mark of [`Self::own_logs_unconfirmed`], durably.
    pub fn confirm_own_logs(&self) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .delete_cf_opt(self.cf(CF_META), META_OWN_UNCONFIRMED, &wo)?;
        Ok(())
    }

    /// Stores a fork proof as found in another store (`murmur repair`), freezing its
    /// log at the proof's seq. The caller has checked the proof.
    pub(crate) fn restore_fork(&self, proof: &ForkProof) -> Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        let lk = log_key(proof.topic(), &proof.author());
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_FORKS), &lk, encode_fork(proof));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        writer.states.remove(&lk);
        Ok(())
    }

    pub(crate) fn check_schema(&self) -> Result<()> {
        let meta = self.cf(CF_META);
        match self.db.get_cf(meta, b"schema")? {
            None => self
                .db
                .put_cf(meta, b"schema", SCHEMA_VERSION.to_be_bytes())?,
            Some(v) => {
                let found = u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| corrupt("schema version is not 4 bytes"))?,
                );
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
                if found < 2 {
                    self.upgrade_to_2()?;
                }
                if found < 3 {
                    self.upgrade_to_3()?;
                }
            }
        }
        Ok(())
    }

    /// Version 1 → 2: the id index gains each event's offset (from the arrivals), so
    /// pruning can delete arrival entries. One pass over the arrivals, in batches; if
    /// it stops half-way, the next open does it again (the rewrite is idempotent).
    fn upgrade_to_2(&self) -> Result<()> {
        let (events, by_id) = (self.cf(CF_EVENTS), self.cf(CF_BY_ID));
        let mut it = self.db.raw_iterator_cf(self.cf(CF_ARRIVALS));
        it.seek_to_first();
        let mut batch = WriteBatch::default();
        let mut n = 0u64;
        while let (Some(k), Some(ek)) = (it.key(), it.value()) {
            let off = u64::from_be_bytes(k.try_into().map_err(|_| corrupt("arrival key"))?);
            // A damaged store may have arrivals that name nothing: the upgrade leaves
            // them to the startup checks and `murmur repair` (which never reads the id
            // index of the store it salvages).
            if let Some(bytes) = self.db.get_pinned_cf(events, ek)? {
                batch.put_cf(by_id, EventId::hash(&bytes).0, by_id_value(ek, off));
                n += 1;
            }
            if batch.len() >= 4096 {
                self.db.write(std::mem::take(&mut batch))?;
            }
            it.next();
        }
        it.status()?;
        batch.put_cf(self.cf(CF_META), b"schema", 2u32.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        tracing::info!(events = n, "store upgraded to schema 2 (retention)");
        Ok(())
    }

    /// Version 2 → 3: every head record gains the bytes its log holds, summed over its
    /// stored events. Idempotent, like the step before.
    fn upgrade_to_3(&self) -> Result<()> {
        let (events, heads) = (self.cf(CF_EVENTS), self.cf(CF_HEADS));
        let mut it = self.db.raw_iterator_cf(heads);
        it.seek_to_first();
        let mut batch = WriteBatch::default();
        let mut logs = 0u64;
        while let (Some(lk), Some(v)) = (it.key(), it.value()) {
            let mut rec = decode_head(v)?;
            rec.bytes = 0;
            // What older versions pruned is not known; they never started a log over
            // in a document topic (a restart there is new with this version).
            rec.pruned_bytes = 0;
            rec.restarted = false;
            let mut ev = self.db.raw_iterator_cf(events);
            ev.seek(event_key(lk, rec.base));
            while let (Some(k), Some(v)) = (ev.key(), ev.value()) {
                if !k.starts_with(lk) || k.len() != lk.len() + 8 {
                    break;
                }
                rec.bytes += v.len() as u64;
                ev.next();
            }
            ev.status()?;
            batch.put_cf(heads, lk, encode_head(&rec));
            logs += 1;
            if batch.len() >= 4096 {
                self.db.write(std::mem::take(&mut batch))?;
            }
            it.next();
        }
        it.status()?;
        batch.put_cf(self.cf(CF_META), b"schema", 3u32.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        tracing::info!(logs, "store upgraded to schema 3 (bytes per log)");
        Ok(())
    }

    pub(crate) fn load_next_offset(&self) -> Result<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_ARRIVALS));
        it.seek_to_last();
        let next = match (it.key(), it.value()) {
            (Some(k), Some(v)) => {
                let off = u64::from_be_bytes(
                    k.try_into()
                        .map_err(|_| corrupt("arrival key is not 8 bytes"))?,
                );
                if self.db.get_pinned_cf(self.cf(CF_EVENTS), v)?.is_none() {
                    return Err(corrupt(format!("arrival {off} names a missing event")));
                }
                off + 1
            }
            _ => 0,
        };
        it.status()?;
        let floor = match self.db.get_cf(self.cf(CF_META), META_NEXT_FLOOR)? {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("next_offset_floor is not 8 bytes"))?,
            ),
            None => 0,
        };
        Ok(next.max(floor))
    }

    /// Startup check, O(logs): every head names a stored event that is in the id index,
    /// and nothing is stored past it. (`murmur verify` checks everything.)
    fn check_heads(&self) -> Result<()> {
        let events = self.cf(CF_EVENTS);
        let mut it = self.db.raw_iterator_cf(self.cf(CF_HEADS));
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let HeadRecord {
                head, pruned_to, ..
            } = decode_head(v)?;
            self.pruned_to.fetch_max(pruned_to.0, Ordering::AcqRel);
            let at = self
                .db
                .get_pinned_cf(events, event_key(k, head.seq))?
                .ok_or_else(|| corrupt(format!("head seq {} of a log is missing", head.seq)))?;
            if EventId::hash(&at) != head.id {
                return Err(corrupt(format!(
                    "head seq {} does not match the stored event",
                    head.seq
                )));
            }
            if self
                .db
                .get_pinned_cf(self.cf(CF_BY_ID), head.id.0)?
                .is_none()
            {
                return Err(corrupt(format!(
                    "head seq {} is missing from the id index",
                    head.seq
                )));
            }
            if let Some(next) = head.seq.next()
                && self.db.get_pinned_cf(events, event_key(k, next))?.is_some()
            {
                return Err(corrupt(format!(
                    "an event is stored past head seq {}",
                    head.seq
                )));
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    fn load_state(&self, lk: &[u8]) -> Result<LogState> {
        let head = match self.db.get_pinned_cf(self.cf(CF_HEADS), lk)? {
            Some(v) => Some(decode_head(&v)?),
            None => None,
        };
        let frozen_at = match self.db.get_pinned_cf(self.cf(CF_FORKS), lk)? {
            Some(v) => Some(decode_fork(&v)?.seq()),
            None => None,
        };
        Ok(match head {
            Some(r) => LogState {
                head: Some(r.head),
                frozen_at,
                base: r.base,
                pruned_to: r.pruned_to,
                bytes: r.bytes,
                pruned_bytes: r.pruned_bytes,
                restarted: r.restarted,
            },
            None => LogState {
                frozen_at,
                ..LogState::default()
            },
        })
    }

    pub(crate) fn event_at(&self, key: &[u8]) -> Result<Option<Event>> {
        self.get_event(key)
    }

    fn get_event(&self, key: &[u8]) -> Result<Option<Event>> {
        match self.db.get_cf(self.cf(CF_EVENTS), key)? {
            Some(v) => decode_event(v).map(Some),
            None => Ok(None),
        }
    }

    /// Raw access for integrity tools and tests.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// `insert` under the writer lock, on top of `batch` and `overlay` (what a
    /// [`Store::restart_log`] already deleted and reset).
    fn insert_locked(
        &self,
        writer: &mut Writer,
        batch: WriteBatch,
        overlay: HashMap<Vec<u8>, LogState>,
        events: &[Event],
        durability: Durability,
    ) -> Result<Vec<Outcome>> {
        self.insert_inner(writer, batch, overlay, events, durability, None)
    }

    /// [`Self::insert_locked`], recording the idempotency key of each appended event
    /// that has one (`keys`, by event id, at `now_ms`) in the same write: a key exists
    /// exactly when its event was stored.
    fn insert_inner(
        &self,
        writer: &mut Writer,
        mut batch: WriteBatch,
        mut overlay: HashMap<Vec<u8>, LogState>,
        events: &[Event],
        durability: Durability,
        keys: Option<(&HashMap<EventId, &KeyOf>, u64)>,
    ) -> Result<Vec<Outcome>> {
        // Events appended by this call, by event key (as indexes into `events`).
        let mut staged: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut offset = self.next_offset.load(Ordering::Acquire);
        let mut outcomes = Vec::with_capacity(events.len());
        let (cf_events, cf_heads, cf_by_id, cf_arrivals, cf_forks) = (
            self.cf(CF_EVENTS),
            self.cf(CF_HEADS),
            self.cf(CF_BY_ID),
            self.cf(CF_ARRIVALS),
            self.cf(CF_FORKS),
        );
        for (i, ev) in events.iter().enumerate() {
            let lk = log_key(ev.topic(), &ev.author());
            let state = match overlay.get(&lk).or_else(|| writer.states.get(&lk)) {
                Some(s) => *s,
                None => self.load_state(&lk)?,
            };
            let mut read_err = None;
            let verdict = accept::classify(&state, ev, |seq| {
                let ek = event_key(&lk, seq);
                if let Some(&j) = staged.get(&ek) {
                    return events.get(j).cloned();
                }
                self.get_event(&ek).unwrap_or_else(|e| {
                    read_err = Some(e);
                    None
                })
            });
            if let Some(e) = read_err {
                return Err(e);
            }
            let mut next_state = state;
            let outcome = match verdict {
                Verdict::Append => {
                    let ek = event_key(&lk, ev.seq());
                    let head = Head::of(ev);
                    batch.put_cf(cf_events, &ek, ev.bytes());
                    batch.put_cf(cf_by_id, ev.id().0, by_id_value(&ek, offset));
                    batch.put_cf(cf_arrivals, offset.to_be_bytes(), &ek);
                    crate::docs::index(&mut batch, self, ev, offset, &ek);
                    if let Some(k) = keys.and_then(|(m, now)| m.get(&ev.id()).map(|k| (k, now))) {
                        batch.put_cf(
                            self.cf(CF_META),
                            idem_key(&k.0.key),
                            idem_value(k.1, &ev.id(), &k.0.request),
                        );
                    }
                    staged.insert(ek, i);
                    next_state.head = Some(head);
                    next_state.bytes += ev.bytes().len() as u64;
                    offset += 1;
                    Outcome::Appended(Offset(offset - 1))
                }
                Verdict::Duplicate => Outcome::Duplicate,
                Verdict::Fork(proof) => {
                    let seq = proof.seq();
                    if state.frozen_at.is_none_or(|f| seq < f) {
                        batch.put_cf(cf_forks, &lk, encode_fork(&proof));
                        next_state.frozen_at = Some(seq);
                    }
                    Outcome::Fork(seq)
                }
                Verdict::Gap { expected } => Outcome::Gap { expected },
                Verdict::PrevMismatch { .. } => Outcome::PrevMismatch,
                Verdict::Frozen { .. } => Outcome::Frozen,
                Verdict::Pruned => Outcome::Pruned,
            };
            if next_state != state {
                overlay.insert(lk, next_state);
            }
            outcomes.push(outcome);
        }
        // One head per changed log per call (the last), not one per event: a window of
        // 1,024 events is one head write instead of 1,024.
        for (lk, st) in &overlay {
            if let Some(head) = st.head {
                batch.put_cf(cf_heads, lk, encode_head(&HeadRecord::of(head, st)));
            }
        }
        if !batch.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(durability == Durability::Sync);
            self.db.write_opt(batch, &wo)?;
        }
        if durability == Durability::Sync
            && offset > writer.marked
            && writer.mark_at.is_none_or(|t| t.elapsed() >= MARK_EVERY)
        {
            self.write_mark(writer, offset);
        }
        if writer.states.len() + overlay.len() > STATE_CACHE_MAX {
            writer.states.clear();
        }
        writer.states.extend(overlay);
        self.next_offset.store(offset, Ordering::Release);
        Ok(outcomes)
    }

    /// The deletes of a log's events with seq in `from..to`, with their id, arrival and
    /// document entries; with one past the highest offset deleted. Reads only events
    /// below the log's head, which no write changes while its base stays.
    fn delete_events(
        &self,
        deletes: &mut Deletes,
        topic: &Topic,
        lk: &[u8],
        from: Seq,
        to: Seq,
    ) -> Result<(Pruned, Offset)> {
        let mut top = Offset(0);
        let (cf_events, cf_by_id) = (self.cf(CF_EVENTS), self.cf(CF_BY_ID));
        let mut done = Pruned::default();
        // Document indexes to remove only in a topic that has documents (decoding
        // every pruned event to look cost as much as the rest of the pass).
        let has_docs = !crate::docs::of_topic(self, topic, 1)?.is_empty();
        let (from, to) = (event_key(lk, from), event_key(lk, to));
        let mut it = self.db.raw_iterator_cf(cf_events);
        it.seek(&from);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k >= to.as_slice() {
                break;
            }
            let id = EventId::hash(v);
            if let Some(idv) = self.db.get_pinned_cf(cf_by_id, id.0)? {
                let (_, off) = split_by_id(&idv)?;
                top = top.max(Offset(off + 1));
                deletes.key(CF_ARRIVALS, off.to_be_bytes().to_vec());
                if has_docs {
                    let ev = decode_event(v.to_vec())?;
                    crate::docs::unindex(deletes, &ev, off);
                }
            }
            deletes.key(CF_BY_ID, id.0.to_vec());
            done.events += 1;
            done.bytes += v.len() as u64;
            it.next();
        }
        it.status()?;
        deletes.range(CF_EVENTS, from, to);
        Ok((done, top))
    }

    /// Retention's first half (see [`RocksStore::commit_prune`]): reads what `cuts`
    /// delete and prepares the deletes, without holding the writer, so that the store's
    /// one writer (signing and committing publishes) spends only the write on it. The
    /// events read lie below their logs' heads: nothing changes them until a log's base
    /// moves, which the commit checks. Cuts of one log in one call apply in order.
    pub fn prepare_prune(&self, cuts: &[Cut]) -> Result<PreparedPrune> {
        let mut logs = Vec::new();
        let mut bases: HashMap<Vec<u8>, Seq> = HashMap::new();
        for cut in cuts {
            let lk = log_key(&cut.topic, &cut.author);
            let state = self.current_state(&lk)?;
            // The head event stays: offsets are never reused (the newest arrival is
            // always some log's head), and the chain continues from it.
            let Some(head) = state.head else { continue };
            let base = bases.get(&lk).copied().unwrap_or(state.base);
            let below = cut.below.min(head.seq);
            if below <= base {
                continue;
            }
            let mut deletes = Deletes::default();
            let (done, top) = self.delete_events(&mut deletes, &cut.topic, &lk, base, below)?;
            bases.insert(lk.clone(), below);
            logs.push(PreparedLog {
                lk,
                base,
                below,
                top,
                done,
                deletes,
            });
        }
        Ok(PreparedPrune {
            logs,
            truncations: self.truncations.load(Ordering::Acquire),
        })
    }

    /// Retention's second half: writes what [`RocksStore::prepare_prune`] prepared, in
    /// one batch under the writer. A log whose base moved meanwhile (it started over
    /// at a peer's base) is left for the next pass.
    pub fn commit_prune(&self, prepared: PreparedPrune) -> Result<Pruned> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        if prepared.truncations != self.truncations.load(Ordering::Acquire) {
            // The next pass prepares it again.
            return Ok(Pruned::default());
        }
        let cf_heads = self.cf(CF_HEADS);
        let mut batch = WriteBatch::default();
        let mut done = Pruned::default();
        let mut changed: HashMap<Vec<u8>, LogState> = HashMap::new();
        let mut most = Offset(0);
        for log in prepared.logs {
            let state = match changed.get(&log.lk).or_else(|| writer.states.get(&log.lk)) {
                Some(s) => *s,
                None => self.load_state(&log.lk)?,
            };
            let Some(head) = state.head else { continue };
            if state.base != log.base || head.seq < log.below {
                continue;
            }
            log.deletes.apply(self, &mut batch);
            done.events += log.done.events;
            done.bytes += log.done.bytes;
            let pruned_to = state.pruned_to.max(log.top);
            most = most.max(pruned_to);
            let next = LogState {
                base: log.below,
                pruned_to,
                bytes: state.bytes.saturating_sub(log.done.bytes),
                pruned_bytes: state.pruned_bytes.saturating_add(log.done.bytes),
                ..state
            };
            batch.put_cf(cf_heads, &log.lk, encode_head(&HeadRecord::of(head, &next)));
            changed.insert(log.lk, next);
        }
        if !batch.is_empty() {
            // Buffered: a pruning lost to a power cut is redone by the next pass.
            self.db.write(batch)?;
        }
        self.pruned_to.fetch_max(most.0, Ordering::AcqRel);
        writer.states.extend(changed);
        Ok(done)
    }

    /// A log's state as the writer knows it (its cache, else the database).
    fn current_state(&self, lk: &[u8]) -> Result<LogState> {
        let cached = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?
            .states
            .get(lk)
            .copied();
        match cached {
            Some(s) => Ok(s),
            None => self.load_state(lk),
        }
    }

    /// Visits the document snapshot events held in `topic` (see `murmur_core::snapshot`;
    /// of document `doc` only, if given), newest first, at most `limit`, one in memory
    /// at a time, until `f` returns false.
    pub fn snapshot_events(
        &self,
        topic: &Topic,
        doc: Option<&DocId>,
        limit: usize,
        f: impl FnMut(Event, murmur_core::snapshot::DocSnapshot) -> bool,
    ) -> Result<()> {
        crate::docs::snapshot_events(self, topic, doc, limit, f)
    }

    /// Where the document snapshot events held in `topic` are (of document `doc` only,
    /// if given), newest first, at most `limit`, from the index alone.
    pub fn snapshot_refs(
        &self,
        topic: &Topic,
        doc: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<crate::docs::SnapshotRef>> {
        crate::docs::snapshot_refs(self, topic, doc, limit)
    }

    /// The snapshot event `r` names, if it is still held and decodes.
    pub fn snapshot_at(
        &self,
        topic: &Topic,
        r: &crate::docs::SnapshotRef,
    ) -> Result<Option<(Event, murmur_core::snapshot::DocSnapshot)>> {
        crate::docs::snapshot_at(self, topic, r)
    }

    /// Takes the snapshot event at `offset` out of `topic`'s snapshots (found false; the
    /// event stays).
    pub fn refuse_snapshot_event(&self, topic: &Topic, offset: Offset) -> Result<()> {
        crate::docs::refuse_snapshot_event(self, topic, offset)
    }

    /// Compacts the families pruning deletes from (events, id index, arrivals), so the
    /// space of pruned events returns to the file system. Runs beside writes (RocksDB
    /// compacts in its own threads); takes as long as rewriting what remains.
    pub fn compact_pruned(&self) -> Result<()> {
        for cf in [CF_EVENTS, CF_BY_ID, CF_ARRIVALS] {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes the database occupies on disk (SST files, WAL, manifest, logs).
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.path)
            .map(|dir| {
                dir.filter_map(std::result::Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(std::fs::Metadata::is_file)
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Up to `limit` stored events of one log from seq `from` on, each through `each`.
    fn log_values<T>(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
        each: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let lk = log_key(topic, author);
        let mut it = self.db.raw_iterator_cf(self.cf(CF_EVENTS));
        it.seek(event_key(&lk, from));
        let mut out = Vec::new();
        while out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(&lk) || k.len() != lk.len() + 8 {
                break;
            }
            out.push(each(v)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Memory held by memtables and the block cache, bytes (approximate).
    pub fn memory_bytes(&self) -> u64 {
        let p = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        p("rocksdb.cur-size-all-mem-tables") + p("rocksdb.block-cache-usage")
    }
}

fn decode_event(v: Vec<u8>) -> Result<Event> {
    Event::decode(Bytes::from(v), MAX_EVENT_BYTES)
        .map_err(|e| corrupt(format!("stored event: {e}")))
}

/// A log's head record: its head, its base and pruned-to offset, the bytes it holds
/// and has pruned, and whether it started over (see [`LogState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadRecord {
    pub(crate) head: Head,
    pub(crate) base: Seq,
    pub(crate) pruned_to: Offset,
    pub(crate) bytes: u64,
    pub(crate) pruned_bytes: u64,
    pub(crate) restarted: bool,
}

impl HeadRecord {
    fn of(head: Head, st: &LogState) -> Self {
        HeadRecord {
            head,
            base: st.base,
            pruned_to: st.pruned_to,
            bytes: st.bytes,
            pruned_bytes: st.pruned_bytes,
            restarted: st.restarted,
        }
    }
}

/// Length of a head record (older schemas wrote 52 bytes, or 68 once pruned).
const HEAD_RECORD_LEN: usize = 85;

pub(crate) fn encode_head(r: &HeadRecord) -> Vec<u8> {
    let mut v = vec![0u8; HEAD_RECORD_LEN];
    v[..8].copy_from_slice(&r.head.seq.0.to_be_bytes());
    v[8..40].copy_from_slice(&r.head.id.0);
    v[40..48].copy_from_slice(&r.head.time.ms.to_be_bytes());
    v[48..52].copy_from_slice(&r.head.time.logical.to_be_bytes());
    v[52..60].copy_from_slice(&r.base.0.to_be_bytes());
    v[60..68].copy_from_slice(&r.pruned_to.0.to_be_bytes());
    v[68..76].copy_from_slice(&r.bytes.to_be_bytes());
    v[76..84].copy_from_slice(&r.pruned_bytes.to_be_bytes());
    v[84] = u8::from(r.restarted);
    v
}

/// Idempotency keys of local publishes, in the meta column family (no new column
/// family: an older murmur opens the store and ignores them).
const IDEM_PREFIX: &[u8] = b"idem\0";

fn idem_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(IDEM_PREFIX.len() + key.len());
    k.extend_from_slice(IDEM_PREFIX);
    k.extend_from_slice(key.as_bytes());
    k
}

/// An idempotency entry: when (8), the event's id (32), the request's digest (32).
const IDEM_VALUE: usize = 72;

fn idem_value(at_ms: u64, id: &EventId, request: &[u8; 32]) -> [u8; IDEM_VALUE] {
    let mut v = [0u8; IDEM_VALUE];
    v[..8].copy_from_slice(&at_ms.to_be_bytes());
    v[8..40].copy_from_slice(&id.0);
    v[40..].copy_from_slice(request);
    v
}

/// An idempotency key to record with the event it publishes
/// ([`RocksStore::insert_keyed`]).
#[derive(Debug, Clone)]
pub struct KeyOf {
    /// The key.
    pub key: String,
    /// The event it publishes.
    pub id: EventId,
    /// A digest of what was asked (topic, content type, data): a retry asking something
    /// else with the same key is told so.
    pub request: [u8; 32],
}

/// What an idempotency key published ([`RocksStore::idempotency`]).
#[derive(Debug, Clone)]
pub struct Keyed {
    /// When it was published, ms since the epoch.
    pub at_ms: u64,
    /// The event's id.
    pub id: EventId,
    /// The digest of the request that published it (see [`KeyOf::request`]).
    pub request: [u8; 32],
    /// The event and its offset, if the store still holds it.
    pub event: Option<(Offset, Event)>,
}

/// An id index value: the event key and the event's offset.
pub(crate) fn by_id_value(ek: &[u8], offset: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(ek.len() + 8);
    v.extend_from_slice(ek);
    v.extend_from_slice(&offset.to_be_bytes());
    v
}

/// An id index value's event key and offset.
pub(crate) fn split_by_id(v: &[u8]) -> Result<(&[u8], u64)> {
    if v.len() < 34 + 8 + 8 {
        return Err(corrupt("id index value too short"));
    }
    let (ek, off) = v.split_at(v.len() - 8);
    Ok((ek, u64::from_be_bytes(off.try_into().unwrap_or([0; 8]))))
}

/// A head record. The shorter records of schemas 1 and 2 read with 0 bytes held (the
/// upgrade to schema 3 counts them).
pub(crate) fn decode_head(v: &[u8]) -> Result<HeadRecord> {
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    let (base, pruned_to, bytes, pruned_bytes, restarted) = match v.len() {
        52 => (Seq(0), Offset(0), 0, 0, false),
        68 => (Seq(u64_at(52)), Offset(u64_at(60)), 0, 0, false),
        HEAD_RECORD_LEN => (
            Seq(u64_at(52)),
            Offset(u64_at(60)),
            u64_at(68),
            u64_at(76),
            match v[84] {
                0 => false,
                1 => true,
                f => return Err(corrupt(format!("head record flags {f:#x}"))),
            },
        ),
        n => {
            return Err(corrupt(format!(
                "head record is {n} bytes, not 52, 68 or 85"
            )));
        }
    };
    if base.0 > u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])) {
        return Err(corrupt("head record's base is past its head"));
    }
    Ok(HeadRecord {
        head: decode_head_only(&v[..52])?,
        base,
        pruned_to,
        bytes,
        pruned_bytes,
        restarted,
    })
}

fn decode_head_only(v: &[u8]) -> Result<Head> {
    if v.len() != 52 {
        return Err(corrupt("head record is not 52 bytes"));
    }
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut id = [0u8; 32];
    id.copy_from_slice(&v[8..40]);
    Ok(Head {
        seq: Seq(u64_at(0)),
        id: EventId(id),
        time: Timestamp {
            ms: u64_at(40),
            logical: u32::from_be_bytes(v[48..52].try_into().unwrap_or([0; 4])),
        },
    })
}

fn encode_fork(p: &ForkProof) -> Vec<u8> {
    let (a, b) = (p.ours.bytes(), p.theirs.bytes());
    let mut v = Vec::with_capacity(4 + a.len() + b.len());
    v.extend_from_slice(&(a.len() as u32).to_be_bytes());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

pub(crate) fn decode_fork(v: &[u8]) -> Result<ForkProof> {
    let bad = || corrupt("fork record");
    let len =
        u32::from_be_bytes(v.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let a = v.get(4..4 + len).ok_or_else(bad)?;
    let b = v.get(4 + len..).ok_or_else(bad)?;
    Ok(ForkProof {
        ours: decode_event(a.to_vec())?,
        theirs: decode_event(b.to_vec())?,
    })
}

impl ReadStore for RocksStore {
    type Error = StoreError;

    fn log_state(&self, author: &AuthorId, topic: &Topic) -> Result<LogState> {
        self.load_state(&log_key(topic, author))
    }

    fn log_range(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.log_values(author, topic, from, limit, |v| decode_event(v.to_vec()))
    }

    fn log_range_bytes(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Bytes>> {
        self.log_values(author, topic, from, limit, |v| {
            Ok(Bytes::copy_from_slice(v))
        })
    }

    fn event(&self, id: &EventId) -> Result<Option<Event>> {
        match self.db.get_pinned_cf(self.cf(CF_BY_ID), id.0)? {
            Some(v) => self.get_event(split_by_id(&v)?.0),
            None => Ok(None),
        }
    }

    fn arrivals(
        &self,
        from: Offset,
        filter: Option<&Pattern>,
        limit: usize,
        max_scan: usize,
    ) -> Result<ArrivalPage> {
        // One snapshot for the index and the events: a prune committing between the two
        // reads would otherwise look like an arrival naming a missing event.
        let snap = self.db.snapshot();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_ARRIVALS), ro);
        it.seek(from.0.to_be_bytes());
        let mut wanted: Vec<(Offset, Vec<u8>)> = Vec::new();
        let mut next = from;
        let mut scanned = 0;
        while scanned < max_scan && wanted.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let off = Offset(u64::from_be_bytes(
                k.try_into().map_err(|_| corrupt("arrival key"))?,
            ));
            let keep = match filter {
                None => true,
                Some(p) => p.matches_str(topic_of(v).ok_or_else(|| corrupt("arrival value"))?),
            };
            if keep {
                wanted.push((off, v.to_vec()));
            }
            next = Offset(off.0 + 1);
            scanned += 1;
            it.next();
        }
        it.status()?;
        let cf = self.cf(CF_EVENTS);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        let values = self
            .db
            .multi_get_cf_opt(wanted.iter().map(|(_, k)| (cf, k.as_slice())), &ro);
        let mut events = Vec::with_capacity(wanted.len());
        for ((off, _), v) in wanted.into_iter().zip(values) {
            let bytes =
                v?.ok_or_else(|| corrupt(format!("arrival {off} names a missing event")))?;
            events.push((off, decode_event(bytes)?));
        }
        Ok(ArrivalPage { events, next })
    }

    fn next_offset(&self) -> Offset {
        Offset(self.next_offset.load(Ordering::Acquire))
    }

    fn pruned_to(&self) -> Offset {
        Offset(self.pruned_to.load(Ordering::Acquire))
    }

    fn logs(&self) -> Result<Vec<LogSummary>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_HEADS));
        it.seek_to_first();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (topic, author) = split_log_key(k).ok_or_else(|| corrupt("head key"))?;
            out.push((topic, author, decode_head(v)?, k.to_vec()));
            it.next();
        }
        it.status()?;
        out.into_iter()
            .map(|(topic, author, rec, lk)| {
                let frozen_at = self.load_state(&lk)?.frozen_at;
                Ok(LogSummary {
                    topic,
                    author,
                    head: rec.head,
                    frozen_at,
                    base: rec.base,
                    pruned_to: rec.pruned_to,
                    bytes: rec.bytes,
                    pruned_bytes: rec.pruned_bytes,
                })
            })
            .collect()
    }

    fn version_vector(&self, topic: &Topic) -> Result<VersionVector> {
        let prefix = topic_prefix(topic);
        let mut it = self.db.raw_iterator_cf(self.cf(CF_HEADS));
        it.seek(&prefix);
        let mut vv = VersionVector::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, author) = split_log_key(k).ok_or_else(|| corrupt("head key"))?;
            let h = decode_head(v)?.head;
            vv.insert(
                author,
                vv::Entry {
                    seq: h.seq,
                    id: h.id,
                },
            );
            it.next();
        }
        it.status()?;
        Ok(vv)
    }

    fn forks(&self) -> Result<Vec<ForkProof>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_FORKS));
        it.seek_to_first();
        let mut out = Vec::new();
        while let Some(v) = it.value() {
            out.push(decode_fork(v)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Syncs the WAL and writes the durability mark. Holds the writer lock, so no
    /// insert is half done: everything below the next offset is durable after this.
    fn doc_changes(
        &self,
        topic: &Topic,
        doc: &DocId,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<(Offset, Event)>> {
        crate::docs::changes(self, topic, doc, from, limit)
    }

    fn doc_last_change(&self, topic: &Topic, doc: &DocId) -> Result<Option<Offset>> {
        crate::docs::last_change(self, topic, doc)
    }

    fn doc_arrivals(&self, from: Offset, limit: usize) -> Result<(Vec<DocArrival>, Offset)> {
        crate::docs::arrivals(self, from, limit)
    }

    fn docs_of(&self, topic: &Topic, limit: usize) -> Result<Vec<DocId>> {
        crate::docs::of_topic(self, topic, limit)
    }

    fn load_snapshot(&self, topic: &Topic, doc: &DocId) -> Result<Option<Snapshot>> {
        crate::docs::load_snapshot(self, topic, doc)
    }
}

impl Store for RocksStore {
    fn insert(&self, events: &[Event], durability: Durability) -> Result<Vec<Outcome>> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        self.insert_locked(
            &mut writer,
            WriteBatch::default(),
            HashMap::new(),
            events,
            durability,
        )
    }

    fn restart_log(&self, events: &[Event], durability: Durability) -> Result<Vec<Outcome>> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let lk = log_key(first.topic(), &first.author());
        let state = match writer.states.get(&lk) {
            Some(s) => *s,
            None => self.load_state(&lk)?,
        };
        let mut batch = WriteBatch::default();
        let mut overlay = HashMap::new();
        if accept::restarts(&state, events) {
            let mut pruned_to = state.pruned_to;
            let mut dropped = 0;
            if let Some(head) = state.head {
                let mut deletes = Deletes::default();
                let (done, top) = self.delete_events(
                    &mut deletes,
                    first.topic(),
                    &lk,
                    state.base,
                    Seq(head.seq.0 + 1),
                )?;
                deletes.apply(self, &mut batch);
                pruned_to = pruned_to.max(top);
                dropped = done.bytes;
            }
            self.pruned_to.fetch_max(pruned_to.0, Ordering::AcqRel);
            overlay.insert(
                lk,
                LogState {
                    head: None,
                    base: first.seq(),
                    frozen_at: state.frozen_at,
                    pruned_to,
                    bytes: 0,
                    pruned_bytes: state.pruned_bytes.saturating_add(dropped),
                    restarted: true,
                },
            );
        }
        self.insert_locked(&mut writer, batch, overlay, events, durability)
    }
    fn truncate(&self, topic: &Topic, author: &AuthorId, from: Seq) -> Result<Pruned> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        let lk = log_key(topic, author);
        let state = match writer.states.get(&lk) {
            Some(s) => *s,
            None => self.load_state(&lk)?,
        };
        let Some(head) = state.head else {
            return Ok(Pruned::default());
        };
        // The first held event stays: the head anchors the chain, and the base keeps
        // what retention pruned from coming back.
        let from = from.max(Seq(state.base.0 + 1));
        if from > head.seq {
            return Ok(Pruned::default());
        }
        let Some(before) = self
            .log_range(author, topic, Seq(from.0 - 1), 1)?
            .into_iter()
            .next()
        else {
            return Err(corrupt(format!(
                "log {topic} of {author}: no event at seq {} below its head",
                from.0 - 1
            )));
        };
        let mut deletes = Deletes::default();
        // Not counted as pruned (`pruned_to`): a reader that had not read them misses
        // nothing it should have; they were taken back, not lost.
        let (done, _) = self.delete_events(&mut deletes, topic, &lk, from, Seq(head.seq.0 + 1))?;
        let mut batch = WriteBatch::default();
        deletes.apply(self, &mut batch);
        let next = LogState {
            head: Some(Head::of(&before)),
            bytes: state.bytes.saturating_sub(done.bytes),
            pruned_bytes: state.pruned_bytes.saturating_add(done.bytes),
            ..state
        };
        if let Some(h) = next.head {
            batch.put_cf(
                self.cf(CF_HEADS),
                &lk,
                encode_head(&HeadRecord::of(h, &next)),
            );
        }
        let next_offset = self.next_offset.load(Ordering::Acquire);
        batch.put_cf(self.cf(CF_META), META_NEXT_FLOOR, next_offset.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        self.truncations.fetch_add(1, Ordering::AcqRel);
        writer.states.insert(lk, next);
        Ok(done)
    }

    fn save_snapshot(&self, topic: &Topic, doc: &DocId, snap: &Snapshot) -> Result<()> {
        crate::docs::save_snapshot(self, topic, doc, snap)
    }

    fn prune(&self, cuts: &[Cut]) -> Result<Pruned> {
        let prepared = self.prepare_prune(cuts)?;
        self.commit_prune(prepared)
    }

    fn flush(&self) -> Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| corrupt("writer lock poisoned"))?;
        self.db.flush_wal(true)?;
        let next = self.next_offset.load(Ordering::Acquire);
        if next > writer.marked {
            self.write_mark(&mut writer, next);
        }
        Ok(())
    }
}
