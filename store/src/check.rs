//! Offline integrity check of a RocksDB store (`murmur verify`): every chain link, every
//! signature, every index entry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use murmur_core::verify::verify_batch;
use murmur_core::{Event, EventId, MAX_EVENT_BYTES, Seq};

use crate::keys::{split_event_key, split_log_key};
use crate::rocks::{RocksStore, StoreError, decode_head, split_by_id};

/// Most problems listed in a report (the count goes on).
pub const MAX_LISTED_PROBLEMS: usize = 1000;
const SIG_CHUNK: usize = 256;

/// The result of [`verify`].
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Logs checked.
    pub logs: u64,
    /// Events checked.
    pub events: u64,
    /// Arrival entries checked.
    pub arrivals: u64,
    /// Fork proofs checked.
    pub forks: u64,
    /// Problems found (the first [`MAX_LISTED_PROBLEMS`]).
    pub problems: Vec<String>,
    /// Total number of problems.
    pub problem_count: u64,
}

impl Report {
    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        }
    }

    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }
}

struct LogCursor {
    key: Vec<u8>,
    name: String,
    next: Seq,
    prev: Option<EventId>,
    pending: Vec<Event>,
    /// Bytes of the events stored (to check the head record's count).
    bytes: u64,
}

/// Re-checks the whole store. Reads every event once, in order; memory stays bounded
/// (one chunk of events plus one log's bookkeeping).
pub fn verify(store: &RocksStore) -> Result<Report, StoreError> {
    let db = store.db();
    let cf = |n: &str| {
        db.cf_handle(n)
            .ok_or_else(|| StoreError::Corrupt(format!("column family {n} missing")))
    };
    let (events_cf, heads_cf, by_id_cf, arrivals_cf, forks_cf) = (
        cf("events")?,
        cf("heads")?,
        cf("by_id")?,
        cf("arrivals")?,
        cf("forks")?,
    );
    let mut r = Report::default();
    let mut cur: Option<LogCursor> = None;
    let mut logs_seen: HashSet<Vec<u8>> = HashSet::new();

    let mut it = db.raw_iterator_cf(events_cf);
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        r.events += 1;
        let Some((lk, seq)) = split_event_key(k) else {
            r.problem(format!("malformed event key {k:02x?}"));
            it.next();
            continue;
        };
        if cur.as_ref().is_none_or(|c| c.key != lk) {
            if let Some(done) = cur.take() {
                finish_log(store, done, &mut r)?;
            }
            let name = match split_log_key(lk) {
                Some((t, a)) => format!("{t} by {}", a.short()),
                None => format!("log {lk:02x?}"),
            };
            logs_seen.insert(lk.to_vec());
            r.logs += 1;
            // A pruned log starts at its base, with no link to check before it.
            let base = match db.get_pinned_cf(heads_cf, lk)? {
                Some(v) => decode_head(&v)?.base,
                None => Seq(0),
            };
            cur = Some(LogCursor {
                key: lk.to_vec(),
                name,
                next: base,
                prev: None,
                pending: Vec::new(),
                bytes: 0,
            });
        }
        let Some(c) = cur.as_mut() else { break };
        c.bytes += v.len() as u64;
        match Event::decode(Bytes::copy_from_slice(v), MAX_EVENT_BYTES) {
            Err(e) => r.problem(format!("{} seq {seq}: does not decode: {e}", c.name)),
            Ok(ev) => {
                if ev.seq() != seq || split_log_key(lk) != Some((ev.topic().clone(), ev.author())) {
                    r.problem(format!("{} seq {seq}: stored under the wrong key", c.name));
                }
                if seq != c.next {
                    r.problem(format!(
                        "{}: expected seq {}, found {seq} (missing events)",
                        c.name, c.next
                    ));
                } else if (c.prev.is_some() || seq == Seq(0)) && ev.prev() != c.prev {
                    r.problem(format!(
                        "{} seq {seq}: prev does not link to seq {}",
                        c.name,
                        seq.0.saturating_sub(1)
                    ));
                }
                match db.get_pinned_cf(by_id_cf, ev.id().0)? {
                    Some(t) if split_by_id(&t).is_ok_and(|(ek, _)| ek == k) => {}
                    Some(_) => {
                        r.problem(format!("{} seq {seq}: id index points elsewhere", c.name))
                    }
                    None => r.problem(format!("{} seq {seq}: missing from the id index", c.name)),
                }
                c.next = Seq(seq.0.saturating_add(1));
                c.prev = Some(ev.id());
                c.pending.push(ev);
                if c.pending.len() >= SIG_CHUNK {
                    check_signatures(c, &mut r);
                }
            }
        }
        it.next();
    }
    it.status()?;
    if let Some(done) = cur.take() {
        finish_log(store, done, &mut r)?;
    }

    // Heads with no events.
    let mut it = db.raw_iterator_cf(heads_cf);
    it.seek_to_first();
    while let Some(k) = it.key() {
        if !logs_seen.contains(k) {
            r.problem(format!("head for a log with no events ({})", describe(k)));
        }
        it.next();
    }
    it.status()?;

    // Every arrival names a stored event whose id entry names this offset back, one
    // arrival per event. Offsets rise; retention leaves holes where it pruned.
    let mut it = db.raw_iterator_cf(arrivals_cf);
    it.seek_to_first();
    let mut last: Option<u64> = None;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        r.arrivals += 1;
        let Ok(b) = <[u8; 8]>::try_from(k) else {
            r.problem(format!("malformed arrival key {k:02x?}"));
            it.next();
            continue;
        };
        let off = u64::from_be_bytes(b);
        if last.is_some_and(|l| off <= l) {
            r.problem(format!("arrival offsets out of order at {off}"));
        }
        last = Some(off);
        match db.get_pinned_cf(events_cf, v)? {
            None => r.problem(format!("arrival {off} names a missing event")),
            Some(bytes) => match db.get_pinned_cf(by_id_cf, EventId::hash(&bytes).0)? {
                Some(t) if split_by_id(&t).is_ok_and(|(ek, o)| ek == v && o == off) => {}
                _ => r.problem(format!(
                    "arrival {off}: the id index does not name this offset"
                )),
            },
        }
        it.next();
    }
    it.status()?;
    if r.arrivals != r.events {
        r.problem(format!(
            "{} events but {} arrival entries",
            r.events, r.arrivals
        ));
    }

    // Fork proofs must prove a fork.
    let mut it = db.raw_iterator_cf(forks_cf);
    it.seek_to_first();
    while it.valid() {
        r.forks += 1;
        it.next();
    }
    it.status()?;
    for proof in murmur_core::ReadStore::forks(store)? {
        if let Err(why) = proof.check() {
            r.problem(format!(
                "fork proof for {} seq {}: {why}",
                proof.topic(),
                proof.seq()
            ));
        }
    }
    Ok(r)
}

fn describe(lk: &[u8]) -> String {
    match split_log_key(lk) {
        Some((t, a)) => format!("{t} by {}", a.short()),
        None => format!("{lk:02x?}"),
    }
}

fn check_signatures(c: &mut LogCursor, r: &mut Report) {
    for (ev, res) in c.pending.iter().zip(verify_batch(&c.pending)) {
        if let Err(e) = res {
            r.problem(format!("{} seq {}: {e}", c.name, ev.seq()));
        }
    }
    c.pending.clear();
}

fn finish_log(store: &RocksStore, mut c: LogCursor, r: &mut Report) -> Result<(), StoreError> {
    check_signatures(&mut c, r);
    let heads = store
        .db()
        .cf_handle("heads")
        .ok_or_else(|| StoreError::Corrupt("heads missing".into()))?;
    match store.db().get_pinned_cf(heads, &c.key)? {
        None => r.problem(format!("{}: no head record", c.name)),
        Some(v) => {
            let rec = decode_head(&v)?;
            let h = rec.head;
            if Some(h.id) != c.prev || h.seq.next() != Some(c.next) {
                r.problem(format!(
                    "{}: head says seq {}, log ends at seq {}",
                    c.name,
                    h.seq,
                    c.next.0.saturating_sub(1)
                ));
            }
            if rec.bytes != c.bytes {
                r.problem(format!(
                    "{}: head record counts {} bytes held, the log holds {}",
                    c.name, rec.bytes, c.bytes
                ));
            }
        }
    }
    Ok(())
}

/// What [`scan`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Events stored.
    pub events: u64,
    /// Entries of the id index.
    pub ids: u64,
    /// Arrival entries (local offsets).
    pub arrivals: u64,
    /// Events the heads account for (the sum of head seq + 1 over every log).
    pub in_heads: u64,
}

impl Scan {
    /// What is inconsistent, if anything: the four counts must agree.
    pub fn problem(&self) -> Option<String> {
        let Scan {
            events,
            ids,
            arrivals,
            in_heads,
        } = self;
        (events != ids || events != arrivals || events != in_heads).then(|| {
            format!(
                "the store is inconsistent: {events} events, {ids} id index entries, \
                 {arrivals} arrival entries, {in_heads} events by the log heads \
                 (a torn copy of the data directory, or damage)"
            )
        })
    }
}

/// Counts every entry of the event, id, arrival and head families: cheap next to
/// [`verify`] (no signature, no decoding, one pass per family, not cached), yet it
/// reads every block, so a damaged SST fails it ([`StoreError::Damaged`] names the
/// file), and a store whose indexes lost entries (a torn copy) shows as counts that
/// disagree. The daemon runs it in the background after every start.
///
/// Setting `cancel` ends it early with `Ok(None)`.
pub fn scan(store: &RocksStore, cancel: &AtomicBool) -> Result<Option<Scan>, StoreError> {
    // One snapshot for every family: retention pruning while the scan runs (its first
    // pass comes right after start) would otherwise make the counts disagree.
    let snap = store.db().snapshot();
    let mut in_heads = 0u64;
    let heads = scan_family(store, &snap, "heads", cancel, |v| {
        let rec = decode_head(v)?;
        in_heads += rec.head.seq.0 + 1 - rec.base.0;
        Ok(())
    })?;
    let family = |name| scan_family(store, &snap, name, cancel, |_| Ok(()));
    let (Some(_), Some(events), Some(ids), Some(arrivals)) = (
        heads,
        family("events")?,
        family("by_id")?,
        family("arrivals")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Scan {
        events,
        ids,
        arrivals,
        in_heads,
    }))
}

/// Reads every entry of one column family, checksums verified, bypassing the block
/// cache; calls `each` with every value and returns the count.
fn scan_family(
    store: &RocksStore,
    snap: &rocksdb::Snapshot<'_>,
    name: &str,
    cancel: &AtomicBool,
    mut each: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<Option<u64>, StoreError> {
    let db = store.db();
    let cf = db
        .cf_handle(name)
        .ok_or_else(|| StoreError::Corrupt(format!("column family {name} missing")))?;
    let mut ro = rocksdb::ReadOptions::default();
    ro.fill_cache(false);
    ro.set_verify_checksums(true);
    ro.set_snapshot(snap);
    let mut it = db.raw_iterator_cf_opt(cf, ro);
    it.seek_to_first();
    let mut n = 0u64;
    while let Some(v) = it.value() {
        each(v)?;
        n += 1;
        if n.is_multiple_of(4096) && cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        it.next();
    }
    it.status()?;
    Ok(Some(n))
}
