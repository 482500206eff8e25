//! The node's hybrid logical clock, shared by the writer (local events get their times
//! from it) and the replicator (remote events move it forward), and what it has seen of
//! other nodes' clocks.
//!
//! The rules are core's ([`murmur_core::hlc`]): remote times within `clock.max_drift`
//! of our wall clock advance the clock; times further ahead are accepted with their
//! events but leave the clock alone, and are counted here, with the worst author kept
//! for `murmur status`.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use murmur_core::{AuthorId, Clock, Timestamp};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use murmur_client::api::{ClockStatus, WorstAhead};

struct Inner {
    clock: Clock,
    worst: Option<(AuthorId, Duration, u64)>,
}

impl std::fmt::Debug for NodeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClock")
            .field("offset_ms", &self.offset_ms)
            .finish_non_exhaustive()
    }
}

/// The node's clock. Cheap to lock: every user holds it for a handful of instructions.
pub struct NodeClock {
    inner: Mutex<Inner>,
    /// Added to the system's wall clock (tests: a host whose clock runs ahead).
    offset_ms: i64,
    ahead_events: Counter,
    worst_ahead: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl NodeClock {
    /// A node clock whose wall clock is the system's shifted by `offset_ms` (0 but in
    /// tests), registering its metrics.
    pub fn new(clock: Clock, offset_ms: i64, registry: &mut Registry) -> Self {
        let this = NodeClock {
            inner: Mutex::new(Inner { clock, worst: None }),
            offset_ms,
            ahead_events: Counter::default(),
            worst_ahead: Gauge::default(),
        };
        registry.register(
            "murmur_clock_ahead_events",
            "Remote events whose time was further ahead of our wall clock than clock.max_drift (stored, not merged into our clock)",
            this.ahead_events.clone(),
        );
        registry.register(
            "murmur_clock_worst_ahead_seconds",
            "How far ahead of our wall clock the worst remote clock was, since start",
            this.worst_ahead.clone(),
        );
        this
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves a valid clock behind: take it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far ahead a remote time may be and still move this clock.
    pub fn max_drift(&self) -> std::time::Duration {
        self.lock().clock.max_drift()
    }

    /// The wall clock in ms since the epoch, with the configured offset.
    pub fn wall_ms(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        u64::try_from(now.saturating_add(self.offset_ms)).unwrap_or(0)
    }

    /// Moves the clock past `t` (the node's own history at start). The clock never
    /// goes back, so if this node once ran with its clock far ahead, its new events
    /// keep following that time: say so, once, at start.
    pub fn resume_after(&self, t: Timestamp) {
        let wall = self.wall_ms();
        let mut inner = self.lock();
        inner.clock.resume_after(t);
        let limit = wall
            .saturating_add(u64::try_from(inner.clock.max_drift().as_millis()).unwrap_or(u64::MAX));
        if t.ms > limit {
            tracing::warn!(
                ahead = %humantime::format_duration(Duration::from_secs((t.ms - wall) / 1000)),
                "this node's own newest event is ahead of the wall clock (was the clock wrong once?); new events are stamped after it until the wall clock catches up"
            );
        }
    }

    /// `n` new timestamps for local events, in order.
    pub fn ticks(&self, n: usize) -> Vec<Timestamp> {
        let wall = self.wall_ms();
        let mut inner = self.lock();
        (0..n).map(|_| inner.clock.tick(wall)).collect()
    }

    /// Merges the times of remote events just stored (`(author, time)` each); counts
    /// and remembers those too far ahead.
    pub fn observe(&self, events: impl IntoIterator<Item = (AuthorId, Timestamp)>) {
        let wall = self.wall_ms();
        let mut inner = self.lock();
        let ahead = inner.clock.observe_events(events, wall);
        if ahead.is_empty() {
            return;
        }
        self.ahead_events.inc_by(ahead.len() as u64);
        let Some(worst) = ahead.iter().max_by_key(|a| a.by) else {
            return;
        };
        if inner.worst.is_none_or(|(_, by, _)| worst.by > by) {
            tracing::warn!(
                author = %worst.author,
                ahead = %humantime::format_duration(Duration::from_secs(worst.by.as_secs())),
                max_drift = %humantime::format_duration(inner.clock.max_drift()),
                "a remote clock is ahead of ours beyond clock.max_drift: its events are kept, our clock does not follow"
            );
            inner.worst = Some((worst.author, worst.by, wall));
            self.worst_ahead.set(worst.by.as_secs_f64());
        }
    }

    /// What `murmur status` shows.
    pub fn status(&self) -> ClockStatus {
        let wall_ms = self.wall_ms();
        let inner = self.lock();
        ClockStatus {
            wall_ms,
            last_ms: inner.clock.last().ms,
            max_drift_ms: u64::try_from(inner.clock.max_drift().as_millis()).unwrap_or(u64::MAX),
            ahead_events: self.ahead_events.get(),
            worst: inner.worst.map(|(author, by, seen)| WorstAhead {
                author: author.to_string(),
                ahead_ms: u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
                seen_ms: seen,
            }),
        }
    }
}
