//! Hybrid logical clock.
//!
//! A [`Timestamp`] is wall-clock milliseconds plus a logical counter. The [`Clock`] never
//! goes backwards, even when the wall clock does (NTP step, a device that booted without
//! an RTC).
//!
//! Remote times merge into the clock ([`Clock::observe_events`]), so an event published
//! after a remote event was received is stamped after it: `--at TIME`, document history
//! and "latest time" keep causal order. A remote time further ahead of our wall clock
//! than `max_drift` (a peer with a broken clock) does **not** move the clock: the event
//! itself is still accepted, because it is signed history and refusing it would stall
//! its author's log for every node, but it is reported as [`Ahead`] so the daemon can
//! count it and name the author. So a wrong clock never stops replication, and never
//! drags the local clock beyond the drift limit.
//!
//! The clock does no I/O: the caller passes the current wall time in.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::AuthorId;

/// A hybrid logical clock reading. Ordered by `(ms, logical)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (physical part).
    pub ms: u64,
    /// Logical counter, breaking ties within one millisecond.
    pub logical: u32,
}

impl Timestamp {
    /// A timestamp at `ms` with a zero logical part.
    pub const fn from_ms(ms: u64) -> Self {
        Self { ms, logical: 0 }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ms, self.logical)
    }
}

/// A remote timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The remote time is further ahead of our wall clock than the allowed drift.
    #[error(
        "remote time {remote} is {ahead:?} ahead of local wall time; the limit is {max_drift:?}"
    )]
    TooFarAhead {
        /// The refused timestamp.
        remote: Timestamp,
        /// How far ahead of the wall clock it was.
        ahead: Duration,
        /// The configured limit.
        max_drift: Duration,
    },
}

/// A hybrid logical clock. Invariant: every timestamp it returns is strictly greater than
/// every timestamp it returned or observed before.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Timestamp,
    max_drift: Duration,
}

impl Clock {
    /// Default tolerance for remote clocks running ahead of ours.
    pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_secs(60);

    /// A clock that refuses remote timestamps more than `max_drift` ahead of wall time.
    pub fn new(max_drift: Duration) -> Self {
        Self {
            last: Timestamp::default(),
            max_drift,
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// Moves the clock past `t` without the drift check: for the node's own history at
    /// startup (its last event may be "in the future" if the wall clock was reset).
    pub fn resume_after(&mut self, t: Timestamp) {
        self.last = self.last.max(t);
    }

    /// A new timestamp for a local event, given the wall clock in ms since the epoch.
    pub fn tick(&mut self, wall_ms: u64) -> Timestamp {
        self.last = if wall_ms > self.last.ms {
            Timestamp::from_ms(wall_ms)
        } else {
            bump(self.last)
        };
        self.last
    }

    /// Merges a timestamp seen on a remote event, given the wall clock in ms. On success
    /// the clock is past both; a timestamp more than `max_drift` ahead of the wall clock
    /// is refused and leaves the clock unchanged.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> Result<Timestamp, ClockError> {
        let limit = wall_ms.saturating_add(duration_ms(self.max_drift));
        if remote.ms > limit {
            return Err(ClockError::TooFarAhead {
                remote,
                ahead: Duration::from_millis(remote.ms - wall_ms),
                max_drift: self.max_drift,
            });
        }
        let top = self.last.max(remote);
        self.last = if wall_ms > top.ms {
            Timestamp::from_ms(wall_ms)
        } else {
            bump(top)
        };
        Ok(self.last)
    }
}

/// A remote event whose time was too far ahead of our wall clock to merge into the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    /// Whose clock it is.
    pub author: AuthorId,
    /// The event's time.
    pub time: Timestamp,
    /// How far ahead of our wall clock it was when we received it.
    pub by: Duration,
}

impl Clock {
    /// Merges the times of remote events that were just stored, given the wall clock in
    /// ms. Times within `max_drift` of the wall clock move the clock past them; the
    /// others leave it alone and are returned, one per event, for the caller to count
    /// and report. Events are never refused here: see the module docs.
    /// Takes each event's author and time (`(ev.author(), ev.time())`).
    pub fn observe_events(
        &mut self,
        events: impl IntoIterator<Item = (AuthorId, Timestamp)>,
        wall_ms: u64,
    ) -> Vec<Ahead> {
        let mut ahead = Vec::new();
        let mut newest: Option<Timestamp> = None;
        let limit = wall_ms.saturating_add(duration_ms(self.max_drift));
        for (author, t) in events {
            if t.ms > limit {
                ahead.push(Ahead {
                    author,
                    time: t,
                    by: Duration::from_millis(t.ms - wall_ms),
                });
            } else {
                newest = newest.max(Some(t));
            }
        }
        // Observing only the newest time is the same as observing each: the clock ends
        // past all of them.
        if let Some(t) = newest {
            // Within the limit by construction, so this cannot fail.
            let _ = self.observe(t, wall_ms);
        }
        ahead
    }

    /// The largest drift a remote time may have and still move this clock.
    pub fn max_drift(&self) -> Duration {
        self.max_drift
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_DRIFT)
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The smallest timestamp after `t`. When the logical counter is exhausted the physical
/// part moves on by one millisecond, so the result is always strictly greater.
fn bump(t: Timestamp) -> Timestamp {
    match t.logical.checked_add(1) {
        Some(logical) => Timestamp { ms: t.ms, logical },
        None => Timestamp::from_ms(t.ms.saturating_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wall_clock_jump_back_keeps_order() {
        let mut c = Clock::default();
        let a = c.tick(10_000);
        let b = c.tick(5_000); // NTP stepped back 5 s
        let d = c.tick(5_001);
        assert!(a < b && b < d);
        assert_eq!(b.ms, 10_000);
        let e = c.tick(20_000);
        assert_eq!(e, Timestamp::from_ms(20_000));
    }

    #[test]
    fn remote_far_ahead_is_refused_and_does_not_move_clock() {
        let mut c = Clock::new(Duration::from_secs(1));
        let before = c.tick(1_000);
        let err = c.observe(Timestamp::from_ms(1_000_000), 1_000).unwrap_err();
        assert!(matches!(err, ClockError::TooFarAhead { .. }));
        assert_eq!(c.last(), before);
        // Within the drift bound it is taken.
        let t = c
            .observe(
                Timestamp {
                    ms: 1_900,
                    logical: 7,
                },
                1_000,
            )
            .unwrap();
        assert_eq!(
            t,
            Timestamp {
                ms: 1_900,
                logical: 8
            }
        );
    }

    fn event_at(seed: u8, ms: u64) -> crate::Event {
        let k = crate::testing::key(seed);
        let draft = crate::Draft {
            topic: crate::Topic::new("t").unwrap(),
            seq: crate::Seq(0),
            prev: None,
            time: Timestamp::from_ms(ms),
            body: crate::Payload::data(&b"x"[..]),
        };
        crate::Event::sign(&draft, &k).unwrap()
    }

    #[test]
    fn remote_times_within_drift_order_later_local_events() {
        let mut c = Clock::new(Duration::from_secs(60));
        c.tick(1_000_000);
        // A peer whose clock is 30 s ahead: its event must come before our next one.
        let remote = event_at(2, 1_030_000);
        assert!(
            c.observe_events([(remote.author(), remote.time())], 1_000_100)
                .is_empty()
        );
        let next = c.tick(1_000_200);
        assert!(next > remote.time(), "{next} must follow {}", remote.time());
    }

    #[test]
    fn remote_times_beyond_drift_are_reported_and_leave_the_clock() {
        let day = 86_400_000;
        let mut c = Clock::new(Duration::from_secs(60));
        let before = c.tick(1_000_000);
        let ahead = event_at(3, 1_000_000 + day);
        let fine = event_at(4, 1_000_500);
        let out = c.observe_events([&ahead, &fine].map(|e| (e.author(), e.time())), 1_000_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].author, ahead.author());
        assert_eq!(out[0].by, Duration::from_millis(day));
        // The clock took the sane remote time, not the one a day ahead.
        assert!(c.last() > fine.time() && c.last() > before);
        assert!(c.last().ms <= 1_000_000 + 60_000);
        let next = c.tick(1_000_001);
        assert!(next.ms < 1_000_000 + 60_000);
    }

    #[test]
    fn logical_overflow_moves_physical_part() {
        let t = Timestamp {
            ms: 5,
            logical: u32::MAX,
        };
        assert_eq!(bump(t), Timestamp::from_ms(6));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Tick(u64),
        Observe(u64, u32, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..1_000_000).prop_map(Op::Tick),
            (0u64..1_100_000, any::<u32>(), 0u64..1_000_000)
                .prop_map(|(m, l, w)| Op::Observe(m, l, w)),
        ]
    }

    proptest! {
        #[test]
        fn strictly_monotonic_under_any_clock(ops in proptest::collection::vec(op(), 1..200)) {
            let mut c = Clock::new(Duration::from_secs(30));
            let mut prev = c.last();
            for op in ops {
                match op {
                    Op::Tick(w) => {
                        let t = c.tick(w);
                        prop_assert!(t > prev);
                        prop_assert!(t.ms >= w);
                        prev = t;
                    }
                    Op::Observe(m, l, w) => {
                        let remote = Timestamp { ms: m, logical: l };
                        match c.observe(remote, w) {
                            Ok(t) => {
                                prop_assert!(t > prev && t > remote);
                                prev = t;
                            }
                            Err(_) => {
                                prop_assert!(m > w + 30_000);
                                prop_assert_eq!(c.last(), prev);
                            }
                        }
                    }
                }
            }
        }
    }
}
