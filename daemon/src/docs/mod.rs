//! Shared documents: automerge CRDTs whose changes are signed events.
//!
//! A document lives in a topic and has an id. Every change to it is an automerge change
//! carried as the body of an event in its writer's log for that topic, so it replicates,
//! is verified and is stored like any event, and a document's history is an audit trail.
//!
//! The store is the truth; this module keeps the *read side*: materialised documents in
//! memory, owned by one thread. It
//! - turns local operations into automerge changes and publishes them through the
//!   writer (one group commit for all the changes that queued up meanwhile);
//! - follows the store's document index (`RocksStore::doc_arrivals`) and applies new
//!   changes, local or remote, to the documents it holds, per document in batches
//!   (automerge's cost per apply call grows with the document, so one call per change
//!   would not keep up);
//! - snapshots a document to RocksDB every `snapshot_every` changes, when it evicts it
//!   and at shutdown, with the offset the snapshot covers: loading is the snapshot plus
//!   the changes indexed after it;
//! - evicts documents idle for `idle_evict`, and the least recently used ones while the
//!   estimated memory exceeds `max_memory_bytes`.
//!
//! Changes from peers are checked before they are stored ([`check_body`]): a change that
//! does not parse, is too large or claims another author's automerge actor is refused
//! like an event with a bad signature.

mod manager;
pub mod ops;

use manager::Manager;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use automerge::{ActorId, Automerge, Change};
use murmur_core::{AuthorId, Body, DocId, Event, EventId, Offset, Topic};
use murmur_store::RocksStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::ingest::{self, IngestError};
use ops::{Op, OpError};

/// Settings of the document manager.
#[derive(Debug, Clone)]
pub struct DocsConfig {
    /// Snapshot a document after this many changes applied since its last snapshot.
    pub snapshot_every: u64,
    /// Largest automerge change accepted, bytes (local and from peers).
    pub max_change_bytes: usize,
    /// Largest document a local write may grow, as bytes of change history since its
    /// snapshot plus the snapshot.
    pub max_doc_bytes: u64,
    /// Cap on the estimated memory of documents held in memory.
    pub max_memory_bytes: u64,
    /// Documents untouched this long are written out and dropped from memory.
    pub idle_evict: Duration,
}

impl Default for DocsConfig {
    fn default() -> Self {
        DocsConfig {
            snapshot_every: 1000,
            max_change_bytes: 1 << 20,
            max_doc_bytes: 64 << 20,
            max_memory_bytes: 256 << 20,
            idle_evict: Duration::from_secs(600),
        }
    }
}

/// automerge panicked while applying changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Panicked;

/// Applies changes, turning a panic inside automerge into an error: a hostile peer can
/// craft a change that parses but makes automerge 0.12 panic (found by the fuzz test
/// in `tests.rs`), and one bad change must not take the node down.
pub fn apply_guarded(
    doc: &mut Automerge,
    changes: Vec<Change>,
) -> Result<Result<(), automerge::AutomergeError>, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(changes)))
        .map_err(|_| Panicked)
}

/// A point in a document's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// Changes stored on this node at offsets up to and including this one.
    Offset(Offset),
    /// Changes up to and including this event (in this node's arrival order).
    Event(EventId),
    /// Changes whose author's clock was at or before this time (ms since the epoch).
    Time(u64),
}

/// Why a document request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// A bad operation (client error).
    #[error(transparent)]
    Op(#[from] OpError),
    /// The document has no changes (on this node).
    #[error("no document {doc} in topic {topic}")]
    NotFound {
        /// The topic.
        topic: Topic,
        /// The document.
        doc: DocId,
    },
    /// The point in history names no change of this document.
    #[error("{0}")]
    NoSuchPoint(String),
    /// The change or the document would exceed a limit.
    #[error("{0}")]
    TooLarge(String),
    /// Publishing failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The document cannot be read now: it waits for changes it depends on, or it
    /// holds changes that crash automerge (they are skipped once found).
    #[error("{0}")]
    Unavailable(String),
    /// The document manager is overloaded or stopping.
    #[error("the document manager is busy; retry shortly")]
    Busy,
    /// Storage failed.
    #[error("storage error: {0}")]
    Store(String),
}

/// A change made through the API, once durable.
#[derive(Debug, Clone)]
pub struct ChangeDone {
    /// The event carrying it.
    pub event: Event,
    /// Its local offset.
    pub offset: Offset,
    /// automerge's hash of the change, hex.
    pub hash: String,
}

/// A document's state.
#[derive(Debug, Clone)]
pub struct DocState {
    /// The document (or the value at the asked path) as JSON.
    pub json: serde_json::Value,
    /// automerge heads, hex.
    pub heads: Vec<String>,
    /// Hashes of changes this node has seen referenced but not yet received.
    pub missing: usize,
}

/// Counters of the document manager (the API type).
pub use murmur_client::api::DocsStats;

enum Command {
    Change {
        topic: Topic,
        doc: DocId,
        ops: Vec<Op>,
        message: Option<String>,
        reply: oneshot::Sender<Result<ChangeDone, DocError>>,
    },
    Get {
        topic: Topic,
        doc: DocId,
        path: String,
        at: Option<Point>,
        reply: oneshot::Sender<Result<DocState, DocError>>,
    },
    Stats(oneshot::Sender<DocsStats>),
    /// Publish a snapshot of every document of the topic (see
    /// `murmur_core::snapshot`); answers, once they are durable, with what they cover.
    SnapshotRound {
        topic: Topic,
        reply: oneshot::Sender<
            Result<(murmur_core::retention::DocCover, Option<murmur_core::Seq>), DocError>,
        >,
    },
    /// New events were stored.
    Arrived,
    /// Time passed: idle eviction.
    Tick,
    /// Drop these documents from memory without a snapshot (their in-memory state
    /// holds changes that were not stored).
    Forget(Vec<(Topic, DocId)>),
    Stop,
}

/// The cloneable handle of the document manager.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DocError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|_| DocError::Busy)?;
        rx.await.map_err(|_| DocError::Busy)
    }

    /// Applies `ops` atomically as one change and returns it once durable.
    pub async fn change(
        &self,
        topic: Topic,
        doc: DocId,
        ops: Vec<Op>,
        message: Option<String>,
    ) -> Result<ChangeDone, DocError> {
        self.ask(|reply| Command::Change {
            topic,
            doc,
            ops,
            message,
            reply,
        })
        .await?
    }

    /// The document (or the value at `path`), now or at an earlier point.
    pub async fn get(
        &self,
        topic: Topic,
        doc: DocId,
        path: String,
        at: Option<Point>,
    ) -> Result<DocState, DocError> {
        self.ask(|reply| Command::Get {
            topic,
            doc,
            path,
            at,
            reply,
        })
        .await?
    }

    /// Publishes a snapshot of every document of `topic`, signed by this node, and
    /// answers once they are durable with what they cover: the topic's version vector
    /// read before the documents were caught up, so each snapshot holds at least that;
    /// and the seq of the last snapshot event (`None`: the topic has no documents).
    pub async fn snapshot_round(
        &self,
        topic: Topic,
    ) -> Result<(murmur_core::retention::DocCover, Option<murmur_core::Seq>), DocError> {
        self.ask(|reply| Command::SnapshotRound { topic, reply })
            .await?
    }

    /// Counters.
    pub async fn stats(&self) -> Result<DocsStats, DocError> {
        self.ask(Command::Stats).await
    }

    /// Writes every changed document out and stops the thread.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

/// Checks a document snapshot, carried by the event `by`, against the changes of the document
/// held here (each with its event's author and seq): what a node holding history can
/// prove about another node's snapshot. A snapshot is false when it
/// - leaves out a change it claims to cover (held here, by an author whose cover
///   reaches that change's event), which a node starting from it would never get; or
/// - holds a change by an author that differs from the change that author signed at
///   the same automerge position (actor and seq), a change the author never made.
///
/// Changes held here that the snapshot does not claim to cover, and changes in it that
/// are not held here yet, prove nothing. `held` must hold only changes the checking
/// node's own document holds (one it skipped, as poison or as refused by automerge,
/// is in no honest snapshot either). `Err` says what is wrong.
pub fn check_snapshot(
    snap: &murmur_core::snapshot::DocSnapshot,
    by: &Event,
    held: &[(AuthorId, murmur_core::Seq, Change)],
) -> Result<(), String> {
    std::panic::catch_unwind(|| check_snapshot_unguarded(snap, by, held))
        .unwrap_or_else(|_| Err("its document crashes automerge".into()))
}

fn check_snapshot_unguarded(
    snap: &murmur_core::snapshot::DocSnapshot,
    by: &Event,
    held: &[(AuthorId, murmur_core::Seq, Change)],
) -> Result<(), String> {
    use automerge::ReadDoc as _;
    let doc =
        Automerge::load(&snap.save).map_err(|e| format!("its document does not load: {e}"))?;
    let covers = snap.cover_map(by);
    let mut at: std::collections::HashMap<(Vec<u8>, u64), automerge::ChangeHash> =
        std::collections::HashMap::new();
    for (author, seq, change) in held {
        at.insert(
            (change.actor_id().to_bytes().to_vec(), change.seq()),
            change.hash(),
        );
        let covered = covers.get(author).is_some_and(|c| *c >= *seq);
        if covered && doc.get_change_by_hash(&change.hash()).is_none() {
            return Err(format!(
                "it leaves out change {} by {} (seq {seq}) that it claims to cover",
                hex(&change.hash()),
                author.short()
            ));
        }
    }
    for change in doc.get_changes(&[]) {
        if let Some(h) = at.get(&(change.actor_id().to_bytes().to_vec(), change.seq()))
            && *h != change.hash()
        {
            return Err(format!(
                "it holds change {} at position {} of actor {}, which signed change {} there",
                hex(&change.hash()),
                change.seq(),
                change.actor_id(),
                hex(h)
            ));
        }
    }
    Ok(())
}

/// Checks the body of an event from a peer: a document change must parse as an
/// automerge change, fit the size limit and be made by the event's author's actor.
pub fn check_body(ev: &Event, max_change_bytes: usize) -> Result<(), String> {
    let Body::Doc { change, .. } = ev.body() else {
        return Ok(());
    };
    if change.len() > max_change_bytes {
        return Err(format!(
            "document change of {} bytes exceeds {max_change_bytes}",
            change.len()
        ));
    }
    let c =
        Change::from_bytes(change.to_vec()).map_err(|e| format!("not an automerge change: {e}"))?;
    if c.actor_id().to_bytes() != ev.author().0 {
        return Err("document change made by another author's actor".into());
    }
    Ok(())
}

fn actor(author: &AuthorId) -> ActorId {
    ActorId::from(author.0.as_slice())
}

fn hex(h: &automerge::ChangeHash) -> String {
    h.to_string()
}

/// Starts the document manager thread, and a task that tells it when events were
/// stored (from `offsets`) and when time passed. The thread keeps the `murmur_docs_*`
/// metrics.
pub fn spawn(
    store: Arc<RocksStore>,
    ingest: ingest::Handle,
    author: AuthorId,
    config: DocsConfig,
    mut offsets: watch::Receiver<crate::ingest::Committed>,
    metrics: crate::metrics::Metrics,
) -> std::io::Result<(Handle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(1024);
    let m = Manager::new(store, ingest, author, config, tx.clone(), metrics);
    let thread = std::thread::Builder::new()
        .name("murmur-docs".into())
        .spawn(move || m.run(rx))?;
    let notify = tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                changed = offsets.changed() => {
                    if changed.is_err() { break; }
                    // Full: a wake-up is already queued; the manager reads from its cursor.
                    let _ = notify.try_send(Command::Arrived);
                }
                _ = tick.tick() => { let _ = notify.try_send(Command::Tick); }
            }
            if notify.is_closed() {
                break;
            }
        }
    });
    Ok((Handle { tx }, thread))
}

#[cfg(test)]
mod tests;
