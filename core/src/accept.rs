//! Acceptance rules for an incoming event, as pure functions over a log's state.
//!
//! In order (after decoding and signature checks):
//! - the log is frozen by a fork at or before this seq → [`Verdict::Frozen`];
//! - `seq == head + 1` and `prev == head.id` (or seq 0 on an empty log) → append;
//! - `seq == head + 1` but `prev` names another event → the author signed two events at
//!   `head.seq`; we hold only one of them, so no proof yet: [`Verdict::PrevMismatch`]
//!   (a sync round fetches the other event and turns this into a fork proof);
//! - `seq > head + 1` → gap, hold it and ask a peer for the missing range;
//! - `seq <= head`: same id → duplicate; different id but identical signed content →
//!   duplicate (a re-encoded signature, not a second statement by the author); otherwise
//!   a fork, with both events as the proof.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::hlc::Timestamp;
use crate::id::{AuthorId, EventId, Seq};
use crate::topic::Topic;

/// The newest event of a log, as far as this node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq.
    pub seq: Seq,
    /// Its id.
    pub id: EventId,
    /// Its HLC time.
    pub time: Timestamp,
}

impl Head {
    /// The head that `event` would make.
    pub fn of(event: &Event) -> Self {
        Head {
            seq: event.seq(),
            id: event.id(),
            time: event.time(),
        }
    }
}

/// What this node knows of one log: its head, its base and whether it is frozen by a
/// fork.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogState {
    /// The head, `None` for a log with no events here. Kept when events are pruned, so
    /// the chain continues from it.
    pub head: Option<Head>,
    /// Lowest seq at which a fork was proven; nothing past it is accepted.
    pub frozen_at: Option<Seq>,
    /// First seq held: the events below it were pruned here (retention), or never
    /// held (a log first received from a peer's base). 0 when nothing was cut. The
    /// events held are `base..=head`; `base == head + 1` means none.
    pub base: Seq,
    /// One past the highest local offset of an event pruned from this log (0: none):
    /// a reader from an offset below it may have missed events of this log.
    pub pruned_to: crate::id::Offset,
    /// Encoded bytes of the events held (`base..=head`): what a `max_bytes` retention
    /// rule counts. The store adds each appended event and takes away what it prunes.
    pub bytes: u64,
    /// Encoded bytes of the events of this log deleted here (pruned, or dropped when
    /// it started over at a peer's base).
    pub pruned_bytes: u64,
    /// The log started over at a peer's base here ([`crate::storage::Store::restart_log`]):
    /// what lies below its base was never held since (a document topic's changes
    /// there are known only from snapshots).
    pub restarted: bool,
}

/// Proof that an author signed two different events at the same position of one log.
/// Invariant (checked by [`ForkProof::check`]): same author, topic and seq; different
/// signed content; both signatures valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkProof {
    /// The event this node held first.
    pub ours: Event,
    /// The conflicting event.
    pub theirs: Event,
}

impl ForkProof {
    /// The author who forked.
    pub fn author(&self) -> AuthorId {
        self.ours.author()
    }
    /// The topic of the forked log.
    pub fn topic(&self) -> &Topic {
        self.ours.topic()
    }
    /// The seq at which the log forked.
    pub fn seq(&self) -> Seq {
        self.ours.seq()
    }

    /// Checks the proof: a valid proof convicts the author, so a node can freeze a log on
    /// a proof received from a peer without trusting that peer.
    pub fn check(&self) -> Result<(), &'static str> {
        let (a, b) = (&self.ours, &self.theirs);
        if a.author() != b.author() || a.topic() != b.topic() || a.seq() != b.seq() {
            return Err("the two events are not at the same position of one log");
        }
        if a.signed_bytes() == b.signed_bytes() {
            return Err("the two events say the same thing");
        }
        a.verify()
            .map_err(|_| "first event is not validly signed")?;
        b.verify()
            .map_err(|_| "second event is not validly signed")?;
        Ok(())
    }
}

/// What to do with an incoming event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Extends the log: store it.
    Append,
    /// Already held: ignore.
    Duplicate,
    /// Conflicts with the event held at the same seq.
    Fork(Box<ForkProof>),
    /// Past the head: hold it and fetch `expected..event.seq` first.
    Gap {
        /// The seq the log needs next.
        expected: Seq,
    },
    /// Continues the head's seq but not the head's id: the author forked at `head.seq`.
    PrevMismatch {
        /// Our head.
        head: Head,
    },
    /// The log is frozen by a fork at `at`.
    Frozen {
        /// Fork position.
        at: Seq,
    },
    /// Below the log's base: pruned here (or never kept). Not stored again, and not a
    /// gap: nothing pruned comes back.
    Pruned,
}

/// Whether `events` (one log's consecutive events, verified as a range) start the log
/// over ([`crate::storage::Store::restart_log`]): they begin past what the log could
/// continue from (above head + 1, or above the base of an empty log), and the log is
/// not frozen. Otherwise they are an ordinary insert.
pub fn restarts(state: &LogState, events: &[Event]) -> bool {
    let Some(first) = events.first() else {
        return false;
    };
    state.frozen_at.is_none()
        && match state.head {
            Some(h) => first.seq().0 > h.seq.0.saturating_add(1),
            None => first.seq() > state.base,
        }
}

/// Classifies `event` against the log's state. When `event.seq <= head.seq`, `stored`
/// is called with that seq and must return the event held there.
pub fn classify(
    state: &LogState,
    event: &Event,
    stored: impl FnOnce(Seq) -> Option<Event>,
) -> Verdict {
    if let Some(at) = state.frozen_at
        && event.seq() > at
    {
        return Verdict::Frozen { at };
    }
    if event.seq() < state.base {
        return Verdict::Pruned;
    }
    let Some(head) = state.head else {
        // An empty log starts at its base (0, or a peer's base it was told to start
        // at), with no link to check before it.
        return if event.seq() == state.base {
            Verdict::Append
        } else {
            Verdict::Gap {
                expected: state.base,
            }
        };
    };
    if event.seq() > head.seq {
        return if head.seq.next() == Some(event.seq()) {
            if event.prev() == Some(head.id) {
                Verdict::Append
            } else {
                Verdict::PrevMismatch { head }
            }
        } else {
            Verdict::Gap {
                expected: Seq(head.seq.0 + 1),
            }
        };
    }
    if event.seq() == head.seq && event.id() == head.id {
        return Verdict::Duplicate;
    }
    match stored(event.seq()) {
        Some(ours) if ours.id() == event.id() => Verdict::Duplicate,
        Some(ours) if ours.signed_bytes() == event.signed_bytes() => Verdict::Duplicate,
        Some(ours) => Verdict::Fork(Box::new(ForkProof {
            ours,
            theirs: event.clone(),
        })),
        // The store lost an event below its head: treat as a gap, never as valid.
        None => Verdict::Gap {
            expected: event.seq(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::{chain, key};
    use crate::event::{Draft, Payload};

    fn state(c: &[Event]) -> LogState {
        LogState {
            head: c.last().map(Head::of),
            frozen_at: None,
            base: Seq(0),
            pruned_to: crate::id::Offset(0),
            bytes: 0,
            pruned_bytes: 0,
            restarted: false,
        }
    }

    fn alt(ev: &Event, text: &str) -> Event {
        Event::sign(
            &Draft {
                topic: ev.topic().clone(),
                seq: ev.seq(),
                prev: ev.prev(),
                time: ev.time(),
                body: Payload::data(text.as_bytes().to_vec()),
            },
            &key(1),
        )
        .unwrap()
    }

    #[test]
    fn append_duplicate_gap() {
        let c = chain(&key(1), "t", 6);
        let none = |_| None;
        assert_eq!(classify(&LogState::default(), &c[0], none), Verdict::Append);
        assert_eq!(
            classify(&LogState::default(), &c[3], none),
            Verdict::Gap { expected: Seq(0) }
        );
        assert_eq!(classify(&state(&c[..3]), &c[3], none), Verdict::Append);
        assert_eq!(
            classify(&state(&c[..3]), &c[5], none),
            Verdict::Gap { expected: Seq(3) }
        );
        assert_eq!(classify(&state(&c[..3]), &c[2], none), Verdict::Duplicate);
        assert_eq!(
            classify(&state(&c[..5]), &c[1], |s| Some(c[s.0 as usize].clone())),
            Verdict::Duplicate
        );
    }

    #[test]
    fn fork_below_head_gives_a_valid_proof() {
        let c = chain(&key(1), "t", 5);
        let other = alt(&c[2], "second statement");
        let v = classify(&state(&c), &other, |s| Some(c[s.0 as usize].clone()));
        let Verdict::Fork(proof) = v else {
            panic!("expected fork, got {v:?}")
        };
        assert_eq!(proof.seq(), Seq(2));
        proof.check().unwrap();
        // At the head itself, too.
        let at_head = alt(&c[4], "x");
        assert!(matches!(
            classify(&state(&c), &at_head, |s| Some(c[s.0 as usize].clone())),
            Verdict::Fork(_)
        ));
    }

    #[test]
    fn prev_mismatch_after_head() {
        let c = chain(&key(1), "t", 4);
        // A chain that forked at seq 2: its event 3 points to a different event 2.
        let fork2 = alt(&c[2], "fork");
        let fork3 = Event::sign(
            &Draft {
                topic: c[3].topic().clone(),
                seq: Seq(3),
                prev: Some(fork2.id()),
                time: c[3].time(),
                body: Payload::data(&b"y"[..]),
            },
            &key(1),
        )
        .unwrap();
        assert!(matches!(
            classify(&state(&c[..3]), &fork3, |_| None),
            Verdict::PrevMismatch { .. }
        ));
    }

    #[test]
    fn frozen_log_refuses_later_events() {
        let c = chain(&key(1), "t", 6);
        let st = LogState {
            head: Some(Head::of(&c[3])),
            frozen_at: Some(Seq(3)),
            ..LogState::default()
        };
        assert_eq!(
            classify(&st, &c[4], |_| None),
            Verdict::Frozen { at: Seq(3) }
        );
        assert_eq!(classify(&st, &c[3], |_| None), Verdict::Duplicate);
    }

    #[test]
    fn below_the_base_is_pruned_and_an_empty_log_starts_at_its_base() {
        let c = chain(&key(1), "t", 6);
        // Events 0..=2 pruned, head 4 kept.
        let st = LogState {
            head: Some(Head::of(&c[4])),
            frozen_at: None,
            base: Seq(3),
            ..LogState::default()
        };
        assert_eq!(classify(&st, &c[1], |_| None), Verdict::Pruned);
        assert_eq!(
            classify(&st, &c[3], |_| Some(c[3].clone())),
            Verdict::Duplicate
        );
        assert_eq!(classify(&st, &c[5], |_| None), Verdict::Append);
        // Everything pruned (base past the head): the chain still continues.
        let all = LogState { base: Seq(5), ..st };
        assert_eq!(classify(&all, &c[4], |_| None), Verdict::Pruned);
        assert_eq!(classify(&all, &c[5], |_| None), Verdict::Append);
        // An empty log told to start at 3 (a peer's base): 3 appends without a link.
        let fresh = LogState {
            base: Seq(3),
            ..LogState::default()
        };
        assert_eq!(classify(&fresh, &c[3], |_| None), Verdict::Append);
        assert_eq!(classify(&fresh, &c[2], |_| None), Verdict::Pruned);
        assert_eq!(
            classify(&fresh, &c[4], |_| None),
            Verdict::Gap { expected: Seq(3) }
        );
    }

    #[test]
    fn proof_check_rejects_non_proofs() {
        let c = chain(&key(1), "t", 3);
        let same = ForkProof {
            ours: c[1].clone(),
            theirs: c[1].clone(),
        };
        assert!(same.check().is_err());
        let diff_seq = ForkProof {
            ours: c[1].clone(),
            theirs: c[2].clone(),
        };
        assert!(diff_seq.check().is_err());
        let d = chain(&key(2), "t", 3);
        let diff_author = ForkProof {
            ours: c[1].clone(),
            theirs: d[1].clone(),
        };
        assert!(diff_author.check().is_err());
    }
}
