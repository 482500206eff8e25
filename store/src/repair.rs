//! `murmur repair`: salvage a damaged database of a stopped node, destroying nothing.
//!
//! Two steps, so the caller can say where the old database went before the long part:
//!
//! 1. [`set_aside`] checks that no daemon holds the database and copies the directory,
//!    as it is, to `<db>.damaged-<unix time>` (next to it, in the data directory).
//! 2. [`rebuild`] runs RocksDB's repair on the database (it replays what it can of the
//!    WALs, skipping bad records, keeps every SST it can read, sets aside the rest in
//!    `lost/`, and writes a new MANIFEST), then copies into a fresh database every
//!    event that decodes, verifies (signature) and links to its log, in the old arrival
//!    order, with all its indexes rebuilt, and the fork proofs that still prove a fork.
//!    The fresh database replaces the old one, is marked "own logs unconfirmed"
//!    ([`RocksStore::own_logs_unconfirmed`]) and is verified like `murmur verify`.
//!
//! Why rebuild rather than keep RocksDB's repaired database: RocksDB salvages records,
//! not murmur's invariants. A lost WAL batch or SST in the middle leaves holes in logs
//! (seq 40–49 gone, 50–59 kept), heads that point past the log, arrival offsets with
//! gaps. Anti-entropy compares heads, so a hole below a head is never fetched again,
//! and `accept::classify` treats an event below the head that is not held as a gap.
//! Each log is therefore kept up to its first missing or bad event; everything after
//! it comes back from peers with the missing event (events are signed and
//! hash-linked, so what peers send is checked like any other event).
//!
//! What the rebuild changes: local offsets after the first event that was lost or
//! dropped move down (followers resuming from such an offset should start over; see
//! [`RepairReport::offsets_changed_from`]); document snapshots are dropped (they are
//! caches keyed by offsets, rebuilt from the changes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use murmur_core::storage::{Durability, Outcome, ReadStore, Store};
use murmur_core::verify::verify_batch;
use murmur_core::{Event, MAX_EVENT_BYTES};
use rocksdb::DB;

use crate::check;
use crate::rocks::{
    CF_ARRIVALS, CF_EVENTS, CF_FORKS, RocksConfig, RocksStore, StoreError, db_options, decode_fork,
    open_error,
};

type Result<T> = std::result::Result<T, StoreError>;

/// Suffix of the old database while the rebuilt one is moved into place.
pub(crate) const OLD_SUFFIX: &str = "repair-old";
/// Suffix of the database being rebuilt.
const TMP_SUFFIX: &str = "repair-tmp";
/// Most events verified and inserted at once.
const CHUNK_EVENTS: usize = 256;
/// Most event bytes held at once.
const CHUNK_BYTES: usize = 16 << 20;
/// Most problems listed in a report.
const MAX_PROBLEMS: usize = 100;

/// What [`rebuild`] did.
#[derive(Debug, Default, Clone)]
pub struct RepairReport {
    /// SST files RocksDB could not read and left out (they are in the copy made by
    /// [`set_aside`]).
    pub unreadable_tables: Vec<String>,
    /// Events kept: they decode, verify and link to their log.
    pub kept: u64,
    /// Events dropped because they do not decode or their signature does not verify.
    pub unverified: u64,
    /// Valid events dropped because an earlier event of their log is missing or bad;
    /// they come back from peers together with it.
    pub unlinked: u64,
    /// Arrival entries that named an event no longer there.
    pub dangling: u64,
    /// Fork proofs kept.
    pub forks: u64,
    /// Fork proofs dropped (they do not decode or do not prove a fork).
    pub bad_forks: u64,
    /// Document snapshots dropped (rebuilt from the changes by the daemon).
    pub snapshots_dropped: u64,
    /// The first local offset whose event is gone or moved, if any: followers resuming
    /// from this offset or a later one should start over.
    pub offsets_changed_from: Option<u64>,
    /// Read errors met while salvaging (the first 100) and other notes.
    pub problems: Vec<String>,
    /// `murmur verify` of the rebuilt database.
    pub verify: check::Report,
}

impl RepairReport {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }

    fn moved(&mut self, old: Option<u64>) {
        if self.offsets_changed_from.is_none() {
            self.offsets_changed_from = old;
        }
    }
}

/// `<dir>/<name of db>.<suffix>`; `None` when `db` has no file name (`/`, `..`).
pub(crate) fn sibling(db: &Path, suffix: &str) -> Option<PathBuf> {
    let name = db.file_name()?.to_string_lossy().into_owned();
    Some(db.with_file_name(format!("{name}.{suffix}")))
}

fn sibling_or_err(db: &Path, suffix: &str) -> Result<PathBuf> {
    sibling(db, suffix).ok_or_else(|| StoreError::Io {
        what: "repair",
        path: db.to_path_buf(),
        err: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the database path has no directory name",
        ),
    })
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |err| StoreError::Io { what, path, err }
}

fn exists(p: &Path) -> bool {
    p.try_exists().unwrap_or(true)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Copies a directory tree (regular files and directories; RocksDB makes nothing
/// else), fsyncing every file and directory. Returns the bytes copied.
fn copy_dir(from: &Path, to: &Path) -> Result<u64> {
    std::fs::create_dir(to).map_err(io("create", to))?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from).map_err(io("read", from))? {
        let entry = entry.map_err(io("read", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(io("read", &src))?;
        if ty.is_dir() {
            bytes += copy_dir(&src, &dst)?;
        } else if ty.is_file() {
            bytes += std::fs::copy(&src, &dst).map_err(io("copy", &src))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &dst))?;
        }
    }
    sync_dir(to)?;
    Ok(bytes)
}

/// Step 1: makes sure no daemon holds the database in `db`, finishes an interrupted
/// repair if there was one, and copies the directory as it is to
/// `<db>.damaged-<stamp>` (`-2`, `-3`, ... if that exists). Returns the copy's path.
/// Nothing in `db` is changed except by RocksDB opening it, as the daemon would.
pub fn set_aside(db: &Path, config: &RocksConfig, stamp: u64) -> Result<PathBuf> {
    let old = sibling_or_err(db, OLD_SUFFIX)?;
    let tmp = sibling_or_err(db, TMP_SUFFIX)?;
    if !exists(db) {
        if exists(&old) {
            // Interrupted between the two renames of `rebuild`: put the old one back
            // and repair it again.
            std::fs::rename(&old, db).map_err(io("rename", &old))?;
        } else {
            return Err(StoreError::Io {
                what: "repair",
                path: db.to_path_buf(),
                err: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
            });
        }
    } else if exists(&old) {
        // Left by a repair that completed its swap; derived from its own copy.
        std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
    }
    if exists(&tmp) {
        // A rebuild that did not finish; derived, never the only copy of anything.
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }

    // The lock: RocksDB's is an fcntl lock that only RocksDB itself can probe safely
    // (closing any descriptor of LOCK in this process would drop a lock it holds).
    // An open that fails for another reason (the damage) leaves the files as they are.
    match RocksStore::open_unchecked(db, config) {
        Ok(store) => drop(store),
        Err(StoreError::Locked(p)) => return Err(StoreError::Locked(p)),
        Err(e) => tracing::info!(error = %e, "the database does not open as it is; repairing it"),
    }

    let mut backup = sibling_or_err(db, &format!("damaged-{stamp}"))?;
    let mut n = 2;
    while backup.try_exists().map_err(io("check", &backup))? {
        backup = sibling_or_err(db, &format!("damaged-{stamp}-{n}"))?;
        n += 1;
    }
    if let Err(e) = copy_dir(db, &backup) {
        // Our own partial copy (disk full, typically); the original is untouched.
        let _ = std::fs::remove_dir_all(&backup);
        return Err(e);
    }
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(backup)
}

/// What RocksDB reported, without the operator advice of [`StoreError::Damaged`].
fn brief(e: &StoreError) -> String {
    match e {
        StoreError::Damaged { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// CURRENT names the live MANIFEST. When the database does not open and CURRENT does
/// not name the newest MANIFEST (damaged, missing, or naming one that is gone), it is
/// rewritten to name it: that is what it names except after a crash between writing a
/// new MANIFEST and switching to it. Returns the MANIFEST now named, if CURRENT was
/// rewritten. (The original CURRENT is in the copy made by [`set_aside`].)
fn repoint_current(db: &Path) -> Result<Option<String>> {
    let mut newest: Option<(u64, String)> = None;
    for entry in std::fs::read_dir(db).map_err(io("read", db))? {
        let entry = entry.map_err(io("read", db))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(n) = name
            .strip_prefix("MANIFEST-")
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(m, _)| n > *m) {
            newest = Some((n, name));
        }
    }
    let Some((_, name)) = newest else {
        return Ok(None);
    };
    let want = format!("{name}\n");
    let current = db.join("CURRENT");
    if std::fs::read(&current).ok().as_deref() == Some(want.as_bytes()) {
        return Ok(None);
    }
    let tmp = db.join("CURRENT.murmur-tmp");
    std::fs::write(&tmp, want.as_bytes()).map_err(io("write", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &current).map_err(io("rename", &tmp))?;
    sync_dir(db)?;
    Ok(Some(name))
}

/// SST files in `<db>/lost` (where RocksDB's repair moves what it cannot use).
fn lost_tables(db: &Path) -> HashSet<String> {
    std::fs::read_dir(db.join("lost"))
        .map(|dir| {
            dir.filter_map(std::result::Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.ends_with(".sst"))
                .collect()
        })
        .unwrap_or_default()
}

/// Step 2 (after [`set_aside`]): repairs, rebuilds and verifies the database in `db`;
/// marks the node's own logs unconfirmed as of `stamp` (unix seconds).
///
/// On error the database as it was is in the copy made by [`set_aside`]; running
/// `murmur repair` again is safe.
pub fn rebuild(db: &Path, config: &RocksConfig, stamp: u64) -> Result<RepairReport> {
    let old = sibling_or_err(db, OLD_SUFFIX)?;
    let tmp = sibling_or_err(db, TMP_SUFFIX)?;
    if exists(&tmp) {
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    let mut report = RepairReport::default();

    // First RocksDB replays what it can of the WALs, skipping bad records, and writes
    // it to SST files (see `RocksStore::open_salvaging`); a damaged CURRENT is pointed
    // at the newest MANIFEST first. If it still cannot open the database (a damaged
    // MANIFEST), its repair alone rebuilds it.
    let opened = match RocksStore::open_salvaging(db, config) {
        Err(StoreError::Locked(p)) => return Err(StoreError::Locked(p)),
        Err(e) => match repoint_current(db)? {
            Some(manifest) => {
                report.problem(format!(
                    "CURRENT was damaged or missing ({}); it now names {manifest}",
                    brief(&e)
                ));
                RocksStore::open_salvaging(db, config)
            }
            None => Err(e),
        },
        ok => ok,
    };
    match opened {
        Ok(store) => drop(store),
        Err(StoreError::Locked(p)) => return Err(StoreError::Locked(p)),
        Err(e) => report.problem(format!(
            "RocksDB cannot open the database even skipping bad WAL records ({}); its \
             repair rebuilds it from the SST files, and the WAL records of column \
             families that had no SST file yet are lost (peers send those events back)",
            brief(&e)
        )),
    }

    let lost_before = lost_tables(db);
    let (opts, _) = db_options(config, false);
    DB::repair(&opts, db).map_err(|e| open_error(db, e))?;
    let mut unreadable: Vec<String> = lost_tables(db)
        .into_iter()
        .filter(|t| !lost_before.contains(t))
        .collect();
    unreadable.sort();
    report.unreadable_tables = unreadable;

    {
        let src = RocksStore::open_unchecked(db, config)?;
        src.check_schema()?;
        let dst = RocksStore::open(&tmp, config)?;
        salvage(&src, &dst, &mut report)?;
        // Offsets the old store handed out past the last one salvaged (events taken
        // back from its end, or lost) are handed out again: say so, as for a move.
        if let Ok(next) = src.load_next_offset()
            && next > dst.next_offset().0
            && report.offsets_changed_from.is_none()
        {
            report.offsets_changed_from = Some(dst.next_offset().0);
        }
        dst.set_own_logs_unconfirmed(stamp)?;
        dst.flush()?;
    }

    std::fs::rename(db, &old).map_err(io("rename", db))?;
    std::fs::rename(&tmp, db).map_err(io("rename", &tmp))?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    if let Err(e) = std::fs::remove_dir_all(&old) {
        report.problem(format!("cannot remove {}: {e}", old.display()));
    }

    let store = RocksStore::open(db, config)?;
    report.verify = check::verify(&store)?;
    Ok(report)
}

/// Events waiting to be verified and inserted together.
#[derive(Default)]
struct Chunk {
    /// (old offset if it came from an arrival entry, event key in the old store, event)
    items: Vec<(Option<u64>, Vec<u8>, Event)>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, old: Option<u64>, key: Vec<u8>, ev: Event) {
        self.bytes += ev.bytes().len();
        self.items.push((old, key, ev));
    }

    fn full(&self) -> bool {
        self.items.len() >= CHUNK_EVENTS || self.bytes >= CHUNK_BYTES
    }

    /// Verifies the signatures and inserts what verifies. In the first pass (arrival
    /// order) an event that does not link yet is not counted: the second pass (log
    /// order) tries it again.
    fn commit(
        &mut self,
        dst: &RocksStore,
        r: &mut RepairReport,
        bad: &mut HashSet<Vec<u8>>,
        bases: &std::collections::HashMap<Vec<u8>, murmur_core::Seq>,
        final_pass: bool,
    ) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let items = std::mem::take(&mut self.items);
        let events: Vec<Event> = items.iter().map(|(_, _, ev)| ev.clone()).collect();
        let checks = verify_batch(&events);
        let mut good = Vec::with_capacity(events.len());
        let mut good_old = Vec::with_capacity(events.len());
        for ((old, key, ev), check) in items.into_iter().zip(checks) {
            if check.is_ok() {
                good.push(ev);
                good_old.push(old);
            } else {
                r.unverified += 1;
                r.moved(old);
                bad.insert(key);
            }
        }
        // A log that retention pruned starts at its base, not at seq 0: the event at the
        // base its old head record names starts the log in the fresh store. (Any other
        // log missing its first events is cut there, as a hole.)
        let mut outcomes = Vec::with_capacity(good.len());
        let mut from = 0;
        for i in 0..good.len() {
            let ev = &good[i];
            let starts = ev.seq().0 > 0
                && bases.get(&crate::keys::log_key(ev.topic(), &ev.author())) == Some(&ev.seq())
                && !good[from..i]
                    .iter()
                    .any(|e| e.topic() == ev.topic() && e.author() == ev.author())
                && dst.log_state(&ev.author(), ev.topic())?.head.is_none();
            if starts {
                outcomes.extend(dst.insert(&good[from..i], Durability::Buffered)?);
                outcomes.extend(dst.restart_log(&good[i..=i], Durability::Buffered)?);
                from = i + 1;
            }
        }
        outcomes.extend(dst.insert(&good[from..], Durability::Buffered)?);
        for (outcome, old) in outcomes.into_iter().zip(good_old) {
            match outcome {
                Outcome::Appended(off) => {
                    r.kept += 1;
                    if old.is_some_and(|o| o != off.0) {
                        r.moved(old);
                    }
                }
                Outcome::Duplicate => {}
                _ => {
                    r.moved(old);
                    if final_pass {
                        r.unlinked += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The bases of pruned logs, from the old head records that still read.
fn old_bases(src: &RocksStore) -> std::collections::HashMap<Vec<u8>, murmur_core::Seq> {
    let mut out = std::collections::HashMap::new();
    let mut it = src.db().raw_iterator_cf(src.cf(crate::rocks::CF_HEADS));
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if let Ok(rec) = crate::rocks::decode_head(v)
            && rec.base.0 > 0
        {
            out.insert(k.to_vec(), rec.base);
        }
        it.next();
    }
    out
}

/// Copies what verifies from `src` (RocksDB-repaired, unchecked) into the fresh `dst`.
fn salvage(src: &RocksStore, dst: &RocksStore, r: &mut RepairReport) -> Result<()> {
    let bases = old_bases(src);
    let db = src.db();
    let events_cf = src.cf(CF_EVENTS);
    // Event keys whose bytes do not decode or verify: counted once, not retried.
    let mut bad: HashSet<Vec<u8>> = HashSet::new();
    let mut chunk = Chunk::default();

    // Pass 1: in arrival order, so offsets stay what they were up to the first loss.
    let mut it = db.raw_iterator_cf(src.cf(CF_ARRIVALS));
    it.seek_to_first();
    while let (Some(k), Some(ek)) = (it.key(), it.value()) {
        let old = <[u8; 8]>::try_from(k).ok().map(u64::from_be_bytes);
        match db.get_cf(events_cf, ek) {
            Ok(Some(v)) => match Event::decode(Bytes::from(v), MAX_EVENT_BYTES) {
                Ok(ev) => chunk.push(old, ek.to_vec(), ev),
                Err(e) => {
                    if bad.insert(ek.to_vec()) {
                        r.unverified += 1;
                    }
                    r.moved(old);
                    r.problem(format!("arrival {old:?}: the event does not decode: {e}"));
                }
            },
            Ok(None) => {
                r.dangling += 1;
                r.moved(old);
            }
            Err(e) => {
                r.moved(old);
                r.problem(format!("arrival {old:?}: cannot read the event: {e}"));
            }
        }
        if chunk.full() {
            chunk.commit(dst, r, &mut bad, &bases, false)?;
        }
        it.next();
    }
    if let Err(e) = it.status() {
        r.problem(format!("reading the arrival index stopped early: {e}"));
    }
    chunk.commit(dst, r, &mut bad, &bases, false)?;

    // Pass 2: every stored event in log order, for those pass 1 did not reach (no
    // arrival entry: a torn copy, a lost index batch) or could not link yet.
    let mut it = db.raw_iterator_cf(events_cf);
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if !bad.contains(k) {
            match Event::decode(Bytes::copy_from_slice(v), MAX_EVENT_BYTES) {
                Ok(ev) => {
                    if dst.event(&ev.id())?.is_none() {
                        chunk.push(None, k.to_vec(), ev);
                    }
                }
                Err(e) => {
                    bad.insert(k.to_vec());
                    r.unverified += 1;
                    r.problem(format!("an event does not decode: {e}"));
                }
            }
        }
        if chunk.full() {
            chunk.commit(dst, r, &mut bad, &bases, true)?;
        }
        it.next();
    }
    if let Err(e) = it.status() {
        r.problem(format!("reading the events stopped early: {e}"));
    }
    chunk.commit(dst, r, &mut bad, &bases, true)?;

    // Fork proofs are self-proving: keep every one that still proves a fork.
    let mut it = db.raw_iterator_cf(src.cf(CF_FORKS));
    it.seek_to_first();
    while let Some(v) = it.value() {
        match decode_fork(v) {
            Ok(proof) if proof.check().is_ok() => {
                dst.restore_fork(&proof)?;
                r.forks += 1;
            }
            _ => r.bad_forks += 1,
        }
        it.next();
    }
    if let Err(e) = it.status() {
        r.problem(format!("reading the fork proofs stopped early: {e}"));
    }

    // Document snapshots: counted, not copied.
    let mut it = db.raw_iterator_cf(src.cf(crate::docs::CF_DOCS));
    it.seek(b"s");
    while let Some(k) = it.key() {
        if !k.starts_with(b"s") {
            break;
        }
        r.snapshots_dropped += 1;
        it.next();
    }
    if let Err(e) = it.status() {
        r.problem(format!("reading the document index stopped early: {e}"));
    }
    Ok(())
}
