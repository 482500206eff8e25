//! The store writer: the one thread that writes RocksDB, and the ingest pipeline for
//! local publishing.
//!
//! Every write of the node goes through it: local publishes, what replication stores
//! (gossiped runs, synced windows, held events, fork proofs: the replication machine
//! returns them as values and its driver hands them here with [`Handle::write`]), and
//! document snapshots ([`Handle::save_snapshot`]); document indexes are written with
//! their events. Readers (API handlers, followers, the replicator's reads, the document
//! thread) share the store for reading only.
//!
//! The writer owns the node's own logs: it assigns seq and prev, signs, and writes. API
//! handlers hold a cloneable [`Handle`] and put jobs on a bounded queue; the writer
//! drains everything that is waiting (up to `max_commit_events`), replicated writes
//! included, into **one** `Store::insert` call, i.e. one RocksDB WriteBatch and one WAL
//! sync, and only then answers each job. So a publish is acknowledged exactly when it is
//! durable, and many concurrent writes share one fsync (group commit).
//!
//! Overload policy: the queue is bounded in requests and in payload bytes; when either is
//! full, [`Handle::publish`] fails at once with [`IngestError::QueueFull`] and the API
//! answers 503 with Retry-After. Memory never grows with offered load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use murmur_core::{
    DocId, Draft, Durability, Event, Head, Keypair, Offset, Outcome, Payload, ReadStore, Seq,
    Snapshot, Store, Timestamp, Topic,
};
use murmur_store::RocksStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::clock::NodeClock;
use crate::metrics::Metrics;

/// Most own-log heads cached by the writer before the cache is reset (it refills from
/// the store).
const HEAD_CACHE_MAX: usize = 100_000;

/// One event to publish: a validated topic and body.
#[derive(Debug, Clone)]
pub struct PublishItem {
    /// The topic.
    pub topic: Topic,
    /// The body.
    pub payload: Payload,
    /// An idempotency key: a publish with a key already used within the window is
    /// answered with what the first one published, and stores nothing.
    pub key: Option<String>,
}

impl PublishItem {
    /// What a retry must repeat to be the same request: topic, content type, body.
    fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("murmur idempotent publish v1");
        h.update(self.topic.as_str().as_bytes());
        h.update(&[0]);
        match &self.payload {
            Payload::Data { content_type, data } => {
                h.update(&[0]);
                h.update(content_type.as_deref().unwrap_or("").as_bytes());
                h.update(&[0]);
                h.update(data);
            }
            Payload::Doc { doc, change } => {
                h.update(&[1]);
                h.update(doc.as_str().as_bytes());
                h.update(&[0]);
                h.update(change);
            }
        }
        *h.finalize().as_bytes()
    }

    fn cost(&self) -> usize {
        let body = match &self.payload {
            Payload::Data { data, .. } => data.len(),
            Payload::Doc { change, .. } => change.len(),
        };
        body + self.topic.as_str().len() + 160
    }
}

/// Most events of a commit handed to live followers with its announcement; a larger
/// commit is announced by offset only, and followers read it from the store.
const ANNOUNCE_EVENTS: usize = 256;
/// Most encoded bytes of a commit handed to live followers (a follower renders them in
/// one chunk: about a page).
const ANNOUNCE_BYTES: usize = 1 << 20;

/// What the writer announces after each commit (on a watch channel: a follower sees the
/// newest commit, never a queue of them).
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// One past the newest stored offset.
    pub next: Offset,
    /// The events this commit appended, with their offsets, contiguous and ending at
    /// `next`; empty when the commit was larger than [`ANNOUNCE_EVENTS`] or [`ANNOUNCE_BYTES`]. A follower
    /// whose cursor is at the first of them takes them from here instead of reading the
    /// store; one that is behind reads the store, as always.
    pub events: Arc<[(Offset, Event)]>,
}

impl Committed {
    /// The announcement at start: nothing appended yet.
    pub fn at(next: Offset) -> Self {
        Committed {
            next,
            events: Arc::from(Vec::new()),
        }
    }
}

/// A stored, durable local event.
#[derive(Debug, Clone)]
pub struct Published {
    /// The event.
    pub event: Event,
    /// Its local offset.
    pub offset: Offset,
}

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The queue is full: retry later.
    #[error("the ingest queue is full; retry shortly")]
    QueueFull,
    /// The request is larger than the whole queue could ever hold.
    #[error("request of {0} bytes exceeds the ingest queue size")]
    TooLarge(usize),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Writing failed; nothing of the request was stored.
    #[error("storage error: {0}")]
    Store(String),
    /// The disk is full; nothing of the request was stored.
    #[error("{0}")]
    DiskFull(String),
    /// The node was repaired and may have lost the tail of its own logs: it signs
    /// nothing until a sync round with a peer has brought them back (see [`Hold`]).
    #[error(
        "this node was repaired and is fetching its own logs back from its peers; publishing resumes once a sync round has confirmed them (murmur status)"
    )]
    OwnLogsUnconfirmed,
    /// Idempotency keys that cannot be honoured: a batch mixing keys already used with
    /// new ones, a key twice in one request, or a key whose event retention pruned.
    #[error("{0}")]
    Idempotency(String),
}

/// Publishing held after `murmur repair`. A repaired node may have lost the tail of its
/// own logs, and peers may hold it: signing a new event at a seq it already published
/// would fork its own log (peers would freeze it). So the writer refuses every publish
/// while the hold is on, and the replicator releases it once a sync round on every
/// topic the node holds has finished with a peer (which brings the lost tail back, if
/// any peer has it). Cloneable; all clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct Hold(Arc<AtomicBool>);

impl Hold {
    /// A hold, on or off.
    pub fn new(on: bool) -> Self {
        Hold(Arc::new(AtomicBool::new(on)))
    }

    /// Whether publishing is held.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Lets publishing resume. Whoever releases it has moved the clock past the node's
    /// own newest event first.
    pub fn release(&self) {
        self.0.store(false, Ordering::Release);
    }
}

enum Command {
    Job(Job),
    /// Verified events from replication, written as they are (acceptance rules apply).
    Write(Write),
    /// Record that the node's own logs are confirmed after a repair.
    ConfirmOwnLogs(oneshot::Sender<Result<(), String>>),
    /// A document snapshot.
    Snapshot {
        topic: Topic,
        doc: DocId,
        snap: Snapshot,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A document snapshot event found false: out of its topic's snapshots.
    RefuseSnapshot {
        topic: Topic,
        offset: Offset,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Retention's prefix cuts (read and prepared beforehand), after what was queued
    /// before them.
    Prune {
        cuts: murmur_store::PreparedPrune,
        reply: oneshot::Sender<Result<murmur_core::Pruned, String>>,
    },
    /// What revoked keys wrote after their revocation, found and taken back, after
    /// what was queued before (see [`Handle::take_back`]).
    TakeBack {
        fleet: crate::fleet::Guard,
        reply: oneshot::Sender<Result<TakenBack, String>>,
    },
    /// Liveness: answered when the writer reaches it (after what was queued before).
    Ping(oneshot::Sender<Result<(), String>>),
    /// Finish what is queued, refuse anything later, exit.
    Stop,
}

struct Write {
    events: Vec<Event>,
    durability: Durability,
    /// Start the log over at the first event (`Store::restart_log`), alone in its commit.
    restart: bool,
    reply: oneshot::Sender<Written>,
}

/// The result of a [`Handle::write`]: the store's outcome per event, or why nothing
/// was written.
pub type Written = Result<Vec<Outcome>, String>;

/// What [`Handle::take_back`] took back, per log: its topic, author, the first seq
/// taken back, and what went.
pub type TakenBack = Vec<(
    Topic,
    murmur_core::AuthorId,
    murmur_core::Seq,
    murmur_core::Pruned,
)>;

struct Job {
    items: Vec<PublishItem>,
    reply: oneshot::Sender<Result<Vec<Published>, IngestError>>,
    enqueued: Instant,
    _permit: OwnedSemaphorePermit,
}

/// The answer to a submitted publish.
pub type Pending = oneshot::Receiver<Result<Vec<Published>, IngestError>>;

/// The cloneable side of the ingest pipeline.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    hold: Hold,
    bytes: Arc<Semaphore>,
    bytes_total: usize,
    metrics: Metrics,
}

impl Handle {
    /// Publishes `items` atomically (all or none) and returns them once durable.
    ///
    /// Not cancel-safe in the sense that matters: if the caller goes away after the job
    /// was queued, the events are still written, just not acknowledged.
    pub async fn publish(&self, items: Vec<PublishItem>) -> Result<Vec<Published>, IngestError> {
        self.submit(items)?
            .await
            .map_err(|_| IngestError::ShuttingDown)?
    }

    /// Queues `items` (atomically, all or none) without waiting: refusals (queue full,
    /// too large, shutting down) come back at once; the receiver answers once the
    /// events are durable or the write failed. Jobs are written in submission order.
    pub fn submit(&self, items: Vec<PublishItem>) -> Result<Pending, IngestError> {
        let cost: usize = items.iter().map(PublishItem::cost).sum();
        if cost > self.bytes_total {
            return Err(IngestError::TooLarge(cost));
        }
        let permits = u32::try_from(cost).map_err(|_| IngestError::TooLarge(cost))?;
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| IngestError::QueueFull)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            items,
            reply,
            enqueued: Instant::now(),
            _permit: permit,
        };
        self.tx.try_send(Command::Job(job)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IngestError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
        })?;
        self.metrics
            .ingest_queue
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
        Ok(rx)
    }

    /// Writes verified events from replication, group-committed with whatever else is
    /// queued; waits for queue room (the caller bounds its writes in flight). The
    /// receiver answers with the store's outcomes once the write is durable as asked.
    pub async fn write(
        &self,
        events: Vec<Event>,
        durability: Durability,
        restart: bool,
    ) -> Result<oneshot::Receiver<Written>, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Write(Write {
                events,
                durability,
                restart,
                reply,
            }))
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        Ok(rx)
    }

    /// Stores a document snapshot (replacing the previous one), durably. Blocks: call it
    /// from a thread, not a task.
    pub fn save_snapshot(&self, topic: Topic, doc: DocId, snap: Snapshot) -> Result<(), String> {
        self.ask_blocking(|reply| Command::Snapshot {
            topic,
            doc,
            snap,
            reply,
        })
    }

    /// Sends the writer `make(reply)` and waits for its answer, blocking the thread.
    fn ask_blocking(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(make(reply))
            .map_err(|_| IngestError::ShuttingDown.to_string())?;
        rx.blocking_recv()
            .map_err(|_| IngestError::ShuttingDown.to_string())?
    }

    /// Takes a snapshot event found false out of its topic's snapshots, durably.
    /// Blocks: call it from a thread, not a task.
    pub fn refuse_snapshot(&self, topic: Topic, offset: Offset) -> Result<(), String> {
        self.ask_blocking(|reply| Command::RefuseSnapshot {
            topic,
            offset,
            reply,
        })
    }

    /// Sends the command `make` builds, waiting for room, and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| IngestError::ShuttingDown.to_string())?;
        rx.await
            .map_err(|_| IngestError::ShuttingDown.to_string())?
    }

    /// Writes retention's prepared cuts (`RocksStore::prepare_prune`), in queue order.
    pub async fn prune(
        &self,
        cuts: murmur_store::PreparedPrune,
    ) -> Result<murmur_core::Pruned, String> {
        self.ask(|reply| Command::Prune { cuts, reply }).await
    }

    /// Finds what revoked keys wrote after their revocation (`Guard::take_back_plan`)
    /// and takes it back (`Store::truncate`), on the writer, after everything queued
    /// before: writes checked under the policy before the revocation land first, and
    /// are found. Per log: its topic, author, the first seq taken back, and what went.
    pub async fn take_back(&self, fleet: crate::fleet::Guard) -> Result<TakenBack, String> {
        self.ask(|reply| Command::TakeBack { fleet, reply }).await
    }

    /// Answers once the writer has taken everything queued before this call off its
    /// queue: the service watchdog's sign that writes are moving.
    pub async fn ping(&self) -> Result<(), String> {
        self.ask(Command::Ping).await
    }

    /// Records durably that the node's own logs are confirmed after a repair.
    pub async fn confirm_own_logs(&self) -> Result<(), String> {
        self.ask(Command::ConfirmOwnLogs).await
    }

    /// Stops the writer: jobs already queued are committed and answered, later ones
    /// fail with [`IngestError::ShuttingDown`]. Waits for queue space, never for the
    /// other handles to be dropped (an open connection may keep one alive).
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// Whether publishing is held after a repair (see [`Hold`]).
    pub fn held(&self) -> bool {
        self.hold.is_on()
    }

    /// Requests waiting in the queue, and its capacity.
    pub fn queue(&self) -> (usize, usize) {
        (
            self.tx.max_capacity() - self.tx.capacity(),
            self.tx.max_capacity(),
        )
    }
}

/// Set while the store refuses writes for a reason outside the data (a full disk, no
/// descriptors left: [`murmur_store::StoreError::is_environmental`]), cleared by the
/// next commit that succeeds or by the store watchdog's probe write. The node's store
/// watchdog reads it; while the disk is full the replicator pulls nothing and status
/// and metrics say so. Cloneable; all clones share one state.
#[derive(Debug, Clone, Default)]
pub struct WriteFailing(Arc<std::sync::atomic::AtomicU8>);

const WRITES_OK: u8 = 0;
const WRITES_FAILING: u8 = 1;
const DISK_FULL: u8 = 2;

impl WriteFailing {
    /// True while the last commit failed for an environmental reason.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire) != WRITES_OK
    }

    /// True while the last commit failed because the disk is full.
    pub fn disk_full(&self) -> bool {
        self.0.load(Ordering::Acquire) == DISK_FULL
    }

    /// After a commit: `None` it worked, else its error.
    fn record(&self, e: Option<&murmur_store::StoreError>) {
        let state = match e {
            None => WRITES_OK,
            Some(murmur_store::StoreError::NoSpace(_)) => DISK_FULL,
            Some(e) if e.is_environmental() => WRITES_FAILING,
            Some(_) => WRITES_OK,
        };
        self.0.store(state, Ordering::Release);
    }

    /// The store takes writes again (the watchdog's probe write worked).
    pub fn clear(&self) {
        self.0.store(WRITES_OK, Ordering::Release);
    }
}

/// Settings of the writer thread.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Queue length in requests.
    pub queue_requests: usize,
    /// Queue size in payload bytes.
    pub queue_bytes: usize,
    /// Most events per commit.
    pub max_commit_events: usize,
    /// Durability of each commit.
    pub durability: Durability,
    /// Publishing held after a repair.
    pub hold: Hold,
    /// Raised while commits fail for environmental reasons.
    pub failing: WriteFailing,
    /// How long an idempotency key answers for what it published.
    pub idempotency_window: Duration,
}

/// How often the writer deletes idempotency keys older than the window, and how many
/// it reads per look.
const KEYS_PRUNE_EVERY: Duration = Duration::from_secs(10);
const KEYS_PRUNE_BUDGET: usize = 50_000;

struct Writer {
    store: Arc<RocksStore>,
    key: Keypair,
    clock: Arc<NodeClock>,
    heads: HashMap<Topic, Head>,
    durability: Durability,
    hold: Hold,
    failing: WriteFailing,
    max_commit: usize,
    metrics: Metrics,
    notify: Arc<watch::Sender<Committed>>,
    published: Option<crate::replicate::Handle>,
    /// Policy entries are applied as they become durable.
    fleet: Option<crate::fleet::Guard>,
    idempotency_window: Duration,
    /// When old idempotency keys were last looked at, and where the next look goes on.
    keys_pruned: Instant,
    keys_cursor: Option<String>,
}

/// The writer's inbox, made before it starts (the writer and the replicator each need
/// the other's handle).
pub struct Inbox(mpsc::Receiver<Command>);

/// The writer's handle and inbox.
pub fn channel(config: &WriterConfig, metrics: Metrics) -> (Handle, Inbox) {
    let (tx, rx) = mpsc::channel(config.queue_requests);
    let handle = Handle {
        tx,
        hold: config.hold.clone(),
        bytes: Arc::new(Semaphore::new(config.queue_bytes)),
        bytes_total: config.queue_bytes,
        metrics,
    };
    (handle, Inbox(rx))
}

/// Starts the writer thread on `inbox` (see [`channel`]). It runs until every
/// [`Handle`] is dropped or one stops it, finishing the jobs already queued.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    inbox: Inbox,
    store: Arc<RocksStore>,
    key: Keypair,
    clock: Arc<NodeClock>,
    config: &WriterConfig,
    metrics: Metrics,
    notify: Arc<watch::Sender<Committed>>,
    published: Option<crate::replicate::Handle>,
    fleet: Option<crate::fleet::Guard>,
) -> std::io::Result<JoinHandle<()>> {
    let writer = Writer {
        store,
        key,
        clock,
        heads: HashMap::new(),
        durability: config.durability,
        hold: config.hold.clone(),
        failing: config.failing.clone(),
        max_commit: config.max_commit_events,
        metrics,
        notify,
        published,
        fleet,
        idempotency_window: config.idempotency_window,
        keys_pruned: Instant::now(),
        keys_cursor: None,
    };
    std::thread::Builder::new()
        .name("murmur-writer".into())
        .spawn(move || writer.run(inbox.0))
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            // Everything waiting, up to max_commit events, goes into one commit.
            let mut batch = Batch::default();
            let mut n = 0;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Job(job) if job.items.iter().any(|i| i.key.is_some()) => {
                        // A key also in this batch: write the batch first, so the
                        // second use finds the first in the store.
                        let in_batch = job.items.iter().filter_map(|i| i.key.as_ref()).any(|k| {
                            batch
                                .jobs
                                .iter()
                                .flat_map(|j| &j.items)
                                .any(|i| i.key.as_ref() == Some(k))
                        });
                        if in_batch {
                            self.commit(std::mem::take(&mut batch));
                            n = 0;
                        }
                        match self.keyed(&job) {
                            Ok(None) => {
                                n += job.items.len();
                                batch.jobs.push(job);
                            }
                            Ok(Some(first)) => {
                                self.metrics.idempotent_repeats.inc_by(first.len() as u64);
                                let _ = job.reply.send(Ok(first));
                            }
                            Err(e) => {
                                let _ = job.reply.send(Err(e));
                            }
                        }
                    }
                    Command::Job(job) => {
                        n += job.items.len();
                        batch.jobs.push(job);
                    }
                    Command::Write(w) if w.restart => {
                        self.commit(std::mem::take(&mut batch));
                        n = 0;
                        self.commit(Batch {
                            writes: vec![w],
                            restart: true,
                            ..Batch::default()
                        });
                    }
                    Command::Write(w) => {
                        n += w.events.len();
                        batch.writes.push(w);
                    }
                    // In queue order: what was queued before it is written first.
                    Command::Snapshot {
                        topic,
                        doc,
                        snap,
                        reply,
                    } => {
                        self.commit(std::mem::take(&mut batch));
                        n = 0;
                        let saved = self.store.save_snapshot(&topic, &doc, &snap);
                        let _ = reply.send(saved.map_err(|e| e.to_string()));
                    }
                    Command::RefuseSnapshot {
                        topic,
                        offset,
                        reply,
                    } => {
                        self.commit(std::mem::take(&mut batch));
                        n = 0;
                        let done = self.store.refuse_snapshot_event(&topic, offset);
                        let _ = reply.send(done.map_err(|e| e.to_string()));
                    }
                    Command::ConfirmOwnLogs(reply) => {
                        self.commit(std::mem::take(&mut batch));
                        n = 0;
                        let done = self.store.confirm_own_logs();
                        let _ = reply.send(done.map_err(|e| e.to_string()));
                    }
                    Command::Prune { cuts, reply } => {
                        self.commit(std::mem::take(&mut batch));
                        n = 0;
                        let done = self.store.commit_prune(cuts);
                        let _ = reply.send(done.map_err(|e| e.to_string()));
                    }
                    Command::TakeBack { fleet, reply } => {
                        self.commit(std::mem::take(&mut batch));
                        n = 0;
                        let _ = reply.send(self.take_back(&fleet));
                    }
                    Command::Ping(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                    Command::Stop => {
                        stopping = true;
                        break;
                    }
                }
                if n < self.max_commit {
                    next = rx.try_recv().ok();
                }
            }
            self.metrics.ingest_queue.set(rx.len() as i64);
            self.commit(batch);
            if self.keys_pruned.elapsed() >= KEYS_PRUNE_EVERY {
                self.keys_pruned = Instant::now();
                let window = u64::try_from(self.idempotency_window.as_millis()).unwrap_or(u64::MAX);
                let before = self.clock.wall_ms().saturating_sub(window);
                let from = self.keys_cursor.take();
                match self
                    .store
                    .prune_idempotency(before, KEYS_PRUNE_BUDGET, from.as_deref())
                {
                    Ok((n, next)) => {
                        self.keys_cursor = next;
                        if n > 0 {
                            tracing::debug!(keys = n, "old idempotency keys deleted");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot delete old idempotency keys; the next look retries")
                    }
                }
            }
        }
        // Refuse new work, then finish what was accepted before the stop.
        rx.close();
        let mut rest = Batch::default();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                // A keyed job is not checked against its key here: refused, its
                // retry after the restart is.
                Command::Job(job) if job.items.iter().any(|i| i.key.is_some()) => {
                    let _ = job.reply.send(Err(IngestError::ShuttingDown));
                }
                Command::Job(job) => rest.jobs.push(job),
                Command::Write(w) => rest.writes.push(w),
                Command::Snapshot { reply, .. }
                | Command::RefuseSnapshot { reply, .. }
                | Command::ConfirmOwnLogs(reply)
                | Command::Ping(reply) => {
                    let _ = reply.send(Err(IngestError::ShuttingDown.to_string()));
                }
                Command::Prune { reply, .. } => {
                    let _ = reply.send(Err(IngestError::ShuttingDown.to_string()));
                }
                Command::TakeBack { reply, .. } => {
                    let _ = reply.send(Err(IngestError::ShuttingDown.to_string()));
                }
                Command::Stop => {}
            }
        }
        self.commit(rest);
        tracing::debug!("writer stopped");
    }

    fn head(&mut self, topic: &Topic) -> Result<Option<Head>, String> {
        if let Some(h) = self.heads.get(topic) {
            return Ok(Some(*h));
        }
        let state = self
            .store
            .log_state(&self.key.author(), topic)
            .map_err(|e| e.to_string())?;
        Ok(state.head)
    }

    fn sign_all(&mut self, jobs: &[Job], n: usize) -> Result<Vec<Event>, String> {
        let times = self.clock.ticks(n);
        let mut events = Vec::with_capacity(n);
        for (item, time) in jobs.iter().flat_map(|j| &j.items).zip(times) {
            let head = self.head(&item.topic)?;
            let draft = Draft {
                topic: item.topic.clone(),
                seq: head.map_or(Seq(0), |h| Seq(h.seq.0 + 1)),
                prev: head.map(|h| h.id),
                time,
                body: item.payload.clone(),
            };
            let ev = Event::sign(&draft, &self.key).map_err(|e| e.to_string())?;
            if self.heads.len() >= HEAD_CACHE_MAX {
                self.heads.clear();
            }
            self.heads.insert(item.topic.clone(), Head::of(&ev));
            events.push(ev);
        }
        Ok(events)
    }

    /// A job with idempotency keys: `None` when it is new (sign and write it), or what
    /// its keys published before, within the window (every item keyed, every key
    /// known): the same events, nothing stored. A job mixing known and new keys, or
    /// with a key twice, is refused.
    fn keyed(&self, job: &Job) -> Result<Option<Vec<Published>>, IngestError> {
        let keys: Vec<&String> = job.items.iter().filter_map(|i| i.key.as_ref()).collect();
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        if let Some(k) = keys.iter().find(|k| !seen.insert(**k)) {
            return Err(IngestError::Idempotency(format!(
                "idempotency key {k:?} is given twice in one request"
            )));
        }
        let now = self.clock.wall_ms();
        let window = u64::try_from(self.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let mut first = Vec::with_capacity(keys.len());
        for item in &job.items {
            let Some(k) = &item.key else { continue };
            match self.store.idempotency(k) {
                Err(e) => return Err(IngestError::Store(e.to_string())),
                Ok(Some(found)) if now.saturating_sub(found.at_ms) <= window => {
                    if found.request != item.digest() {
                        return Err(IngestError::Idempotency(format!(
                            "idempotency key {k:?} was used for another request (another topic, content type or data) within the window"
                        )));
                    }
                    first.push((k, found));
                }
                Ok(_) => {}
            }
        }
        if first.is_empty() {
            return Ok(None);
        }
        if first.len() < job.items.len() {
            return Err(IngestError::Idempotency(format!(
                "this request mixes idempotency keys already used ({} of them, e.g. {:?}) with new ones or unkeyed events; a retry must repeat the first request whole",
                first.len(),
                first[0].0
            )));
        }
        first
            .into_iter()
            .map(|(k, f)| match f.event {
                Some((offset, event)) => Ok(Published { event, offset }),
                None => Err(IngestError::Idempotency(format!(
                    "idempotency key {k:?} published event {} already, which retention has pruned since",
                    f.id
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// [`Handle::take_back`], on the writer.
    fn take_back(&self, fleet: &crate::fleet::Guard) -> Result<TakenBack, String> {
        let mut done = Vec::new();
        for (topic, author, from) in fleet.take_back_plan(&*self.store)? {
            let pruned = self
                .store
                .truncate(&topic, &author, from)
                .map_err(|e| e.to_string())?;
            if pruned.events > 0 {
                done.push((topic, author, from, pruned));
            }
        }
        Ok(done)
    }

    /// Signs the batch's publishes and writes them with its replicated events in one
    /// insert (one WriteBatch, one WAL sync), then answers everyone.
    fn commit(&mut self, batch: Batch) {
        let Batch {
            jobs,
            writes,
            restart,
        } = batch;
        if jobs.is_empty() && writes.is_empty() {
            return;
        }
        // Own events may come back by sync (after a repair): never sign from a stale
        // cached head.
        let me = self.key.author();
        for w in &writes {
            for ev in w.events.iter().filter(|e| e.author() == me) {
                self.heads.remove(ev.topic());
            }
        }
        let (jobs, own) = if jobs.is_empty() {
            (jobs, Vec::new())
        } else if self.hold.is_on() {
            for job in jobs {
                let _ = job.reply.send(Err(IngestError::OwnLogsUnconfirmed));
            }
            (Vec::new(), Vec::new())
        } else {
            let n = jobs.iter().map(|j| j.items.len()).sum();
            match self.sign_all(&jobs, n) {
                Ok(own) => (jobs, own),
                Err(e) => {
                    self.heads.clear();
                    for job in jobs {
                        let _ = job.reply.send(Err(IngestError::Store(e.clone())));
                    }
                    (Vec::new(), Vec::new())
                }
            }
        };
        let durability = if writes.iter().all(|w| w.durability == Durability::Buffered)
            && (own.is_empty() || self.durability == Durability::Buffered)
        {
            Durability::Buffered
        } else {
            Durability::Sync
        };
        // One insert: the replicated events (moved, not copied), then the own ones.
        let mut events: Vec<Event> =
            Vec::with_capacity(own.len() + writes.iter().map(|w| w.events.len()).sum::<usize>());
        let writes: Vec<(usize, oneshot::Sender<Written>)> = writes
            .into_iter()
            .map(|mut w| {
                let n = w.events.len();
                events.append(&mut w.events);
                (n, w.reply)
            })
            .collect();
        let replicated = events.len();
        events.extend(own);
        if events.is_empty() {
            for (_, reply) in writes {
                let _ = reply.send(Ok(Vec::new()));
            }
            return;
        }
        let t0 = Instant::now();
        // Each idempotency key with the event it publishes, written with it.
        let keys: Vec<murmur_store::KeyOf> = jobs
            .iter()
            .flat_map(|j| &j.items)
            .zip(&events[replicated..])
            .filter_map(|(item, ev)| {
                item.key.clone().map(|key| murmur_store::KeyOf {
                    key,
                    id: ev.id(),
                    request: item.digest(),
                })
            })
            .collect();
        let written = if restart {
            self.store.restart_log(&events, durability)
        } else if keys.is_empty() {
            self.store.insert(&events, durability)
        } else {
            self.store
                .insert_keyed(&events, &keys, self.clock.wall_ms(), durability)
        };
        let outcomes = match written {
            Ok(o) => {
                self.failing.record(None);
                o
            }
            Err(e) => {
                self.failing.record(Some(&e));
                let err = match e {
                    murmur_store::StoreError::NoSpace(_) => IngestError::DiskFull(e.to_string()),
                    e => IngestError::Store(e.to_string()),
                };
                tracing::error!(error = %err, events = events.len(), "commit failed; nothing of it was stored");
                self.heads.clear();
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
                for (_, reply) in writes {
                    let _ = reply.send(Err(err.to_string()));
                }
                return;
            }
        };
        self.metrics
            .commit_seconds
            .observe(t0.elapsed().as_secs_f64());
        self.metrics.commits.inc();
        self.metrics.commit_events.observe(events.len() as f64);
        if let Some(g) = &self.fleet {
            g.observe(
                events
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| matches!(o, Outcome::Appended(_)))
                    .map(|(e, _)| e),
            );
        }
        let small = events.len() <= ANNOUNCE_EVENTS
            && events.iter().map(|e| e.bytes().len()).sum::<usize>() <= ANNOUNCE_BYTES;
        let appended: Vec<(Offset, Event)> = if small {
            events
                .iter()
                .zip(&outcomes)
                .filter_map(|(e, o)| match o {
                    Outcome::Appended(off) => Some((*off, e.clone())),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        // Followers first: they are what a subscriber waits on. Appended offsets are
        // contiguous (the store's law); they end at `next` as this is the only writer.
        let next = self.store.next_offset();
        self.metrics.stored_events.set(next.0 as i64);
        let ends_at_next = appended.last().is_some_and(|(off, _)| off.0 + 1 == next.0);
        self.notify.send_replace(Committed {
            next,
            events: if ends_at_next {
                Arc::from(appended)
            } else {
                Arc::from(Vec::new())
            },
        });
        let mut outcomes = outcomes.into_iter();
        for (n, reply) in writes {
            let _ = reply.send(Ok(outcomes.by_ref().take(n).collect()));
        }
        let own = events.split_off(replicated);
        // Durable now: only now may the events be gossiped. Dropped when the replicator
        // is behind (anti-entropy delivers them instead).
        if !own.is_empty()
            && let Some(tx) = &self.published
        {
            tx.published(own.clone());
        }
        let mut it = own.into_iter().zip(outcomes);
        for job in jobs {
            let mut done = Vec::with_capacity(job.items.len());
            let mut failure = None;
            for (event, outcome) in it.by_ref().take(job.items.len()) {
                match outcome {
                    Outcome::Appended(offset) => done.push(Published { event, offset }),
                    other => {
                        failure = Some(format!("own event {} not appended: {other:?}", event.seq()))
                    }
                }
            }
            let reply = match failure {
                None => {
                    self.metrics.events_published.inc_by(done.len() as u64);
                    Ok(done)
                }
                Some(e) => {
                    // Another writer of our own logs (a cloned key?) got there first.
                    tracing::error!(error = %e, "local publish refused by the acceptance rules");
                    self.heads.clear();
                    Err(IngestError::Store(e))
                }
            };
            self.metrics
                .publish_seconds
                .observe(job.enqueued.elapsed().as_secs_f64());
            let _ = job.reply.send(reply);
        }
    }
}

/// What one commit takes: publishes to sign and replicated writes.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    writes: Vec<Write>,
    /// One write that starts a log over (see [`Write::restart`]).
    restart: bool,
}

/// The newest timestamp among `author`'s own heads, so the clock resumes past it.
pub fn last_own_time(
    store: &RocksStore,
    author: &murmur_core::AuthorId,
) -> Result<Timestamp, murmur_store::StoreError> {
    Ok(store
        .logs()?
        .iter()
        .filter(|l| l.author == *author)
        .map(|l| l.head.time)
        .max()
        .unwrap_or_default())
}
