//! The document thread: materialised documents, batched application of stored changes,
//! local changes and their group commit, snapshots, eviction.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use automerge::{Automerge, Change, ReadDoc};
use murmur_core::{AuthorId, Body, DocId, Offset, Payload, ReadStore, Seq, Topic};
use murmur_store::{RocksStore, Snapshot};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use super::ops::{self, Op, OpError};
use super::{
    ChangeDone, Command, DocError, DocState, DocsConfig, DocsStats, Panicked, Point, actor,
    apply_guarded, hex,
};
use crate::ingest::{self, IngestError, PublishItem};
use crate::metrics::Metrics;

/// Estimated memory of a loaded document per byte of its saved (compressed) form.
/// automerge does not report its memory; measured with the docs benchmark
/// (`cargo bench -p murmur-tests --bench docs`): a 100,000-change document of 0.91 MB
/// saved raises the daemon's RSS by ~16 MiB once loaded (18.5×; 20.5× in a bare
/// process on the same allocator). Documents of short, repetitive changes compress best
/// and cost the most per saved byte.
const MEMORY_PER_SAVED_BYTE: u64 = 22;
/// Changes read from the store per apply call.
const APPLY_BATCH: usize = 4096;
/// Local changes gathered into one group commit.
const CHANGE_BATCH: usize = 256;
/// Changes with missing dependencies a document may hold before it is dropped from
/// memory (it reloads when asked for; the changes stay in the store).
const MAX_PENDING: u64 = 10_000;

/// Most documents of one topic a snapshot round covers (a topic with more is not
/// compacted).
const MAX_ROUND_DOCS: usize = 1024;

/// Most snapshot events remembered as checked.
const MAX_VERIFIED: usize = 10_000;

/// Most held changes of a document read to check another node's snapshot of it.
const MAX_VERIFY_CHANGES: usize = 1_000_000;

/// Most snapshots of a document (newest first) a gap is filled from.
const GAP_SNAPSHOTS: usize = 16;

/// Longest a snapshot round waits for local changes on their way to the disk.
const ROUND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most rebuilds of one document while skipping changes that crash automerge.
const MAX_REBUILDS: usize = 64;

/// How a catch-up ended.
enum CatchUp {
    Done,
    /// The document was dropped from memory and must be rebuilt.
    Rebuild,
    /// The document waits for too many changes with missing dependencies.
    Waiting,
}

/// Returns freed heap memory to the OS. Loading and saving a document allocate large
/// temporaries that the allocator would otherwise keep: measured on glibc, a freshly
/// loaded document's footprint halves (14.7 → 7.8 MiB at 20,000 changes).
fn trim() {
    crate::alloc::release_free_memory();
}

/// One document in memory.
struct Loaded {
    doc: Automerge,
    /// Every change of the document stored below this offset is applied.
    through: Offset,
    /// Changes applied since the last snapshot.
    unsaved: u64,
    /// Bytes of the last snapshot (or load) plus the changes applied since.
    size: u64,
    /// Changes applied while dependencies were missing.
    pending: u64,
    /// Local changes made here and not yet read back from the store (skipped then).
    own: std::collections::HashSet<automerge::ChangeHash>,
    /// Other nodes' snapshots (author, seq) applied to fill a hole (see `fill_gap`).
    filled: std::collections::HashSet<(AuthorId, Seq)>,
    last_used: Instant,
}

pub(super) struct Manager {
    store: Arc<RocksStore>,
    ingest: ingest::Handle,
    author: AuthorId,
    config: DocsConfig,
    rt: tokio::runtime::Handle,
    loaded: HashMap<(Topic, DocId), Loaded>,
    cursor: Offset,
    stats: DocsStats,
    /// Our own inbox, for answers that arrive on the runtime.
    inbox: mpsc::Sender<Command>,
    /// Changes that made automerge panic, per document: never applied again.
    poison: HashMap<(Topic, DocId), std::collections::HashSet<automerge::ChangeHash>>,
    /// Documents being rebuilt one change per apply call, to find a poisonous change.
    careful: BTreeSet<(Topic, DocId)>,
    metrics: Metrics,
    /// Other nodes' snapshot events checked already (cleared past [`MAX_VERIFIED`]).
    verified: std::collections::HashSet<murmur_core::EventId>,
    /// Local change batches submitted and not yet durable or failed.
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// Local change batches that failed to write (each sends a `Forget`)…
    failures: Arc<std::sync::atomic::AtomicUsize>,
    /// …and the `Forget`s handled: while they differ, documents hold changes that
    /// were never stored.
    forgets_seen: usize,
}

impl Manager {
    pub(super) fn new(
        store: Arc<RocksStore>,
        ingest: ingest::Handle,
        author: AuthorId,
        config: DocsConfig,
        inbox: mpsc::Sender<Command>,
        metrics: Metrics,
    ) -> Manager {
        Manager {
            cursor: murmur_core::ReadStore::next_offset(&*store),
            store,
            ingest,
            author,
            config,
            rt: tokio::runtime::Handle::current(),
            loaded: HashMap::new(),
            stats: DocsStats::default(),
            inbox,
            poison: HashMap::new(),
            careful: BTreeSet::new(),
            metrics,
            verified: Default::default(),
            inflight: Arc::default(),
            failures: Arc::default(),
            forgets_seen: 0,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next: Option<Command> = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None => match rx.blocking_recv() {
                    Some(c) => c,
                    None => break,
                },
            };
            match cmd {
                Command::Change {
                    topic,
                    doc,
                    ops,
                    message,
                    reply,
                } => {
                    let mut batch = vec![(topic, doc, ops, message, reply)];
                    while batch.len() < CHANGE_BATCH {
                        match rx.try_recv() {
                            Ok(Command::Change {
                                topic,
                                doc,
                                ops,
                                message,
                                reply,
                            }) => batch.push((topic, doc, ops, message, reply)),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.changes(batch);
                }
                Command::Get {
                    topic,
                    doc,
                    path,
                    at,
                    reply,
                } => {
                    let _ = reply.send(self.get(topic, doc, &path, at));
                }
                Command::Stats(reply) => {
                    self.stats.loaded = self.loaded.len();
                    self.stats.memory_bytes = self.memory();
                    let _ = reply.send(self.stats.clone());
                }
                Command::SnapshotRound { topic, reply } => self.snapshot_round(topic, reply),
                Command::Arrived => self.arrived(),
                Command::Tick => self.evict(Instant::now()),
                Command::Forget(keys) => {
                    self.forgets_seen += 1;
                    for k in keys {
                        self.loaded.remove(&k);
                    }
                }
                Command::Stop => break,
            }
            self.metrics.docs_loaded.set(self.loaded.len() as i64);
            let memory = i64::try_from(self.memory()).unwrap_or(i64::MAX);
            self.metrics.docs_memory_bytes.set(memory);
        }
        let keys: Vec<(Topic, DocId)> = self.loaded.keys().cloned().collect();
        for key in keys {
            self.snapshot(&key);
        }
        tracing::debug!("document manager stopped");
    }

    fn memory(&self) -> u64 {
        self.loaded
            .values()
            .map(|l| l.size.saturating_mul(MEMORY_PER_SAVED_BYTE))
            .fold(0, u64::saturating_add)
    }

    /// Loads a document (snapshot + indexed changes after it) if it is not in memory,
    /// and applies any changes stored since.
    fn load(&mut self, key: &(Topic, DocId)) -> Result<&mut Loaded, DocError> {
        for _ in 0..MAX_REBUILDS {
            let opened = !self.loaded.contains_key(key);
            self.open(key)?;
            match self.catch_up(key)? {
                CatchUp::Done => {
                    self.fill_gap(key)?;
                    if opened {
                        trim();
                    }
                    let l = self
                        .loaded
                        .get_mut(key)
                        .ok_or_else(|| DocError::Store("document vanished".into()))?;
                    l.last_used = Instant::now();
                    return Ok(l);
                }
                CatchUp::Rebuild => continue,
                CatchUp::Waiting => {
                    return Err(DocError::Unavailable(format!(
                        "document {} waits for more than {MAX_PENDING} changes whose dependencies have not arrived",
                        key.1
                    )));
                }
            }
        }
        Err(DocError::Unavailable(format!(
            "document {} holds too many changes that automerge cannot apply",
            key.1
        )))
    }

    /// Puts a document in memory from its snapshot, if it is not there.
    fn open(&mut self, key: &(Topic, DocId)) -> Result<(), DocError> {
        if self.loaded.contains_key(key) {
            return Ok(());
        }
        let store_err = |e: murmur_store::StoreError| DocError::Store(e.to_string());
        let (doc, through, size) = match self
            .store
            .load_snapshot(&key.0, &key.1)
            .map_err(store_err)?
        {
            Some(Snapshot { through, bytes }) => {
                let doc = Automerge::load(&bytes)
                    .map_err(|e| DocError::Store(format!("snapshot of {}: {e}", key.1)))?;
                (doc, through, bytes.len() as u64)
            }
            None => (Automerge::new(), Offset(0), 0),
        };
        self.loaded.insert(
            key.clone(),
            Loaded {
                doc: doc.with_actor(actor(&self.author)),
                through,
                unsaved: 0,
                size,
                pending: 0,
                own: Default::default(),
                filled: Default::default(),
                last_used: Instant::now(),
            },
        );
        Ok(())
    }

    /// Applies the changes of a loaded document stored since its `through`, in batches
    /// (one change per call while hunting a change that crashes automerge).
    fn catch_up(&mut self, key: &(Topic, DocId)) -> Result<CatchUp, DocError> {
        let careful = self.careful.contains(key);
        let batch = if careful { 1 } else { APPLY_BATCH };
        loop {
            let Some(l) = self.loaded.get_mut(key) else {
                return Ok(CatchUp::Done);
            };
            let tail = self
                .store
                .doc_changes(&key.0, &key.1, l.through, batch)
                .map_err(|e| DocError::Store(e.to_string()))?;
            let Some((last, _)) = tail.last() else {
                self.careful.remove(key);
                return Ok(CatchUp::Done);
            };
            l.through = Offset(last.0 + 1);
            let n = tail.len();
            let poison = self.poison.get(key);
            let mut changes = Vec::with_capacity(n);
            // Changes by this node's key (replayed from the store) and by others.
            let (mut own, mut others) = (0u64, 0u64);
            for (off, ev) in &tail {
                if let Body::Doc { change, .. } = ev.body() {
                    match Change::from_bytes(change.to_vec()) {
                        Ok(c) if poison.is_some_and(|p| p.contains(&c.hash())) => {}
                        // Made here: already applied and counted.
                        Ok(c) if l.own.remove(&c.hash()) => {}
                        Ok(c) => {
                            l.size += change.len() as u64;
                            changes.push(c);
                            if ev.author() == self.author {
                                own += 1;
                            } else {
                                others += 1;
                            }
                        }
                        // Checked before storing; a bad one here is old or local damage.
                        Err(e) => {
                            tracing::warn!(offset = %off, error = %e, "skipping a change that does not parse")
                        }
                    }
                }
            }
            // Snapshots by other nodes among them: checked against the history held
            // here once the changes are applied (see `verify_snapshots`).
            let snapshots: Vec<(Offset, murmur_core::Event)> = tail
                .iter()
                .filter(|(_, ev)| {
                    ev.author() != self.author && murmur_core::snapshot::is_snapshot(ev)
                })
                .cloned()
                .collect();
            let single = (changes.len() == 1).then(|| changes[0].hash());
            let fresh = changes.len() as u64;
            match apply_guarded(&mut l.doc, changes) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(doc = %key.1, topic = %key.0, error = %e, "a change did not apply")
                }
                Err(Panicked) => {
                    // automerge's state may be half-updated: drop it, and rebuild from
                    // the snapshot; the second time one change at a time, which names
                    // the culprit so it is skipped from then on.
                    self.loaded.remove(key);
                    self.stats.poisoned += u64::from(single.is_some());
                    match single {
                        Some(h) => {
                            tracing::error!(doc = %key.1, topic = %key.0, change = %h, "a change crashed automerge; it is skipped from now on");
                            self.metrics.docs_poisoned.inc();
                            self.poison.entry(key.clone()).or_default().insert(h);
                        }
                        None => {
                            tracing::error!(doc = %key.1, topic = %key.0, "a batch of changes crashed automerge; rebuilding one change at a time");
                            self.careful.insert(key.clone());
                        }
                    }
                    return Ok(CatchUp::Rebuild);
                }
            }
            if !snapshots.is_empty() {
                self.verify_snapshots(key, &snapshots);
            }
            let Some(l) = self.loaded.get_mut(key) else {
                return Ok(CatchUp::Done);
            };
            l.unsaved += fresh;
            self.stats.applied += fresh;
            self.metrics.doc_changes("local", own);
            self.metrics.doc_changes("remote", others);
            if l.doc.get_missing_deps(&[]).is_empty() {
                l.pending = 0;
            } else {
                l.pending += n as u64;
            }
            if l.pending > MAX_PENDING {
                tracing::warn!(doc = %key.1, topic = %key.0, "document waits for missing changes; dropped from memory until asked for");
                self.loaded.remove(key);
                self.stats.evicted += 1;
                return Ok(CatchUp::Waiting);
            }
            if l.unsaved >= self.config.snapshot_every {
                self.snapshot(key);
            }
            if n < batch {
                self.careful.remove(key);
                return Ok(CatchUp::Done);
            }
        }
    }

    /// Writes a document's snapshot if it changed since the last one.
    fn snapshot(&mut self, key: &(Topic, DocId)) {
        let Some(l) = self.loaded.get_mut(key) else {
            return;
        };
        if l.unsaved == 0 {
            return;
        }
        let snap = Snapshot {
            through: l.through,
            bytes: l.doc.save(),
        };
        let size = snap.bytes.len() as u64;
        // Through the store's one writer, like every write.
        match self
            .ingest
            .save_snapshot(key.0.clone(), key.1.clone(), snap)
        {
            Ok(()) => {
                l.unsaved = 0;
                l.size = size;
                self.stats.snapshots += 1;
                trim();
            }
            Err(e) => tracing::error!(doc = %key.1, error = %e, "cannot write a document snapshot"),
        }
    }

    fn evict(&mut self, now: Instant) {
        let idle: Vec<(Topic, DocId)> = self
            .loaded
            .iter()
            .filter(|(_, l)| now.duration_since(l.last_used) >= self.config.idle_evict)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            self.drop_doc(&key);
        }
        while self.memory() > self.config.max_memory_bytes && self.loaded.len() > 1 {
            let Some(oldest) = self
                .loaded
                .iter()
                .min_by_key(|(_, l)| l.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.drop_doc(&oldest);
        }
    }

    fn drop_doc(&mut self, key: &(Topic, DocId)) {
        self.snapshot(key);
        self.loaded.remove(key);
        self.stats.evicted += 1;
    }

    /// Applies newly stored changes to the documents in memory.
    fn arrived(&mut self) {
        let mut touched: BTreeSet<(Topic, DocId)> = BTreeSet::new();
        loop {
            match self.store.doc_arrivals(self.cursor, APPLY_BATCH) {
                Ok((changed, next)) => {
                    let n = changed.len();
                    for (_, topic, doc) in changed {
                        let key = (topic, doc);
                        if self.loaded.contains_key(&key) {
                            touched.insert(key);
                        }
                    }
                    self.cursor = next.max(self.cursor);
                    if n < APPLY_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the document index");
                    return;
                }
            }
        }
        for key in touched {
            // A document dropped for a rebuild is rebuilt when next asked for.
            match self.catch_up(&key) {
                Ok(CatchUp::Done) => {
                    if let Err(e) = self.fill_gap(&key) {
                        tracing::error!(doc = %key.1, error = %e, "cannot fill a document's history from a snapshot");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(doc = %key.1, error = %e, "cannot apply document changes")
                }
            }
        }
        self.evict(Instant::now());
    }

    /// Applies a batch of local operations, one change each, and publishes all the
    /// changes in one group commit.
    ///
    /// Each change is taken from its transaction as it commits (`take_last_commit`, our
    /// patch to automerge 0.12, which otherwise rebuilds a change by walking the whole
    /// document: 2.4 ms at 100,000 changes).
    #[allow(clippy::type_complexity)]
    fn changes(
        &mut self,
        batch: Vec<(
            Topic,
            DocId,
            Vec<Op>,
            Option<String>,
            oneshot::Sender<Result<ChangeDone, DocError>>,
        )>,
    ) {
        // The changes made, in order.
        let mut made = Vec::new();
        let mut oversized: BTreeSet<(Topic, DocId)> = BTreeSet::new();
        // Each document is loaded and caught up once per batch (that reads the store).
        let mut ready: BTreeSet<(Topic, DocId)> = BTreeSet::new();
        for (topic, doc, ops, message, reply) in batch {
            let key = (topic, doc);
            if !ready.contains(&key) {
                if let Err(e) = self.load(&key) {
                    let _ = reply.send(Err(e));
                    continue;
                }
                ready.insert(key.clone());
            }
            match self.local_change(&key, &ops, message) {
                Ok(change) => {
                    if change.raw_bytes().len() > self.config.max_change_bytes {
                        oversized.insert(key.clone());
                    }
                    made.push((key, change, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        let mut items = Vec::new();
        let mut waiting = Vec::new();
        let mut touched: BTreeSet<(Topic, DocId)> = BTreeSet::new();
        for (key, change, reply) in made {
            if oversized.contains(&key) {
                // Later changes in the batch may build on the oversized one: refuse the
                // document's whole batch and reload it from the store.
                let _ = reply.send(Err(DocError::TooLarge(format!(
                    "a change to {} in this batch exceeds the limit of {} bytes",
                    key.1, self.config.max_change_bytes
                ))));
                continue;
            }
            if let Some(l) = self.loaded.get_mut(&key) {
                l.size += change.raw_bytes().len() as u64;
                l.unsaved += 1;
                l.own.insert(change.hash());
            }
            touched.insert(key.clone());
            waiting.push((reply, hex(&change.hash())));
            items.push(PublishItem {
                topic: key.0,
                payload: Payload::Doc {
                    doc: key.1,
                    change: bytes::Bytes::copy_from_slice(change.raw_bytes()),
                },
                key: None,
            });
        }
        for key in &oversized {
            self.loaded.remove(key);
        }
        if items.is_empty() {
            return;
        }
        // Submit without waiting for the disk: the next batch is built while this one
        // is written (the writer keeps submission order). A refusal comes back at once
        // and undoes the in-memory changes before anything builds on them.
        match self.ingest.submit(items) {
            Ok(pending) => {
                let inbox = self.inbox.clone();
                let metrics = self.metrics.clone();
                let (inflight, failures) = (self.inflight.clone(), self.failures.clone());
                inflight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                self.rt.spawn(async move {
                    match pending.await {
                        Ok(Ok(done)) => {
                            // Applied as they were made; counted once durable.
                            metrics.doc_changes("local", done.len() as u64);
                            for ((reply, hash), p) in waiting.into_iter().zip(done) {
                                let _ = reply.send(Ok(ChangeDone {
                                    event: p.event,
                                    offset: p.offset,
                                    hash,
                                }));
                            }
                        }
                        failed => {
                            let e = match failed {
                                Ok(Err(e)) => e,
                                _ => IngestError::ShuttingDown,
                            };
                            // A write failed (disk trouble): reload the documents from
                            // what is stored.
                            failures.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                            let _ = inbox
                                .send(Command::Forget(touched.into_iter().collect()))
                                .await;
                            for (reply, _) in waiting {
                                let _ = reply.send(Err(DocError::Ingest(e.clone())));
                            }
                        }
                    }
                    // After the `Forget` is queued: a round that sees no batch in
                    // flight also sees the failure counted.
                    inflight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                });
            }
            Err(e) => {
                for key in touched {
                    self.loaded.remove(&key);
                }
                for (reply, _) in waiting {
                    let _ = reply.send(Err(DocError::Ingest(e.clone())));
                }
            }
        }
        self.evict(Instant::now());
    }

    /// Publishes a snapshot event of every document of `topic` (see
    /// `murmur_core::snapshot`), covering the topic's version vector as it was before the
    /// documents were caught up (each change it names is indexed with its event, so the
    /// catch-up applies it: the snapshots hold at least that).
    fn snapshot_round(
        &mut self,
        topic: Topic,
        reply: oneshot::Sender<
            Result<(murmur_core::retention::DocCover, Option<murmur_core::Seq>), DocError>,
        >,
    ) {
        let answer = self.publish_snapshots(&topic);
        if let Err(e) = &answer {
            tracing::debug!(%topic, error = %e, "no snapshot round");
        }
        let _ = reply.send(answer);
    }

    /// The round: one document at a time (one save in memory), each first written as
    /// this node's own snapshot (once the changes it covers are pruned, the document
    /// reloads from it), then published and waited for. Refused, publishing nothing
    /// more, if a document waits for changes it depends on, holds a change skipped as
    /// poison, or is too large for one event; and while local changes are still being
    /// written (they are in the documents but may yet fail).
    fn publish_snapshots(
        &mut self,
        topic: &Topic,
    ) -> Result<(murmur_core::retention::DocCover, Option<Seq>), DocError> {
        use murmur_core::snapshot::{CONTENT_TYPE, DocSnapshot, MAX_SAVE_BYTES};
        use std::sync::atomic::Ordering;
        // No local change is made meanwhile (this thread makes them): wait for those
        // on their way to the disk.
        let deadline = Instant::now() + ROUND_WAIT;
        while self.inflight.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return Err(DocError::Unavailable(
                    "local document changes are still being written; a later round compacts".into(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.failures.load(Ordering::Acquire) != self.forgets_seen {
            return Err(DocError::Unavailable(
                "a local document change failed to write; the documents reload first".into(),
            ));
        }
        let store_err = |e: murmur_store::StoreError| DocError::Store(e.to_string());
        let vv = self.store.version_vector(topic).map_err(store_err)?;
        let docs = self
            .store
            .docs_of(topic, MAX_ROUND_DOCS + 1)
            .map_err(store_err)?;
        if docs.len() > MAX_ROUND_DOCS {
            return Err(DocError::TooLarge(format!(
                "{topic} has more than {MAX_ROUND_DOCS} documents: not compacted"
            )));
        }
        let mut cover: murmur_core::retention::DocCover =
            vv.iter().map(|(a, e)| (*a, e.seq)).collect();
        // Every document is checked before any is published: a round publishes all of
        // them or none (a round that failed half-way would publish again every
        // interval, and its snapshots would never be cut).
        let was_loaded: BTreeSet<DocId> = docs
            .iter()
            .filter(|d| self.loaded.contains_key(&(topic.clone(), (*d).clone())))
            .cloned()
            .collect();
        for doc in &docs {
            let key = (topic.clone(), doc.clone());
            let l = self.load(&key)?;
            let unfit = if !l.doc.get_missing_deps(&[]).is_empty() {
                Some(DocError::Unavailable(format!(
                    "document {} waits for changes it depends on: not compacted yet",
                    key.1
                )))
            } else if l.doc.save().len() > MAX_SAVE_BYTES {
                Some(DocError::TooLarge(format!(
                    "document {} saves to more than a snapshot event holds ({MAX_SAVE_BYTES} bytes): not compacted",
                    key.1
                )))
            } else if self.poison.get(&key).is_some_and(|p| !p.is_empty()) {
                // (Checked after the load, which finds them.)
                Some(DocError::Unavailable(format!(
                    "document {} holds a change that crashes automerge: not compacted",
                    key.1
                )))
            } else {
                None
            };
            if !was_loaded.contains(doc) {
                self.loaded.remove(&key);
            }
            if let Some(e) = unfit {
                return Err(e);
            }
        }
        let (mut first, mut last) = (None, None);
        for doc in docs {
            let key = (topic.clone(), doc);
            let l = self.load(&key)?;
            let save = l.doc.save();
            if save.len() > MAX_SAVE_BYTES {
                return Err(DocError::TooLarge(format!(
                    "document {} saves to {} bytes, more than a snapshot event holds ({MAX_SAVE_BYTES}): not compacted",
                    key.1,
                    save.len()
                )));
            }
            let local = Snapshot {
                through: l.through,
                bytes: save.clone(),
            };
            self.ingest
                .save_snapshot(key.0.clone(), key.1.clone(), local)
                .map_err(DocError::Store)?;
            if let Some(l) = self.loaded.get_mut(&key) {
                l.unsaved = 0;
                l.size = save.len() as u64;
            }
            self.stats.snapshots += 1;
            let item = PublishItem {
                topic: topic.clone(),
                payload: Payload::Data {
                    content_type: Some(CONTENT_TYPE.to_owned()),
                    data: bytes::Bytes::from(DocSnapshot::new(key.1.as_str(), &vv, save).encode()),
                },
                key: None,
            };
            let done = self
                .ingest
                .submit(vec![item])
                .map_err(DocError::Ingest)?
                .blocking_recv()
                .map_err(|_| DocError::Ingest(IngestError::ShuttingDown))?
                .map_err(DocError::Ingest)?;
            // One document in memory at a time: one the round loaded goes again (its
            // local snapshot was just written).
            if !was_loaded.contains(&key.1) {
                self.loaded.remove(&key);
            }
            trim();
            for p in done {
                first.get_or_insert(p.event.seq());
                last = Some(p.event.seq());
                self.metrics.doc_snapshots_published.inc();
            }
        }
        // This node's own log is covered up to its first snapshot (see
        // `DocSnapshot::covers_below`): it starts there.
        if let Some(f) = first {
            cover.insert(self.author, Seq(f.0.saturating_sub(1)));
        }
        Ok((cover, last))
    }

    /// Checks other nodes' snapshots of a document against the changes of it held here
    /// (`super::check_snapshot`). A false one is taken out of the topic's snapshots
    /// (it then neither lets a log start over nor fills a gap here), logged and
    /// counted; the event itself stays, as the evidence. At most
    /// [`MAX_VERIFY_CHANGES`] held changes are read (a larger history is checked over
    /// its first ones).
    fn verify_snapshots(&mut self, key: &(Topic, DocId), snaps: &[(Offset, murmur_core::Event)]) {
        use automerge::ReadDoc as _;
        // Each snapshot once (a reload replays the tail that holds it).
        let snaps: Vec<_> = snaps
            .iter()
            .filter(|(_, ev)| !self.verified.contains(&ev.id()))
            .collect();
        if snaps.is_empty() {
            return;
        }
        if self.verified.len() > MAX_VERIFIED {
            self.verified.clear();
        }
        let mut held = Vec::new();
        let mut from = Offset(0);
        while held.len() < MAX_VERIFY_CHANGES {
            let page = match self.store.doc_changes(&key.0, &key.1, from, APPLY_BATCH) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(doc = %key.1, error = %e, "cannot read a document's changes to check a snapshot");
                    return;
                }
            };
            let n = page.len();
            for (off, ev) in page {
                from = Offset(off.0 + 1);
                // Only what this node's document holds: a change it skipped (poison,
                // or refused by automerge) is in no honest snapshot either.
                if let Body::Doc { change, .. } = ev.body()
                    && let Ok(c) = Change::from_bytes(change.to_vec())
                    && self
                        .loaded
                        .get(key)
                        .is_some_and(|l| l.doc.get_change_by_hash(&c.hash()).is_some())
                {
                    held.push((ev.author(), ev.seq(), c));
                }
            }
            if n < APPLY_BATCH {
                break;
            }
        }
        for (off, ev) in snaps {
            self.verified.insert(ev.id());
            let Some(Ok(snap)) = murmur_core::snapshot::DocSnapshot::of(ev) else {
                continue;
            };
            if let Err(why) = super::check_snapshot(&snap, ev, &held) {
                tracing::error!(doc = %key.1, topic = %key.0, by = %ev.author(), event = %ev.id(), reason = %why, "a false document snapshot: it is not used here");
                self.stats.snapshots_refused += 1;
                self.metrics.doc_snapshots_refused.inc();
                if let Err(e) = self.ingest.refuse_snapshot(key.0.clone(), *off) {
                    tracing::warn!(error = %e, "cannot set a false snapshot aside");
                }
            }
        }
        trim();
    }

    /// A document whose history here has a hole takes what it lacks from other nodes'
    /// snapshots of it. A hole: a log of the topic started over here at a peer's base
    /// (`LogState::restarted`): the changes below it were compacted away fleet-wide
    /// and never held here. (A log this node pruned itself is no hole: its own local
    /// snapshot holds what went.) Which of the changes below a base touched this
    /// document cannot be told here, and its copy may look whole without them (a
    /// change that depends on none of them), so the newest snapshot of each other node
    /// is applied, once per load (applying what is already held changes nothing). A
    /// node that holds the whole history of the topic, or cut it only itself, never
    /// takes a snapshot's word for it. See docs/design.md, "Document compaction".
    fn fill_gap(&mut self, key: &(Topic, DocId)) -> Result<(), DocError> {
        if !self.loaded.contains_key(key) {
            return Ok(());
        }
        let store_err = |e: murmur_store::StoreError| DocError::Store(e.to_string());
        let refs = self
            .store
            .snapshot_refs(&key.0, Some(&key.1), GAP_SNAPSHOTS)
            .map_err(store_err)?;
        let Some(l) = self.loaded.get(key) else {
            return Ok(());
        };
        // Newest per other node, not applied to this copy yet.
        let mut by: BTreeSet<AuthorId> = BTreeSet::new();
        let refs: Vec<_> = refs
            .into_iter()
            .filter(|r| r.author != self.author && by.insert(r.author))
            .filter(|r| !l.filled.contains(&(r.author, r.seq)))
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        // Only where a log of the topic started over at a peer's base.
        if !any_log(&self.store, &key.0, |s| s.restarted)? {
            return Ok(());
        }
        for r in refs {
            let Some((ev, snap)) = self.store.snapshot_at(&key.0, &r).map_err(store_err)? else {
                continue;
            };
            let Some(l) = self.loaded.get_mut(key) else {
                return Ok(());
            };
            l.filled.insert((r.author, r.seq));
            let doc = &mut l.doc;
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                doc.load_incremental(&snap.save)
            }));
            match loaded {
                Ok(Ok(n)) => {
                    if n > 0 {
                        l.unsaved += 1;
                        l.size += snap.save.len() as u64;
                        self.stats.snapshots_applied += 1;
                        self.metrics.doc_snapshots_applied.inc();
                        tracing::info!(doc = %key.1, topic = %key.0, by = %ev.author().short(), changes = n, "filled the document's compacted history from a snapshot");
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(doc = %key.1, topic = %key.0, error = %e, "a document snapshot does not load")
                }
                Err(_) => {
                    // automerge's state may be half-updated: rebuild from the store.
                    tracing::error!(doc = %key.1, topic = %key.0, "a document snapshot crashed automerge");
                    self.loaded.remove(key);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Makes one change to a loaded document and returns it.
    fn local_change(
        &mut self,
        key: &(Topic, DocId),
        ops: &[Op],
        message: Option<String>,
    ) -> Result<Change, DocError> {
        if ops.is_empty() {
            return Err(OpError::Empty.into());
        }
        let max_doc = self.config.max_doc_bytes;
        // The batch loaded (and caught up) the document before its first change.
        let l = self
            .loaded
            .get_mut(key)
            .ok_or_else(|| DocError::Store("document vanished".into()))?;
        if l.size > max_doc {
            return Err(DocError::TooLarge(format!(
                "document {} is {} bytes, over the limit of {max_doc}",
                key.1, l.size
            )));
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        l.doc.take_last_commit();
        let result = l.doc.transact_with::<_, _, OpError, _>(
            |_| {
                let o = automerge::transaction::CommitOptions::default().with_time(time);
                match &message {
                    Some(m) => o.with_message(m.clone()),
                    None => o,
                }
            },
            |tx| {
                for op in ops {
                    ops::apply(tx, op)?;
                }
                Ok(())
            },
        );
        match result {
            Ok(_) => l
                .doc
                .take_last_commit()
                .ok_or_else(|| OpError::Empty.into()),
            Err(f) => Err(f.error.into()),
        }
    }

    fn get(
        &mut self,
        topic: Topic,
        doc: DocId,
        path: &str,
        at: Option<Point>,
    ) -> Result<DocState, DocError> {
        let key = (topic, doc);
        match at {
            None => {
                let l = self.load(&key)?;
                if l.doc.get_heads().is_empty() {
                    return Err(DocError::NotFound {
                        topic: key.0,
                        doc: key.1,
                    });
                }
                state(&l.doc, path)
            }
            Some(point) => self.get_at(&key, path, &point),
        }
    }

    /// Rebuilds a document from its changes up to a point (an audit query: it reads the
    /// document's whole history up to there).
    fn get_at(
        &mut self,
        key: &(Topic, DocId),
        path: &str,
        point: &Point,
    ) -> Result<DocState, DocError> {
        // A history compacted here (a log of the topic pruned behind snapshots, or
        // started over at a peer's base) cannot be replayed from its start.
        if any_log(&self.store, &key.0, |s| s.base.0 > 0)? {
            return Err(DocError::NoSuchPoint(format!(
                "the history of {} was compacted here (retention keeps it behind snapshots): a point in time cannot be rebuilt; read the document as it is now",
                key.0
            )));
        }
        let poison = self.poison.get(key).cloned().unwrap_or_default();
        let mut doc = Automerge::new();
        let mut from = Offset(0);
        let mut found = false;
        'outer: loop {
            let page = self
                .store
                .doc_changes(&key.0, &key.1, from, APPLY_BATCH)
                .map_err(|e| DocError::Store(e.to_string()))?;
            let n = page.len();
            let mut changes = Vec::with_capacity(n);
            let mut stop = false;
            for (off, ev) in &page {
                from = Offset(off.0 + 1);
                let include = match point {
                    Point::Offset(o) => off <= o,
                    Point::Event(id) => {
                        if ev.id() == *id {
                            found = true;
                            stop = true;
                        }
                        true
                    }
                    Point::Time(ms) => ev.time().ms <= *ms,
                };
                if matches!(point, Point::Offset(o) if off > o) {
                    stop = true;
                    break;
                }
                if include
                    && let Body::Doc { change, .. } = ev.body()
                    && let Ok(c) = Change::from_bytes(change.to_vec())
                    && !poison.contains(&c.hash())
                {
                    changes.push(c);
                }
                if stop {
                    break;
                }
            }
            match apply_guarded(&mut doc, changes) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "a change did not apply"),
                Err(Panicked) => {
                    // Find and skip the culprit in the live document, then answer.
                    return Err(DocError::Unavailable(format!(
                        "document {} holds a change that crashes automerge; read it once without a point in time to isolate it, then retry",
                        key.1
                    )));
                }
            }
            if stop || n < APPLY_BATCH {
                break 'outer;
            }
        }
        if let Point::Event(id) = point
            && !found
        {
            return Err(DocError::NoSuchPoint(format!(
                "event {id} is not a change of document {} in {}",
                key.1, key.0
            )));
        }
        if doc.get_heads().is_empty() && from == Offset(0) {
            return Err(DocError::NotFound {
                topic: key.0.clone(),
                doc: key.1.clone(),
            });
        }
        state(&doc, path)
    }
}

/// Whether some log of `topic` held here is in a state `pred` picks out.
fn any_log(
    store: &RocksStore,
    topic: &Topic,
    pred: impl Fn(&murmur_core::LogState) -> bool,
) -> Result<bool, DocError> {
    let store_err = |e: murmur_store::StoreError| DocError::Store(e.to_string());
    for (author, _) in store.version_vector(topic).map_err(store_err)?.iter() {
        if pred(&store.log_state(author, topic).map_err(store_err)?) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn state(doc: &Automerge, path: &str) -> Result<DocState, DocError> {
    Ok(DocState {
        json: ops::to_json(doc, path)?,
        heads: doc.get_heads().iter().map(hex).collect(),
        missing: doc.get_missing_deps(&[]).len(),
    })
}
