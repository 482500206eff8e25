//! The ingest pipeline for local publishing.
//!
//! One writer thread owns the node's own logs: it assigns seq and prev, signs, and
//! writes. API handlers hold a cloneable [`Handle`] and put jobs on a bounded queue; the
//! writer drains everything that is waiting (up to `max_commit_events`) into **one**
//! `Store::insert` call, i.e. one RocksDB WriteBatch and one WAL sync, and only then
//! answers each job. So a publish is acknowledged exactly when it is durable, and many
//! concurrent publishes share one fsync (group commit).
//!
//! Overload policy: the queue is bounded in requests and in payload bytes; when either is
//! full, [`Handle::publish`] fails at once with [`IngestError::QueueFull`] and the API
//! answers 503 with Retry-After. Memory never grows with offered load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use murmur_core::{
    Draft, Durability, Event, Head, Keypair, Offset, Outcome, Payload, Seq, Store, Timestamp, Topic,
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
}

impl PublishItem {
    fn cost(&self) -> usize {
        let body = match &self.payload {
            Payload::Data { data, .. } => data.len(),
            Payload::Doc { change, .. } => change.len(),
        };
        body + self.topic.as_str().len() + 160
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
    /// Finish what is queued, refuse anything later, exit.
    Stop,
}

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
/// next commit that succeeds. The node's store watchdog reads it. Cloneable; all clones
/// share one flag.
#[derive(Debug, Clone, Default)]
pub struct WriteFailing(Arc<AtomicBool>);

impl WriteFailing {
    /// True while the last commit failed for an environmental reason.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, on: bool) {
        self.0.store(on, Ordering::Release);
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
}

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
    notify: Arc<watch::Sender<Offset>>,
    published: Option<crate::replicate::Handle>,
}

/// Starts the writer thread. It runs until every [`Handle`] is dropped, finishing the
/// jobs already queued.
pub fn spawn(
    store: Arc<RocksStore>,
    key: Keypair,
    clock: Arc<NodeClock>,
    config: &WriterConfig,
    metrics: Metrics,
    notify: Arc<watch::Sender<Offset>>,
    published: Option<crate::replicate::Handle>,
) -> std::io::Result<(Handle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(config.queue_requests);
    let handle = Handle {
        tx,
        hold: config.hold.clone(),
        bytes: Arc::new(Semaphore::new(config.queue_bytes)),
        bytes_total: config.queue_bytes,
        metrics: metrics.clone(),
    };
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
    };
    let thread = std::thread::Builder::new()
        .name("murmur-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((handle, thread))
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut stopping = false;
        while !stopping {
            let first = match rx.blocking_recv() {
                Some(Command::Job(job)) => job,
                Some(Command::Stop) | None => break,
            };
            let mut n = first.items.len();
            let mut jobs = vec![first];
            while n < self.max_commit {
                match rx.try_recv() {
                    Ok(Command::Job(job)) => {
                        n += job.items.len();
                        jobs.push(job);
                    }
                    Ok(Command::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.metrics.ingest_queue.set(rx.len() as i64);
            self.commit(jobs, n);
        }
        // Refuse new work, then finish what was accepted before the stop.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let Command::Job(job) = msg {
                let n = job.items.len();
                self.commit(vec![job], n);
            }
        }
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

    fn commit(&mut self, jobs: Vec<Job>, n: usize) {
        if self.hold.is_on() {
            for job in jobs {
                let _ = job.reply.send(Err(IngestError::OwnLogsUnconfirmed));
            }
            return;
        }
        let result = self
            .sign_all(&jobs, n)
            .map_err(IngestError::Store)
            .and_then(|events| {
                let t0 = Instant::now();
                let outcomes = self.store.insert(&events, self.durability).map_err(|e| {
                    self.failing.set(e.is_environmental());
                    match e {
                        murmur_store::StoreError::NoSpace(_) => {
                            IngestError::DiskFull(e.to_string())
                        }
                        e => IngestError::Store(e.to_string()),
                    }
                })?;
                self.failing.set(false);
                self.metrics
                    .commit_seconds
                    .observe(t0.elapsed().as_secs_f64());
                Ok((events, outcomes))
            });
        let (events, outcomes) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, events = n, "commit failed; nothing of it was stored");
                self.heads.clear();
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        self.metrics.commits.inc();
        self.metrics.commit_events.observe(n as f64);
        // Durable now: only now may the events be gossiped. Dropped when the replicator
        // is behind (anti-entropy delivers them instead).
        if let Some(tx) = &self.published {
            tx.published(events.clone());
        }
        let mut it = events.into_iter().zip(outcomes);
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
        let next = self.store.next_offset();
        self.metrics.stored_events.set(next.0 as i64);
        self.notify.send_replace(next);
    }
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
