//! The storage trait that `murmur-store` implements (RocksDB, and in memory for tests
//! and simulation).
//!
//! Laws every implementation keeps (the conformance suite in `murmur-store` checks them):
//! - `insert` applies the acceptance rules of [`crate::accept`] to each event in order,
//!   seeing the effect of earlier events of the same call, and writes everything it
//!   accepts in one atomic step: after a crash, all of a call is there or none of it.
//! - With [`Durability::Sync`], `insert` returns only after the write is on stable
//!   storage; with [`Durability::Buffered`] it survives a process crash but not a power
//!   loss.
//! - Offsets are assigned to appended events in call order, contiguously, and are never
//!   reused. [`Store::next_offset`] is one past the last assigned offset.
//! - A log's events are stored contiguously from its base (0 unless pruned) up to its
//!   head; nothing below the base is stored again.
//! - Callers hand `insert` only authentic events (signature or range verified).

use std::error::Error;

use crate::accept::{ForkProof, Head, LogState};
use crate::event::{DocId, Event};
use crate::id::{AuthorId, EventId, Offset, Seq};
use crate::topic::{Pattern, Topic};
use crate::vv::VersionVector;

/// How durable a write must be before `insert` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The write-ahead log is fsynced: survives power loss.
    #[default]
    Sync,
    /// Written to the OS: survives a crash of the process, not of the machine.
    Buffered,
}

/// What `insert` did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored at this local offset.
    Appended(Offset),
    /// Already held.
    Duplicate,
    /// Conflicts with a held event: the fork proof was stored and the log frozen at seq.
    Fork(Seq),
    /// Not stored: the log needs `expected` first.
    Gap {
        /// The seq the log needs next.
        expected: Seq,
    },
    /// Not stored: continues the head's seq but links to another event.
    PrevMismatch,
    /// Not stored: the log is frozen by a fork.
    Frozen,
    /// Not stored: below the log's base (pruned here). Nothing pruned comes back.
    Pruned,
}

/// One log with its head, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// The topic.
    pub topic: Topic,
    /// The author.
    pub author: AuthorId,
    /// Its head.
    pub head: Head,
    /// Fork position, if the log is frozen.
    pub frozen_at: Option<Seq>,
    /// First seq held (see [`LogState::base`]).
    pub base: Seq,
    /// One past the highest offset pruned from the log (see [`LogState::pruned_to`]).
    pub pruned_to: Offset,
    /// Encoded bytes of the events held (see [`LogState::bytes`]).
    pub bytes: u64,
    /// Encoded bytes deleted here (see [`LogState::pruned_bytes`]).
    pub pruned_bytes: u64,
}

impl LogSummary {
    /// Events of the log held here: its base up to its head.
    pub fn held(&self) -> u64 {
        self.head.seq.0 + 1 - self.base.0
    }
}

/// A prefix cut of one log: its events with seq below `below` go (see
/// [`Store::prune`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The topic.
    pub topic: Topic,
    /// The author.
    pub author: AuthorId,
    /// The new base: events below it are deleted. Never past the head; never lowers
    /// a base.
    pub below: Seq,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Their encoded bytes.
    pub bytes: u64,
}

/// A page of events in arrival order.
#[derive(Debug, Clone, Default)]
pub struct ArrivalPage {
    /// Matching events with their offsets.
    pub events: Vec<(Offset, Event)>,
    /// Where to continue reading: one past the last offset examined (matching or not).
    pub next: Offset,
}

/// A document change in arrival order: its offset, topic and document.
pub type DocArrival = (Offset, Topic, DocId);

/// A document snapshot: automerge's saved form and the offset it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every change of the document stored below this offset is in `bytes`.
    pub through: Offset,
    /// `Automerge::save` output.
    pub bytes: Vec<u8>,
}

/// Reading the store: logs, arrivals, version vectors, forks and the document index.
/// The replication machine takes only this: it never writes (its writes are values,
/// carried out by the store's one writer). All methods take `&self` and may run
/// concurrently with a write.
pub trait ReadStore: Send + Sync + 'static {
    /// The implementation's error type.
    type Error: Error + Send + Sync + 'static;

    /// The state (head, fork) of one log.
    fn log_state(&self, author: &AuthorId, topic: &Topic) -> Result<LogState, Self::Error>;

    /// Up to `limit` events of one log from seq `from` on, in order.
    fn log_range(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, Self::Error>;

    /// The stored encodings of up to `limit` events of one log from seq `from` on, in
    /// order, not decoded (for serving them to a peer, who decodes and verifies them).
    fn log_range_bytes(
        &self,
        author: &AuthorId,
        topic: &Topic,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<bytes::Bytes>, Self::Error>;

    /// An event by id.
    fn event(&self, id: &EventId) -> Result<Option<Event>, Self::Error>;

    /// Events in arrival order from offset `from`, keeping those whose topic matches
    /// `filter` (all when `None`). Returns at most `limit` events and examines at most
    /// `max_scan` offsets, so a sparse filter cannot make one call unbounded.
    fn arrivals(
        &self,
        from: Offset,
        filter: Option<&Pattern>,
        limit: usize,
        max_scan: usize,
    ) -> Result<ArrivalPage, Self::Error>;

    /// One past the newest assigned offset (0 for an empty store).
    fn next_offset(&self) -> Offset;

    /// The highest [`LogState::pruned_to`] of any log: a reader from an offset at or
    /// above it has missed nothing to retention. 0 when nothing was pruned.
    fn pruned_to(&self) -> Offset;

    /// Every log with its head, ordered by topic then author.
    fn logs(&self) -> Result<Vec<LogSummary>, Self::Error>;

    /// The version vector of one topic.
    fn version_vector(&self, topic: &Topic) -> Result<VersionVector, Self::Error>;

    /// Every stored fork proof.
    fn forks(&self) -> Result<Vec<ForkProof>, Self::Error>;

    /// Up to `limit` changes of one document with offsets from `from` on, in arrival
    /// order. Every stored document change (an event with a document body) is indexed,
    /// in the same atomic write as the event.
    fn doc_changes(
        &self,
        topic: &Topic,
        doc: &DocId,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<(Offset, Event)>, Self::Error>;

    /// The offset of a document's newest change, if it has any.
    fn doc_last_change(&self, topic: &Topic, doc: &DocId) -> Result<Option<Offset>, Self::Error>;

    /// Document changes at offsets from `from` on (up to `limit`), in arrival order,
    /// and where to continue.
    fn doc_arrivals(
        &self,
        from: Offset,
        limit: usize,
    ) -> Result<(Vec<DocArrival>, Offset), Self::Error>;

    /// The documents of a topic that have at least one change, in id order.
    fn docs_of(&self, topic: &Topic, limit: usize) -> Result<Vec<DocId>, Self::Error>;

    /// The newest snapshot of a document, if any.
    fn load_snapshot(&self, topic: &Topic, doc: &DocId) -> Result<Option<Snapshot>, Self::Error>;
}

/// Persistence of logs and their indexes: [`ReadStore`] and the writes. Implementations
/// serialise writes internally and allow concurrent reads; the daemon calls the writes
/// from one thread only (its store writer).
pub trait Store: ReadStore {
    /// Applies the acceptance rules to `events` in order and stores what they accept,
    /// atomically, with the document index of each document change; returns one
    /// outcome per event.
    fn insert(&self, events: &[Event], durability: Durability)
    -> Result<Vec<Outcome>, Self::Error>;

    /// Stores a snapshot of a document (replacing the previous one), durably.
    fn save_snapshot(&self, topic: &Topic, doc: &DocId, snap: &Snapshot)
    -> Result<(), Self::Error>;

    /// Makes everything written so far durable (used at shutdown).
    fn flush(&self) -> Result<(), Self::Error>;

    /// Cuts log prefixes, atomically: each log's events below its cut are deleted with
    /// their index entries, and the base rises to the cut. The newest event always
    /// stays (a cut past it stops at it), so the chain continues from the head and
    /// offsets are never reused; a cut at or below the base, or of an unknown log, does
    /// nothing. Fork proofs stay. Readers of arrivals skip the deleted offsets.
    fn prune(&self, cuts: &[Cut]) -> Result<Pruned, Self::Error>;

    /// Takes back a log's events from seq `from` on, atomically, with their indexes:
    /// the head goes back to the event before `from`. A log always keeps its first
    /// held event (a cut at or below the base stops above it): its head anchors the
    /// chain, and what retention pruned below it must not come back. Fork proofs stay;
    /// offsets are never reused; readers of arrivals skip the deleted ones, and are
    /// not told they missed anything (`pruned_to` stays: taken back, not lost). For a
    /// fleet's revocation learned late: what the revoked key wrote after it goes. Not
    /// for document topics (other authors' changes may depend on the ones it would
    /// take away).
    fn truncate(&self, topic: &Topic, author: &AuthorId, from: Seq) -> Result<Pruned, Self::Error>;

    /// Starts a log over at `events[0]`, atomically: when the events begin past what the
    /// log can continue from ([`crate::accept::restarts`]: above its head + 1), every
    /// event held of the log goes (with its indexes), its base becomes the first
    /// event's seq, and the events are appended from there with no link to check
    /// before the first. Otherwise this is [`Store::insert`]. `events` are one log's,
    /// consecutive, verified by the caller as a range (hash links and the newest
    /// signature). For a node whose peers pruned past its head (it returns after the
    /// fleet's retention window), and that may drop what it held of the log.
    fn restart_log(
        &self,
        events: &[Event],
        durability: Durability,
    ) -> Result<Vec<Outcome>, Self::Error>;
}
