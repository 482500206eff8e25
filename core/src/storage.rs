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
//! - A log's events are stored contiguously from seq 0 up to its head.
//! - Callers hand `insert` only authentic events (signature or range verified).

use std::error::Error;

use crate::accept::{ForkProof, Head, LogState};
use crate::event::Event;
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
}

/// A page of events in arrival order.
#[derive(Debug, Clone, Default)]
pub struct ArrivalPage {
    /// Matching events with their offsets.
    pub events: Vec<(Offset, Event)>,
    /// Where to continue reading: one past the last offset examined (matching or not).
    pub next: Offset,
}

/// Persistence of logs and their indexes. All methods take `&self`: implementations
/// serialise writes internally and allow concurrent reads.
pub trait Store: Send + Sync + 'static {
    /// The implementation's error type.
    type Error: Error + Send + Sync + 'static;

    /// Applies the acceptance rules to `events` in order and stores what they accept,
    /// atomically; returns one outcome per event.
    fn insert(&self, events: &[Event], durability: Durability)
    -> Result<Vec<Outcome>, Self::Error>;

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

    /// Every log with its head, ordered by topic then author.
    fn logs(&self) -> Result<Vec<LogSummary>, Self::Error>;

    /// The version vector of one topic.
    fn version_vector(&self, topic: &Topic) -> Result<VersionVector, Self::Error>;

    /// Every stored fork proof.
    fn forks(&self) -> Result<Vec<ForkProof>, Self::Error>;

    /// Makes everything written so far durable (used at shutdown).
    fn flush(&self) -> Result<(), Self::Error>;
}
