//! An in-memory [`Store`] for tests and simulation. Same laws as the RocksDB store,
//! nothing persisted; `Durability` has no effect.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::RwLock;

use murmur_core::accept::{self, ForkProof, Head, LogState, Verdict};
use murmur_core::storage::{
    ArrivalPage, Cut, DocArrival, Durability, LogSummary, Outcome, Pruned, ReadStore, Snapshot,
    Store,
};
use murmur_core::vv::{self, VersionVector};
use murmur_core::{AuthorId, DocId, Event, EventId, Offset, Pattern, Seq, Topic};

type LogId = (Topic, AuthorId);

/// One log: the events from `base` on (`events[i]` has seq `base + i`) with their
/// offsets, and the head, which stays when they are pruned.
#[derive(Default)]
struct Log {
    base: Seq,
    events: std::collections::VecDeque<(Offset, Event)>,
    head: Option<Head>,
    pruned_to: Offset,
    bytes: u64,
    pruned_bytes: u64,
    restarted: bool,
}

#[derive(Default)]
struct Inner {
    logs: BTreeMap<LogId, Log>,
    forks: BTreeMap<LogId, ForkProof>,
    by_id: HashMap<EventId, (LogId, Seq)>,
    arrivals: Vec<(LogId, Seq)>,
    /// Document changes: by document then offset, and by offset.
    doc_changes: BTreeMap<(Topic, DocId, Offset), ()>,
    doc_arrivals: BTreeMap<Offset, (Topic, DocId)>,
    snapshots: HashMap<(Topic, DocId), Snapshot>,
}

impl Inner {
    fn state(&self, id: &LogId) -> LogState {
        let log = self.logs.get(id);
        LogState {
            head: log.and_then(|l| l.head),
            frozen_at: self.forks.get(id).map(ForkProof::seq),
            base: log.map_or(Seq(0), |l| l.base),
            pruned_to: log.map_or(Offset(0), |l| l.pruned_to),
            bytes: log.map_or(0, |l| l.bytes),
            pruned_bytes: log.map_or(0, |l| l.pruned_bytes),
            restarted: log.is_some_and(|l| l.restarted),
        }
    }

    fn at(&self, id: &LogId, seq: Seq) -> Option<&Event> {
        let log = self.logs.get(id)?;
        let i = seq.0.checked_sub(log.base.0)?;
        log.events.get(usize::try_from(i).ok()?).map(|(_, e)| e)
    }

    /// The event stored at offset `off`, if it is still there (a truncated log may
    /// hold another event at that seq now, stored at a later offset).
    fn at_offset(&self, off: Offset) -> Option<&Event> {
        let (log, seq) = self.arrivals.get(usize::try_from(off.0).ok()?)?;
        let l = self.logs.get(log)?;
        let i = seq.0.checked_sub(l.base.0)?;
        let (stored_at, ev) = l.events.get(usize::try_from(i).ok()?)?;
        (*stored_at == off).then_some(ev)
    }
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock can only come from a bug in this module; the
        // data is still consistent (every write below is completed or not started).
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn insert(
        &self,
        events: &[Event],
        _durability: Durability,
    ) -> Result<Vec<Outcome>, Infallible> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let id: LogId = (ev.topic().clone(), ev.author());
            let state = inner.state(&id);
            let verdict = accept::classify(&state, ev, |seq| inner.at(&id, seq).cloned());
            out.push(match verdict {
                Verdict::Append => {
                    let offset = Offset(inner.arrivals.len() as u64);
                    inner.by_id.insert(ev.id(), (id.clone(), ev.seq()));
                    inner.arrivals.push((id.clone(), ev.seq()));
                    if let Some((doc, _)) = murmur_core::snapshot::document_of(ev) {
                        let topic = ev.topic().clone();
                        inner
                            .doc_changes
                            .insert((topic.clone(), doc.clone(), offset), ());
                        inner.doc_arrivals.insert(offset, (topic, doc));
                    }
                    let log = inner.logs.entry(id).or_default();
                    log.events.push_back((offset, ev.clone()));
                    log.head = Some(Head::of(ev));
                    log.bytes += ev.bytes().len() as u64;
                    Outcome::Appended(offset)
                }
                Verdict::Duplicate => Outcome::Duplicate,
                Verdict::Fork(proof) => {
                    let seq = proof.seq();
                    if state.frozen_at.is_none_or(|f| seq < f) {
                        inner.forks.insert(id, *proof);
                    }
                    Outcome::Fork(seq)
                }
                Verdict::Gap { expected } => Outcome::Gap { expected },
                Verdict::PrevMismatch { .. } => Outcome::PrevMismatch,
                Verdict::Frozen { .. } => Outcome::Frozen,
                Verdict::Pruned => Outcome::Pruned,
            });
        }
        Ok(out)
    }

    fn restart_log(
        &self,
        events: &[Event],
        durability: Durability,
    ) -> Result<Vec<Outcome>, Infallible> {
        if let Some(first) = events.first() {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let id: LogId = (first.topic().clone(), first.author());
            if accept::restarts(&inner.state(&id), events) {
                let mut top = Offset(0);
                let mut dropped = 0u64;
                let gone: Vec<EventId> = inner
                    .logs
                    .get_mut(&id)
                    .map(|l| {
                        l.events
                            .drain(..)
                            .map(|(o, e)| {
                                top = top.max(Offset(o.0 + 1));
                                dropped += e.bytes().len() as u64;
                                e.id()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for g in gone {
                    inner.by_id.remove(&g);
                }
                let log = inner.logs.entry(id).or_default();
                log.head = None;
                log.bytes = 0;
                log.pruned_bytes += dropped;
                log.restarted = true;
                log.base = first.seq();
                log.pruned_to = log.pruned_to.max(top);
            }
        }
        self.insert(events, durability)
    }

    fn prune(&self, cuts: &[Cut]) -> Result<Pruned, Infallible> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut done = Pruned::default();
        for cut in cuts {
            let log = inner
                .logs
                .entry((cut.topic.clone(), cut.author))
                .or_default();
            // The head event stays (as in the RocksDB store); an empty log is left as is.
            let Some(head) = log.head else { continue };
            let below = cut.below.min(head.seq);
            if below <= log.base {
                continue;
            }
            let n = usize::try_from(below.0 - log.base.0).unwrap_or(usize::MAX);
            let mut top = log.pruned_to;
            let mut freed = 0u64;
            let gone: Vec<EventId> = log
                .events
                .drain(..n.min(log.events.len()))
                .map(|(o, ev)| {
                    done.events += 1;
                    done.bytes += ev.bytes().len() as u64;
                    freed += ev.bytes().len() as u64;
                    top = top.max(Offset(o.0 + 1));
                    ev.id()
                })
                .collect();
            log.pruned_to = top;
            log.base = below;
            log.bytes -= freed;
            log.pruned_bytes += freed;
            for id in gone {
                inner.by_id.remove(&id);
            }
        }
        Ok(done)
    }

    fn truncate(&self, topic: &Topic, author: &AuthorId, from: Seq) -> Result<Pruned, Infallible> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let id: LogId = (topic.clone(), *author);
        let Some(log) = inner.logs.get_mut(&id) else {
            return Ok(Pruned::default());
        };
        // The first held event stays (as in the RocksDB store).
        let from = from.max(Seq(log.base.0 + 1));
        let mut done = Pruned::default();
        let mut gone = Vec::new();
        while let Some((off, ev)) = log.events.back() {
            if ev.seq() < from {
                break;
            }
            done.events += 1;
            done.bytes += ev.bytes().len() as u64;
            gone.push((*off, ev.id()));
            log.events.pop_back();
        }
        if done.events == 0 {
            return Ok(done);
        }
        log.head = log.events.back().map(|(_, ev)| Head::of(ev));
        log.bytes -= done.bytes;
        log.pruned_bytes += done.bytes;
        for (off, ev_id) in gone {
            inner.by_id.remove(&ev_id);
            if let Some((t, doc)) = inner.doc_arrivals.remove(&off) {
                inner.doc_changes.remove(&(t, doc, off));
            }
        }
        Ok(done)
    }

    fn save_snapshot(&self, topic: &Topic, doc: &DocId, snap: &Snapshot) -> Result<(), Infallible> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner
            .snapshots
            .insert((topic.clone(), doc.clone()), snap.clone());
        Ok(())
    }

    fn flush(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl ReadStore for MemoryStore {
    type Error = Infallible;

    fn log_state(&self, author: &AuthorId, topic: &Topic) -> Result<LogState, Infallible> {
        Ok(self.read().state(&(topic.clone(), *author)))
    }

    fn log_range(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, Infallible> {
        let inner = self.read();
        let Some(log) = inner.logs.get(&(topic.clone(), *author)) else {
            return Ok(Vec::new());
        };
        // Below the base: the range starts at the base (what is held).
        let start = usize::try_from(from.0.saturating_sub(log.base.0))
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        Ok(log
            .events
            .iter()
            .skip(start)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn log_range_bytes(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<bytes::Bytes>, Infallible> {
        Ok(self
            .log_range(author, topic, from, limit)?
            .iter()
            .map(|e| e.bytes().clone())
            .collect())
    }

    fn event(&self, id: &EventId) -> Result<Option<Event>, Infallible> {
        let inner = self.read();
        Ok(inner
            .by_id
            .get(id)
            .and_then(|(log, seq)| inner.at(log, *seq))
            .cloned())
    }

    fn arrivals(
        &self,
        from: Offset,
        filter: Option<&Pattern>,
        limit: usize,
        max_scan: usize,
    ) -> Result<ArrivalPage, Infallible> {
        let inner = self.read();
        let start = usize::try_from(from.0)
            .unwrap_or(usize::MAX)
            .min(inner.arrivals.len());
        let mut page = ArrivalPage {
            events: Vec::new(),
            next: from,
        };
        for (i, (log, _)) in inner.arrivals.iter().enumerate().skip(start).take(max_scan) {
            if page.events.len() >= limit {
                break;
            }
            page.next = Offset(i as u64 + 1);
            if filter.is_none_or(|p| p.matches(&log.0))
                && let Some(ev) = inner.at_offset(Offset(i as u64))
            {
                page.events.push((Offset(i as u64), ev.clone()));
            }
        }
        Ok(page)
    }

    fn pruned_to(&self) -> Offset {
        self.read()
            .logs
            .values()
            .map(|l| l.pruned_to)
            .max()
            .unwrap_or(Offset(0))
    }

    fn next_offset(&self) -> Offset {
        Offset(self.read().arrivals.len() as u64)
    }

    fn logs(&self) -> Result<Vec<LogSummary>, Infallible> {
        let inner = self.read();
        Ok(inner
            .logs
            .iter()
            .filter_map(|((topic, author), log)| {
                Some(LogSummary {
                    topic: topic.clone(),
                    author: *author,
                    head: log.head?,
                    frozen_at: inner
                        .forks
                        .get(&(topic.clone(), *author))
                        .map(ForkProof::seq),
                    base: log.base,
                    pruned_to: log.pruned_to,
                    bytes: log.bytes,
                    pruned_bytes: log.pruned_bytes,
                })
            })
            .collect())
    }

    fn version_vector(&self, topic: &Topic) -> Result<VersionVector, Infallible> {
        let inner = self.read();
        let mut vv = VersionVector::new();
        for ((t, author), log) in inner.logs.range((topic.clone(), AuthorId([0; 32]))..) {
            if t != topic {
                break;
            }
            if let Some(head) = log.head {
                vv.insert(
                    *author,
                    vv::Entry {
                        seq: head.seq,
                        id: head.id,
                    },
                );
            }
        }
        Ok(vv)
    }

    fn forks(&self) -> Result<Vec<ForkProof>, Infallible> {
        Ok(self.read().forks.values().cloned().collect())
    }

    fn doc_changes(
        &self,
        topic: &Topic,
        doc: &DocId,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<(Offset, Event)>, Infallible> {
        let inner = self.read();
        let start = (topic.clone(), doc.clone(), from);
        Ok(inner
            .doc_changes
            .range(start..)
            .take_while(|((t, d, _), _)| t == topic && d == doc)
            .take(limit)
            .filter_map(|((_, _, off), _)| Some((*off, inner.at_offset(*off)?.clone())))
            .collect())
    }

    fn doc_last_change(&self, topic: &Topic, doc: &DocId) -> Result<Option<Offset>, Infallible> {
        let inner = self.read();
        let (lo, hi) = (
            (topic.clone(), doc.clone(), Offset(0)),
            (topic.clone(), doc.clone(), Offset(u64::MAX)),
        );
        Ok(inner
            .doc_changes
            .range(lo..=hi)
            .next_back()
            .map(|((_, _, off), _)| *off))
    }

    fn doc_arrivals(
        &self,
        from: Offset,
        limit: usize,
    ) -> Result<(Vec<DocArrival>, Offset), Infallible> {
        let inner = self.read();
        let out: Vec<DocArrival> = inner
            .doc_arrivals
            .range(from..)
            .take(limit)
            .map(|(off, (t, d))| (*off, t.clone(), d.clone()))
            .collect();
        let next = out.last().map_or(from, |(off, _, _)| Offset(off.0 + 1));
        Ok((out, next))
    }

    fn docs_of(&self, topic: &Topic, limit: usize) -> Result<Vec<DocId>, Infallible> {
        let inner = self.read();
        let mut out: Vec<DocId> = Vec::new();
        for (t, d, _) in inner.doc_changes.keys() {
            if out.len() >= limit {
                break;
            }
            if t == topic && out.last() != Some(d) {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    fn load_snapshot(&self, topic: &Topic, doc: &DocId) -> Result<Option<Snapshot>, Infallible> {
        Ok(self
            .read()
            .snapshots
            .get(&(topic.clone(), doc.clone()))
            .cloned())
    }
}
