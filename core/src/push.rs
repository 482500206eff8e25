//! Watching that live push works, per peer.
//!
//! A peer publishes its own events straight to every peer on the channel (gossipsub
//! flood publish). Once a round with a peer on a topic has ended, we hold everything
//! it had there; from then on, an event it writes on that topic should come by push.
//! If it comes by sync instead, the peer's push to us was lost. A push path can die
//! without a word while the connection stays up (a gossip stream that failed to open
//! a few times is given up for the connection's life), and then only the periodic
//! rounds bring that peer's events: minutes late on a real fleet. A few such rounds
//! in a row, and the driver is told to reconnect: a new connection opens new streams.
//!
//! Only what a round proves is counted: the peer's own events (its node key is its
//! author key), on a topic of a channel both sides are on, after a round with it on
//! that topic ended, while this node was taking gossip in. A single round that
//! pulled an event a moment before its push arrived is a race; [`STRIKES`] in a row,
//! with no push from the peer between them, is not. A path so congested that
//! gossipsub drops what it cannot send looks the same, if nothing gets through
//! between three rounds; reconnecting then costs a round, at most once a minute.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::{AuthorId, Topic};

/// Sessions in a row that must bring a peer's own events by sync, with none of its
/// events by its push between them, before a reconnect is asked for.
pub const STRIKES: u32 = 3;

/// Reconnects with one peer are asked for at most this often.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(60);

/// Most (peer, topic) pairs remembered as caught up; beyond this, new ones are not
/// watched (a round on each topic with each peer: 2,000 topics and 50 peers fit).
const CAUGHT_UP_MAX: usize = 100_000;

/// Most peers whose last reconnect is remembered.
const RECONNECTED_MAX: usize = 4096;

/// What the watch concluded about an event that came by sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Not a lost push (not the peer's own, no round ended before, not shared).
    No,
    /// A lost push; not yet enough in a row to reconnect.
    Counted,
    /// A lost push, and enough in a row: reconnect.
    Reconnect,
}

/// Per-peer push health (see the module docs).
#[derive(Debug)]
pub(crate) struct PushWatch<P> {
    /// Each connected peer's author key, and the reverse.
    authors: BTreeMap<P, AuthorId>,
    peers: BTreeMap<AuthorId, P>,
    /// Topics on which a round with the peer ended since it connected.
    caught_up: BTreeSet<(P, Topic)>,
    /// Rounds in progress, by the generation they started in: a round that saw
    /// gossip ignored while it ran (the generation moved on) proves nothing.
    started: BTreeMap<(P, Topic), u64>,
    /// Moves on whenever gossip may have been ignored ([`PushWatch::forget_rounds`]).
    generation: u64,
    /// Lost pushes in a row, per peer.
    strikes: BTreeMap<P, u32>,
    /// Sessions (the peer pulled from, the topic) that have already counted a strike
    /// against a peer (the third): one session pulling a lost push in several windows
    /// is one loss.
    struck: BTreeSet<(P, Topic, P)>,
    /// When a reconnect was last asked for, per peer (kept across connections).
    reconnected: BTreeMap<P, Instant>,
    /// The driver's latest time.
    now: Option<Instant>,
}

impl<P> Default for PushWatch<P> {
    fn default() -> Self {
        PushWatch {
            authors: BTreeMap::new(),
            peers: BTreeMap::new(),
            caught_up: BTreeSet::new(),
            started: BTreeMap::new(),
            generation: 0,
            strikes: BTreeMap::new(),
            struck: BTreeSet::new(),
            reconnected: BTreeMap::new(),
            now: None,
        }
    }
}

impl<P: Ord + Clone> PushWatch<P> {
    /// The time now (the driver's clock, from its latest input that had one).
    pub fn at(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// `peer` signs its events with `author`.
    pub fn author(&mut self, peer: P, author: AuthorId) {
        self.peers.insert(author, peer.clone());
        self.authors.insert(peer, author);
    }

    /// The peer that writes as `author`, if it is connected and known.
    pub fn peer_of(&self, author: &AuthorId) -> Option<&P> {
        self.peers.get(author)
    }

    /// Whether `peer`'s own run came from `peer` itself.
    pub fn is_own(&self, peer: &P, author: &AuthorId) -> bool {
        self.authors.get(peer) == Some(author)
    }

    /// A round with `peer` on `topic` started (not a pull of a range: only a round
    /// ends holding all the peer had).
    pub fn round_started(&mut self, peer: &P, topic: &Topic) {
        if self.authors.contains_key(peer) && self.started.len() < CAUGHT_UP_MAX {
            self.started
                .insert((peer.clone(), topic.clone()), self.generation);
        }
    }

    /// A session with `peer` on `topic` failed: it proves nothing.
    pub fn round_failed(&mut self, peer: &P, topic: &Topic) {
        self.started.remove(&(peer.clone(), topic.clone()));
        self.session_ended(peer, topic);
    }

    fn session_ended(&mut self, peer: &P, topic: &Topic) {
        self.struck.retain(|(p, t, _)| !(p == peer && t == topic));
    }

    /// Whether a session with `from` on `topic` may still count a strike against
    /// `author_peer` (once per session), and marks it counted.
    pub fn first_in_session(&mut self, from: &P, topic: &Topic, author_peer: &P) -> bool {
        if self.struck.len() >= CAUGHT_UP_MAX {
            return false;
        }
        self.struck
            .insert((from.clone(), topic.clone(), author_peer.clone()))
    }

    /// A session with `peer` on `topic` ended well: if it was a round that ran while
    /// gossip was taken in throughout, we held all the peer had there.
    pub fn caught_up(&mut self, peer: &P, topic: &Topic) {
        self.session_ended(peer, topic);
        let key = (peer.clone(), topic.clone());
        if self.started.remove(&key) == Some(self.generation)
            && self.caught_up.len() < CAUGHT_UP_MAX
        {
            self.caught_up.insert(key);
        }
    }

    /// Whether a round with `peer` on `topic` has ended since it connected.
    pub fn is_caught_up(&self, peer: &P, topic: &Topic) -> bool {
        self.caught_up.contains(&(peer.clone(), topic.clone()))
    }

    /// One of `peer`'s own events came by its push: the path works.
    pub fn pushed(&mut self, peer: &P) {
        self.strikes.remove(peer);
    }

    /// A session brought `peer`'s own events on a caught-up topic by sync.
    pub fn missed(&mut self, peer: &P) -> Missed {
        let Some(now) = self.now else {
            return Missed::Counted;
        };
        let n = self.strikes.entry(peer.clone()).or_insert(0);
        *n += 1;
        if *n < STRIKES {
            return Missed::Counted;
        }
        let recent = self
            .reconnected
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < RECONNECT_EVERY);
        if recent {
            return Missed::Counted;
        }
        self.strikes.remove(peer);
        if self.reconnected.len() >= RECONNECTED_MAX {
            self.reconnected
                .retain(|_, t| now.saturating_duration_since(*t) < RECONNECT_EVERY);
        }
        if self.reconnected.len() < RECONNECTED_MAX {
            self.reconnected.insert(peer.clone(), now);
        }
        Missed::Reconnect
    }

    /// The peer left: what we knew of its rounds goes (the next connection starts
    /// over with a round).
    pub fn gone(&mut self, peer: &P) {
        if let Some(a) = self.authors.remove(peer) {
            self.peers.remove(&a);
        }
        self.caught_up.retain(|(p, _)| p != peer);
        self.started.retain(|(p, _), _| p != peer);
        self.struck.retain(|(p, _, a)| p != peer && a != peer);
        self.strikes.remove(peer);
    }

    /// Gossip may not be taken in (a full disk or a budget's hold begins or ends, the
    /// interest changes), or pulls pause (a round then ends without holding all the
    /// peer had): events that come by sync from now on may have been pushed and
    /// ignored, or never asked for. Starts over; rounds in progress count for nothing.
    pub fn forget_rounds(&mut self) {
        self.generation += 1;
        self.caught_up.clear();
        self.strikes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn author(b: u8) -> AuthorId {
        AuthorId([b; 32])
    }

    fn missed_at(w: &mut PushWatch<u8>, now: Instant) -> Missed {
        w.at(now);
        w.missed(&1)
    }

    #[test]
    fn three_lost_pushes_in_a_row_ask_for_one_reconnect_a_minute() {
        let mut w = PushWatch::default();
        let t0 = Instant::now();
        w.author(1u8, author(1));
        let t = topic("a");
        assert!(!w.is_caught_up(&1, &t));
        // A session that was no round (a pull): nothing.
        w.caught_up(&1, &t);
        assert!(!w.is_caught_up(&1, &t));
        w.round_started(&1, &t);
        w.caught_up(&1, &t);
        assert!(w.is_caught_up(&1, &t));
        assert_eq!(missed_at(&mut w, t0), Missed::Counted);
        assert_eq!(missed_at(&mut w, t0), Missed::Counted);
        assert_eq!(missed_at(&mut w, t0), Missed::Reconnect);
        // The next three within the minute: counted, no second reconnect.
        for _ in 0..3 {
            assert_eq!(
                missed_at(&mut w, t0 + Duration::from_secs(30)),
                Missed::Counted
            );
        }
        // After the minute, the strikes so far are enough.
        let later = t0 + RECONNECT_EVERY + Duration::from_secs(1);
        assert_eq!(missed_at(&mut w, later), Missed::Reconnect);
    }

    #[test]
    fn a_push_between_misses_starts_the_count_over() {
        let mut w = PushWatch::default();
        let now = Instant::now();
        w.author(1u8, author(1));
        assert_eq!(missed_at(&mut w, now), Missed::Counted);
        assert_eq!(missed_at(&mut w, now), Missed::Counted);
        w.pushed(&1);
        assert_eq!(missed_at(&mut w, now), Missed::Counted);
        assert_eq!(missed_at(&mut w, now), Missed::Counted);
        assert_eq!(missed_at(&mut w, now), Missed::Reconnect);
    }

    #[test]
    fn without_a_time_nothing_reconnects() {
        let mut w = PushWatch::default();
        w.author(1u8, author(1));
        for _ in 0..5 {
            assert_eq!(w.missed(&1), Missed::Counted);
        }
    }

    #[test]
    fn a_peer_that_leaves_is_forgotten_but_its_last_reconnect_is_not() {
        let mut w = PushWatch::default();
        let now = Instant::now();
        w.author(1u8, author(1));
        w.round_started(&1, &topic("a"));
        w.caught_up(&1, &topic("a"));
        for _ in 0..3 {
            missed_at(&mut w, now);
        }
        w.gone(&1);
        assert_eq!(w.peer_of(&author(1)), None);
        assert!(!w.is_caught_up(&1, &topic("a")));
        // Unknown peers are not watched.
        w.round_started(&2, &topic("a"));
        w.caught_up(&2, &topic("a"));
        assert!(!w.is_caught_up(&2, &topic("a")));
        // Back, and failing again at once: no reconnect storm.
        w.author(1u8, author(1));
        for _ in 0..3 {
            assert_eq!(
                missed_at(&mut w, now + Duration::from_secs(5)),
                Missed::Counted
            );
        }
        w.forget_rounds();
        w.round_started(&1, &topic("b"));
        w.caught_up(&1, &topic("b"));
        assert!(w.is_caught_up(&1, &topic("b")));
        w.forget_rounds();
        assert!(!w.is_caught_up(&1, &topic("b")));
        // A round that was running when gossip stopped being taken in proves nothing.
        w.round_started(&1, &topic("c"));
        w.forget_rounds();
        w.caught_up(&1, &topic("c"));
        assert!(!w.is_caught_up(&1, &topic("c")));
    }
}
