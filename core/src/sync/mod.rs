//! The anti-entropy sync protocol, as a sans-IO state machine.
//!
//! Two nodes reconcile one topic in a *round*:
//!
//! ```text
//!  A                                   B
//!  Hello{digest(vv_A)}  ─────────────▶  equal digest? ──▶ InSync        (done)
//!                       ◀─────────────  Vector{vv_B}
//!  Vector{vv_A}         ─────────────▶
//!  Want{author, from, limit} ────────▶  (both sides pull what they lack, independently)
//!                       ◀─────────────  Events{a run of up to limit events}
//!  verify range (1 signature), Persist, next Want past it ... until caught up
//! ```
//!
//! Serving is stateless: any `Want` is answered from the store with at most
//! [`Config::window`] events. Pulling is per (peer, topic) *session*: one window in
//! flight per log and at most [`Config::max_inflight`] per session, so a fast sender can
//! never flood a slow receiver, and neither side holds more than a few windows in memory
//! whatever the backlog. Every outstanding request has a deadline; [`Sync::tick`] fails
//! sessions that stall, and the driver retries later, possibly with another peer.
//!
//! A pulled range that does not continue our head at the next seq means the author
//! signed two events at our head's seq: the session fetches the peer's event at that seq,
//! the store records the fork proof and freezes the log, and the proof is sent on.
//!
//! **Writes are values.** The machine reads the store but never writes it: a verified
//! window comes out as [`Output::Persist`] with a ticket, and the driver hands the
//! result of writing it (the store's outcomes) back to [`Sync::persisted`]. Only then
//! does the machine report what was stored, record a fork, or finish the round (raft's
//! `Ready`: persist first, then act on what depended on it). It does not wait to ask for
//! more: the next window of a log is requested from the end of the one being written,
//! and is verified against that window's last event, so decoding and verifying window
//! n+1 overlaps writing window n.
//!
//! Calling contract: feed every message from a peer to [`Sync::handle`], call
//! [`Sync::tick`] regularly (every [`Config::request_timeout`] / 4 or so), call
//! [`Sync::start`] when a round should run (on connect, periodically, on a gap), carry
//! out every returned [`Output`], and answer every `Persist` with [`Sync::persisted`]
//! (in any order, once). `now` is any monotonic clock the driver owns. The store calls
//! are reads that may block: do not drive the machine on the network task.

pub mod msg;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::accept::ForkProof;
use crate::event::{Event, MAX_EVENT_BYTES};
use crate::id::{AuthorId, Offset, Seq};
use crate::storage::{Durability, Outcome, ReadStore};
use crate::topic::Topic;
use crate::verify::{Anchor, RangeError, verify_range};
use crate::vv::VersionVector;

pub use msg::{FrameError, MAX_FRAME_BYTES, Message};

/// Settings of the sync machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most events per `Want`/`Events` exchange.
    pub window: u32,
    /// Most windows in flight per session (one per log at most).
    pub max_inflight: usize,
    /// Deadline for any answer.
    pub request_timeout: Duration,
    /// Durability of pulled events (they are durable on their author's node already).
    pub durability: Durability,
    /// Most sessions at once (per node); more `start`s are refused.
    pub max_sessions: usize,
    /// An application check of each pulled event's body (e.g. that a document change
    /// parses); an event that fails it is a protocol violation by the sender.
    pub check: Option<BodyCheck>,
    /// Whether a log may start over at a peer's base when the peer pruned past our
    /// head (retention): the log then takes the peer's range and drops what it held
    /// ([`crate::storage::Store::restart_log`]). Asked with the range (its first event
    /// is where the log would start; a document snapshot in it may cover what lies
    /// below, see [`crate::snapshot`]) and the peer's head, so that a range that leaves out events this node would keep
    /// (a peer sending only a suffix) is refused. Refused, the pull ends as if the peer
    /// had nothing. `None`: never.
    pub may_restart: Option<RestartCheck>,
    /// The lowest seq this node's retention keeps of a log whose head is at the given
    /// seq (its own rule's `max_events_per_log`), so that a node far behind (new,
    /// reset, or back after the window) asks only for the window instead of pulling
    /// what it would prune at once. The log then starts over there, if `may_restart`
    /// allows it (a document topic's log only on a snapshot covering what lies below;
    /// refused, the pull asks from the node's head).
    /// `None`: from the head.
    pub keeps_from: Option<KeepsFrom>,
    /// The fleet's permissions ([`crate::fleet::Fleet::may_write`]): an event refused
    /// is not stored, and the pull of its log ends before it for the round
    /// ([`Output::Refused`]). The replication machine asks it of gossip too. `None`:
    /// an open fleet, every valid event is stored.
    pub permit: Option<PermitCheck>,
}

/// The function behind a [`PermitCheck`].
/// (The first event of a range, one log in order, that may not be stored, and why:
/// [`crate::fleet::Fleet::first_refused`].)
pub type PermitFn =
    dyn Fn(&[Event]) -> Option<(usize, crate::fleet::Refusal)> + Send + std::marker::Sync;

/// Whether an event's author may write it (see [`Config::permit`]).
#[derive(Clone)]
pub struct PermitCheck(pub std::sync::Arc<PermitFn>);

impl std::fmt::Debug for PermitCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PermitCheck")
    }
}

/// The function behind a [`KeepsFrom`]: `(topic, author, the peer's head seq)`.
pub type KeepsFromFn =
    dyn Fn(&Topic, &crate::AuthorId, Seq) -> Option<Seq> + Send + std::marker::Sync;

/// Where a far-behind log's pull starts (see [`Config::keeps_from`]).
#[derive(Clone)]
pub struct KeepsFrom(pub std::sync::Arc<KeepsFromFn>);

impl std::fmt::Debug for KeepsFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepsFrom")
    }
}

/// The function behind a [`RestartCheck`]: `(the peer's range, never empty, as decoded
/// and verified; the peer's head seq)`.
pub type RestartFn = dyn Fn(&[Event], Seq) -> bool + Send + std::marker::Sync;

/// Which topics' logs may start over at a peer's base (see [`Config::may_restart`]).
#[derive(Clone)]
pub struct RestartCheck(pub std::sync::Arc<RestartFn>);

impl std::fmt::Debug for RestartCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestartCheck")
    }
}

/// The function behind a [`BodyCheck`].
pub type CheckFn = dyn Fn(&Event) -> Result<(), String> + Send + std::marker::Sync;

/// An application check on event bodies: `Err(reason)` refuses the event.
#[derive(Clone)]
pub struct BodyCheck(pub std::sync::Arc<CheckFn>);

impl std::fmt::Debug for BodyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyCheck")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 1024,
            max_inflight: 4,
            request_timeout: Duration::from_secs(10),
            durability: Durability::Buffered,
            max_sessions: 256,
            check: None,
            may_restart: None,
            keeps_from: None,
            permit: None,
        }
    }
}

/// Why a session ended without completing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No answer before the deadline.
    Timeout,
    /// The peer disconnected.
    Disconnected,
    /// The peer broke the protocol (see the accompanying [`Output::Misbehaved`]).
    Violation,
    /// The local store failed.
    Store(String),
    /// Too many sessions already.
    Busy,
}

/// Ways a peer can break the protocol. The driver should penalise or drop that peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// An event that does not decode.
    BadEvent(String),
    /// Events that were not asked for, or from another log or seq than asked.
    Unrequested,
    /// A range that does not verify (bad signature or broken links).
    BadRange(String),
    /// More events than asked for.
    TooMany,
    /// A fork message that proves nothing.
    BadForkProof(String),
}

/// What the driver must do.
#[derive(Debug, Clone)]
pub enum Output<P> {
    /// Send `msg` to `to`.
    Send {
        /// The peer.
        to: P,
        /// The message.
        msg: Message,
    },
    /// Events newly stored, with their local offsets (wake followers, count metrics).
    Stored {
        /// From which peer.
        from: P,
        /// The events.
        events: Vec<(Offset, Event)>,
    },
    /// A round finished: we hold everything the peer had when it started.
    Done {
        /// The peer.
        peer: P,
        /// The topic.
        topic: Topic,
        /// Events pulled in this round.
        pulled: u64,
    },
    /// A round failed.
    Failed {
        /// The peer.
        peer: P,
        /// The topic.
        topic: Topic,
        /// Why.
        reason: Failure,
    },
    /// The peer broke the protocol.
    Misbehaved {
        /// The peer.
        peer: P,
        /// How.
        violation: Violation,
    },
    /// A fork was proven (stored, the log frozen). The proof is also sent to the peer.
    Fork(Box<ForkProof>),
    /// A pulled event the fleet's policy refuses ([`Config::permit`]): not stored, the
    /// pull of its log ended before it.
    Refused {
        /// The peer that sent it.
        from: P,
        /// The event.
        event: Box<Event>,
        /// Why.
        reason: crate::fleet::Refusal,
    },
    /// Write `events` (verified, in order) to the store, then hand the outcomes to
    /// [`Sync::persisted`] with `ticket`.
    Persist {
        /// Names this write in [`Sync::persisted`].
        ticket: u64,
        /// The events, in order.
        events: Vec<Event>,
        /// How durable the write must be.
        durability: Durability,
        /// Start the log over at the first event
        /// ([`crate::storage::Store::restart_log`]) instead of inserting.
        restart: bool,
    },
}

/// What the machine does once a write it asked for is done.
#[derive(Debug)]
enum Pending<P> {
    /// A verified window of `author`'s log pulled in session `key`.
    Window {
        key: (P, Topic),
        author: AuthorId,
        probe: bool,
        events: Vec<Event>,
    },
    /// Both events of a fork proof a peer sent.
    Fork { from: P, proof: Box<ForkProof> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sent Hello, waiting for InSync or Vector.
    Hello,
    /// Pulling what the peer's vector showed.
    Pulling,
}

#[derive(Debug, Clone)]
struct Pull {
    /// Last seq the peer holds (from its vector).
    to: Seq,
    /// Fetch only the peer's event at `to` (our head seq) to prove a fork.
    probe: bool,
    /// Outstanding request: (request id, from, limit), if any.
    inflight: Option<(u64, Seq, u32)>,
    /// The last event of the newest window handed to the driver to persist and not yet
    /// reported written: the next window continues from it.
    tail: Option<Anchor>,
    /// Windows of this log being persisted.
    persisting: u32,
    /// The request in flight skips ahead to this node's retention window
    /// ([`Config::keeps_from`]): its answer starts the log over.
    skipped: bool,
    /// Never skip ahead (a restart there was refused).
    no_skip: bool,
}

impl Pull {
    fn new(to: Seq, probe: bool) -> Self {
        Pull {
            to,
            probe,
            inflight: None,
            tail: None,
            persisting: 0,
            skipped: false,
            no_skip: false,
        }
    }
}

#[derive(Debug)]
struct Session {
    phase: Phase,
    sent_vector: bool,
    pulls: BTreeMap<AuthorId, Pull>,
    deadline: Instant,
    pulled: u64,
}

/// The sync machine of one node, over peers identified by `P`.
#[derive(Debug)]
pub struct Sync<P> {
    config: Config,
    sessions: BTreeMap<(P, Topic), Session>,
    next_req: u64,
    pending: BTreeMap<u64, Pending<P>>,
    next_ticket: u64,
    /// Whether this node pulls (off while its store cannot write: it still serves).
    pulling: bool,
    /// Per log, the first seq the fleet's policy refused ([`Config::permit`]): pulls
    /// stop before it and the lag watch does not count past it, until the policy
    /// changes ([`Sync::forget_refused`]). At most [`REFUSED_MAX`] logs.
    refused: BTreeMap<(Topic, AuthorId), Seq>,
}

/// Most logs remembered as refused from some seq on (beyond it, the memory starts over:
/// a refused window costs one pull per round again, nothing worse).
const REFUSED_MAX: usize = 4096;

type Outs<P> = Vec<Output<P>>;

impl<P: Clone + Ord + Debug> Sync<P> {
    /// A machine with `config`.
    pub fn new(config: Config) -> Self {
        Sync {
            config,
            sessions: BTreeMap::new(),
            next_req: 0,
            pending: BTreeMap::new(),
            next_ticket: 0,
            pulling: true,
            refused: BTreeMap::new(),
        }
    }

    /// Pull or not. While off (the node's disk is full), a peer's round still gets this
    /// node's vector and every window it asks for, but this node asks for nothing, and
    /// gap pulls are refused; pulls already under way end with their next window.
    pub fn set_pulling(&mut self, on: bool) {
        self.pulling = on;
    }

    /// Number of sessions in progress.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Starts a round with `peer` for `topic` (no-op if one is running).
    pub fn start<S: ReadStore>(
        &mut self,
        peer: P,
        topic: Topic,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        let key = (peer.clone(), topic.clone());
        if self.sessions.contains_key(&key) {
            return Vec::new();
        }
        if self.sessions.len() >= self.config.max_sessions {
            return vec![Output::Failed {
                peer,
                topic,
                reason: Failure::Busy,
            }];
        }
        let vv = match store.version_vector(&topic) {
            Ok(vv) => vv,
            Err(e) => return vec![failed_store(peer, topic, e)],
        };
        let digest = match round_digest(&topic, &vv, store) {
            Ok(d) => d,
            Err(e) => return vec![failed_store(peer, topic, e)],
        };
        self.sessions
            .insert(key, self.new_session(Phase::Hello, now));
        vec![Output::Send {
            to: peer,
            msg: Message::Hello { topic, digest },
        }]
    }

    /// Pulls `author`'s log in `topic` from `peer` up to `to` (a gap seen in live push).
    pub fn pull<S: ReadStore>(
        &mut self,
        peer: P,
        topic: Topic,
        author: AuthorId,
        to: Seq,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        if !self.pulling {
            return Vec::new();
        }
        let key = (peer.clone(), topic.clone());
        if !self.sessions.contains_key(&key) {
            if self.sessions.len() >= self.config.max_sessions {
                return vec![Output::Failed {
                    peer,
                    topic,
                    reason: Failure::Busy,
                }];
            }
            let mut s = self.new_session(Phase::Pulling, now);
            s.sent_vector = true; // a targeted pull does not reconcile vectors
            self.sessions.insert(key.clone(), s);
        }
        let to = match self.refused_cap(&key.1, &author) {
            Some(cap) if cap < to => cap,
            _ => to,
        };
        if let Some(s) = self.sessions.get_mut(&key) {
            let p = s.pulls.entry(author).or_insert(Pull::new(to, false));
            p.to = p.to.max(to);
        }
        self.advance(key, now, store)
    }

    /// Remembers that the fleet's policy refused `author`'s log in `topic` from `seq`
    /// on (a window here, or a gossiped run: the replication machine tells it).
    pub fn remember_refused(&mut self, topic: &Topic, author: AuthorId, seq: Seq) {
        if self.refused.len() >= REFUSED_MAX {
            self.refused.clear();
        }
        let e = self.refused.entry((topic.clone(), author)).or_insert(seq);
        *e = (*e).min(seq);
    }

    /// The last seq of `author`'s log in `topic` worth pulling: before the first the
    /// policy refused, if it refused any.
    pub fn refused_cap(&self, topic: &Topic, author: &AuthorId) -> Option<Seq> {
        self.refused
            .get(&(topic.clone(), *author))
            .map(|s| Seq(s.0.saturating_sub(1)))
    }

    /// The policy changed: what it refused may pass now.
    pub fn forget_refused(&mut self) {
        self.refused.clear();
    }

    /// Handles a message from `from`.
    pub fn handle<S: ReadStore>(
        &mut self,
        from: P,
        msg: Message,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        match msg {
            Message::Hello { topic, digest } => {
                let vv = match store.version_vector(&topic) {
                    Ok(vv) => vv,
                    Err(e) => return vec![failed_store(from, topic, e)],
                };
                let ours = match round_digest(&topic, &vv, store) {
                    Ok(d) => d,
                    Err(e) => return vec![failed_store(from, topic, e)],
                };
                if ours == digest {
                    return vec![Output::Send {
                        to: from,
                        msg: Message::InSync { topic },
                    }];
                }
                // The peer differs: answer with our vector and expect theirs, so that we
                // pull too (if we have room for another session).
                let key = (from.clone(), topic.clone());
                if !self.sessions.contains_key(&key)
                    && self.sessions.len() < self.config.max_sessions
                {
                    let mut s = self.new_session(Phase::Hello, now);
                    s.sent_vector = true;
                    self.sessions.insert(key, s);
                }
                vec![Output::Send {
                    to: from,
                    msg: Message::Vector { topic, vv },
                }]
            }
            Message::InSync { topic } => {
                let key = (from.clone(), topic.clone());
                match self.sessions.get(&key) {
                    Some(s) if s.phase == Phase::Hello => {
                        self.sessions.remove(&key);
                        vec![Output::Done {
                            peer: from,
                            topic,
                            pulled: 0,
                        }]
                    }
                    _ => Vec::new(), // stale: a round we already gave up on
                }
            }
            Message::Vector { topic, vv } => self.on_vector(from, topic, vv, now, store),
            Message::Want {
                req,
                topic,
                author,
                from: seq,
                limit,
            } => {
                let limit = limit.min(self.config.window) as usize;
                // Served from the stored encodings, without decoding and hashing each
                // event again (the receiver does that).
                match store.log_range_bytes(&author, &topic, seq, limit) {
                    Ok(evs) => {
                        // A store's log range is a run by its laws; if it somehow is
                        // not, send nothing (the round ends, nothing wrong is stored).
                        let run = if evs.is_empty() {
                            Vec::new()
                        } else {
                            crate::run::encode_stored(&evs).unwrap_or_default()
                        };
                        vec![Output::Send {
                            to: from,
                            msg: Message::Events {
                                req,
                                topic,
                                author,
                                run: Bytes::from(run),
                            },
                        }]
                    }
                    Err(e) => vec![failed_store(from, topic, e)],
                }
            }
            Message::Events {
                req,
                topic,
                author,
                run,
            } => self.on_events(from, req, topic, author, run, now, store),
            Message::Fork { a, b } => self.on_fork(from, a, b, store),
        }
    }

    /// Fails every session whose deadline has passed.
    pub fn tick(&mut self, now: Instant) -> Outs<P> {
        let expired: Vec<(P, Topic)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        self.fail(expired, &Failure::Timeout)
    }

    /// Drops every session with `peer` (it disconnected); returns their failures.
    pub fn peer_gone(&mut self, peer: &P) -> Outs<P> {
        let keys: Vec<(P, Topic)> = self
            .sessions
            .keys()
            .filter(|(p, _)| p == peer)
            .cloned()
            .collect();
        self.fail(keys, &Failure::Disconnected)
    }

    /// Ends the sessions `keys`, reporting `reason` for each.
    fn fail(&mut self, keys: Vec<(P, Topic)>, reason: &Failure) -> Outs<P> {
        keys.into_iter()
            .map(|key| {
                self.sessions.remove(&key);
                Output::Failed {
                    peer: key.0,
                    topic: key.1,
                    reason: reason.clone(),
                }
            })
            .collect()
    }

    fn new_session(&self, phase: Phase, now: Instant) -> Session {
        Session {
            phase,
            sent_vector: false,
            pulls: BTreeMap::new(),
            deadline: now + self.config.request_timeout,
            pulled: 0,
        }
    }

    fn on_vector<S: ReadStore>(
        &mut self,
        from: P,
        topic: Topic,
        theirs: VersionVector,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        let key = (from.clone(), topic.clone());
        let ours = match store.version_vector(&topic) {
            Ok(vv) => vv,
            Err(e) => return vec![failed_store(from, topic, e)],
        };
        let mut out = Vec::new();
        let Some(s) = self.sessions.get_mut(&key) else {
            // Not in a round with this peer (it timed out, or we were busy). Answering
            // with our vector here would let two nodes echo vectors at each other
            // forever; the peer's next round will reach us.
            return out;
        };
        if !s.sent_vector {
            s.sent_vector = true;
            out.push(Output::Send {
                to: from.clone(),
                msg: Message::Vector {
                    topic: topic.clone(),
                    vv: ours.clone(),
                },
            });
        }
        if s.phase == Phase::Hello {
            s.phase = Phase::Pulling;
            s.deadline = now + self.config.request_timeout;
        }
        // The deadline is not refreshed otherwise: a peer's repeated rounds must not keep
        // alive a session whose own request was lost.
        let wants = if self.pulling {
            ours.wants_from(&theirs)
        } else {
            Vec::new()
        };
        for want in wants {
            // Never re-request past a fork we know of.
            match store.log_state(&want.author, &topic) {
                Ok(st) if st.frozen_at.is_some() => continue,
                Ok(_) => {}
                Err(e) => return vec![failed_store(from, topic, e)],
            }
            // Not past what the fleet's policy refused in this log.
            let to = match self.refused.get(&(topic.clone(), want.author)) {
                Some(r) if r.0 <= want.from.0 => continue,
                Some(r) => want.to.min(Seq(r.0 - 1)),
                None => want.to,
            };
            // A repeated vector (a duplicate, or the peer's next round) extends a pull
            // that is under way instead of restarting it.
            let p = s.pulls.entry(want.author).or_insert(Pull::new(to, false));
            p.to = p.to.max(to);
        }
        // Pass on the proof of every fork we know in a log the peer holds up to the fork
        // (a node that only ever sees one side of a cloned key would not learn of the
        // fork otherwise). Receiving it freezes that log there too; it costs one message
        // per forked log in the rounds between nodes that differ.
        for (author, e) in theirs.iter() {
            let frozen = match store.log_state(author, &topic) {
                Ok(st) => st.frozen_at,
                Err(e) => return vec![failed_store(from, topic, e)],
            };
            if let Some(at) = frozen
                && e.seq.0 + 1 >= at.0
                && let Some(send) = fork_message(&from, author, &topic, at, store)
            {
                out.push(send);
            }
        }
        // Same seq, different head id: a fork. Fetch their head event to prove it.
        let diverged = if self.pulling {
            ours.diverged(&theirs)
        } else {
            Vec::new()
        };
        for author in diverged {
            if let Some(e) = ours.get(&author) {
                s.pulls.entry(author).or_insert(Pull::new(e.seq, true));
            }
        }
        out.extend(self.advance(key, now, store));
        out
    }

    /// Sends the next `Want`s of a session, or finishes it.
    fn advance<S: ReadStore>(&mut self, key: (P, Topic), now: Instant, store: &S) -> Outs<P> {
        let window = self.config.window;
        let max_inflight = self.config.max_inflight;
        let pulling = self.pulling;
        let next_req = &mut self.next_req;
        let Some(s) = self.sessions.get_mut(&key) else {
            return Vec::new();
        };
        let (peer, topic) = key.clone();
        let mut out = Vec::new();
        let mut finished = Vec::new();
        let mut inflight = s.pulls.values().filter(|p| p.inflight.is_some()).count();
        for (author, pull) in s.pulls.iter_mut() {
            if pull.inflight.is_some() {
                continue;
            }
            // Paused: no new window; the pull ends once what it has is written.
            if !pulling {
                if pull.persisting == 0 {
                    finished.push(*author);
                }
                continue;
            }
            let state = match store.log_state(author, &topic) {
                Ok(st) => st,
                Err(e) => {
                    self.sessions.remove(&key);
                    return vec![failed_store(peer, topic, e)];
                }
            };
            let mut next = state
                .head
                .map_or(Seq(0), |h| Seq(h.seq.0.saturating_add(1)));
            // A window being written counts as held: ask for what follows it.
            if let Some(t) = pull.tail {
                next = next.max(Seq(t.seq.0.saturating_add(1)));
            }
            // Far behind: ask only for what retention keeps (the log starts over there).
            pull.skipped = false;
            if !pull.probe
                && !pull.no_skip
                && pull.tail.is_none()
                && pull.persisting == 0
                && let Some(k) = self.config.keeps_from.as_ref()
                && let Some(from) = (k.0)(&topic, author, pull.to)
                && from > next
                && from <= pull.to
            {
                next = from;
                pull.skipped = true;
            }
            let reached = state.frozen_at.is_some() || (!pull.probe && next > pull.to);
            if reached {
                // Done once what it pulled is written.
                if pull.persisting == 0 {
                    finished.push(*author);
                }
                continue;
            }
            if (pull.probe && pull.persisting > 0) || inflight >= max_inflight {
                continue;
            }
            let (from, limit) = if pull.probe {
                (pull.to, 1)
            } else {
                let left = u32::try_from(pull.to.0 - next.0 + 1).unwrap_or(u32::MAX);
                (next, window.min(left))
            };
            *next_req += 1;
            let req = *next_req;
            pull.inflight = Some((req, from, limit));
            inflight += 1;
            out.push(Output::Send {
                to: peer.clone(),
                msg: Message::Want {
                    req,
                    topic: topic.clone(),
                    author: *author,
                    from,
                    limit,
                },
            });
        }
        for a in finished {
            s.pulls.remove(&a);
        }
        if !out.is_empty() {
            s.deadline = now + self.config.request_timeout;
        }
        if s.pulls.is_empty() && s.phase == Phase::Pulling {
            let pulled = s.pulled;
            self.sessions.remove(&key);
            out.push(Output::Done {
                peer,
                topic,
                pulled,
            });
        }
        out
    }

    fn violation(&mut self, key: (P, Topic), violation: Violation) -> Outs<P> {
        self.sessions.remove(&key);
        vec![
            Output::Misbehaved {
                peer: key.0.clone(),
                violation,
            },
            Output::Failed {
                peer: key.0,
                topic: key.1,
                reason: Failure::Violation,
            },
        ]
    }

    #[allow(clippy::too_many_arguments)]
    fn on_events<S: ReadStore>(
        &mut self,
        from: P,
        req: u64,
        topic: Topic,
        author: AuthorId,
        run: Bytes,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        let key = (from.clone(), topic.clone());
        let Some(pull) = self
            .sessions
            .get_mut(&key)
            .and_then(|s| s.pulls.get_mut(&author))
        else {
            // Late answer to a round we abandoned: harmless, ignore.
            return Vec::new();
        };
        let probe = pull.probe;
        let tail = pull.tail;
        let pull_to = pull.to;
        let skipped = pull.skipped && !probe;
        let (want_from, limit) = match pull.inflight {
            Some((r, f, l)) if r == req => (f, l),
            // An answer to an earlier request of ours that we gave up on: ignore.
            _ => return Vec::new(),
        };
        pull.inflight = None;
        // Paused (a full disk, a disk budget's hold) since it was asked for: not
        // written. Writing what was in flight when the pause began took a node over
        // its disk budget; the pull ends, and a round after the pause asks again.
        if !self.pulling && !probe {
            if pull.persisting > 0 {
                pull.to = Seq(0);
            } else if let Some(s) = self.sessions.get_mut(&key) {
                s.pulls.remove(&author);
            }
            return self.advance(key, now, store);
        }
        if let Some(s) = self.sessions.get_mut(&key) {
            s.deadline = now + self.config.request_timeout;
        }
        // The next window of this log, asked for as soon as this one's header says
        // where it ends (before decoding and verifying it), so the peer reads and sends
        // it while we verify this one.
        let mut prefetch = None;
        let mut pruned = false;
        let mut restart = skipped;
        let events = if run.is_empty() {
            Vec::new()
        } else {
            match crate::run::header(&run) {
                Ok(h) if h.count > limit => return self.violation(key, Violation::TooMany),
                Ok(h) if h.author != author || h.topic != topic || h.first < want_from => {
                    return self.violation(key, Violation::Unrequested);
                }
                // The peer pruned what we asked for (retention): its range starts at its
                // base. Not a violation. The log starts over there if it may (see
                // `Config::may_restart`, asked once the range is decoded); otherwise
                // this peer cannot continue it, and the pull ends as if the peer had
                // nothing (another may still hold the gap).
                Ok(h) if h.first > want_from => {
                    if probe || self.config.may_restart.is_none() {
                        pruned = true;
                    } else {
                        restart = true;
                    }
                }
                // (Not after a skip ahead: the range must first be allowed to start the
                // log over; the next window is asked for once it is.)
                Ok(h) if !probe && !skipped => {
                    let next = Seq(h.first.0.saturating_add(u64::from(h.count)));
                    prefetch = self.prefetch(&key, author, next, now, store);
                }
                Ok(_) => {}
                Err(e) => return self.violation(key, Violation::BadEvent(e.to_string())),
            }
            match crate::run::decode(&run, MAX_FRAME_BYTES) {
                Ok(_) if pruned => Vec::new(),
                Ok(evs) if restart && (evs.is_empty() || !self.may_restart(&evs, pull_to)) => {
                    Vec::new()
                }
                Ok(evs) => evs,
                Err(e) => return self.violation(key, Violation::BadEvent(e.to_string())),
            }
        };
        let Some(first) = events.first() else {
            // A skip ahead to our window that may not start the log over (a document):
            // ask again from our head.
            if skipped
                && !run.is_empty()
                && let Some(s) = self.sessions.get_mut(&key)
                && let Some(p) = s.pulls.get_mut(&author)
            {
                p.no_skip = true;
                return self.advance(key, now, store);
            }
            // The peer has nothing more for this log (it may have lost data, or is
            // frozen): stop pulling it in this round.
            // (A window still being written ends the pull once it is.)
            if let Some(s) = self.sessions.get_mut(&key)
                && let Some(p) = s.pulls.get_mut(&author)
            {
                if p.persisting > 0 {
                    p.to = Seq(0);
                } else {
                    s.pulls.remove(&author);
                }
            }
            return self.advance(key, now, store);
        };
        if first.author() != author
            || first.topic() != &topic
            || (first.seq() != want_from && !restart)
        {
            return self.violation(key, Violation::Unrequested);
        }
        let state = match store.log_state(&author, &topic) {
            Ok(st) => st,
            Err(e) => {
                self.sessions.remove(&key);
                return vec![failed_store(from, topic, e)];
            }
        };
        // The window continues the one being written, if it follows it; else our head.
        // A restart has nothing before it to link to.
        let after_tail = tail.filter(|t| t.seq.next() == Some(want_from) && !restart);
        let anchor = after_tail.or_else(|| {
            state
                .head
                .filter(|h| h.seq.next() == Some(want_from) && !restart)
                .map(|h| Anchor {
                    seq: h.seq,
                    id: h.id,
                })
        });
        let verified = if probe {
            verify_range(&events[..1], None)
        } else {
            match verify_range(&events, anchor) {
                // Valid run that starts right after our head but links elsewhere: the
                // author forked at our head's seq. Ask for their event there.
                // (After a window of the same peer's, a break in the links is a lie.)
                Err(RangeError::DoesNotContinue { .. })
                    if after_tail.is_none() && verify_range(&events, None).is_ok() =>
                {
                    if let Some(s) = self.sessions.get_mut(&key)
                        && let Some(p) = s.pulls.get_mut(&author)
                        && let Some(h) = state.head
                    {
                        self.next_req += 1;
                        let req = self.next_req;
                        p.to = h.seq;
                        p.probe = true;
                        p.inflight = Some((req, h.seq, 1));
                        s.deadline = now + self.config.request_timeout;
                        return vec![Output::Send {
                            to: from,
                            msg: Message::Want {
                                req,
                                topic,
                                author,
                                from: h.seq,
                                limit: 1,
                            },
                        }];
                    }
                    Ok(())
                }
                other => other,
            }
        };
        if let Err(e) = verified {
            return self.violation(key, Violation::BadRange(e.to_string()));
        }
        if let Some(check) = &self.config.check
            && let Some(Err(e)) = events.iter().map(|ev| (check.0)(ev)).find(Result::is_err)
        {
            return self.violation(key, Violation::BadEvent(e));
        }
        // The fleet's permissions: what the author may not write is not stored. The
        // window's permitted prefix is (a revoked author's events from before its
        // revocation stay valid), and the pull of this log ends there for this round.
        // Not a violation: the peer may not know the policy that refuses it yet.
        let mut events = events;
        let mut refused_out = None;
        if let Some(permit) = &self.config.permit
            && let Some((i, reason)) = (permit.0)(&events)
        {
            self.remember_refused(&topic, author, events[i].seq());
            refused_out = Some(Output::Refused {
                from: from.clone(),
                event: Box::new(events[i].clone()),
                reason,
            });
            prefetch = None;
            events.truncate(i);
            if let Some(s) = self.sessions.get_mut(&key)
                && let Some(p) = s.pulls.get_mut(&author)
            {
                p.inflight = None;
                match events.last() {
                    Some(last) => p.to = last.seq(),
                    None if p.persisting > 0 => p.to = Seq(0),
                    None => {
                        s.pulls.remove(&author);
                    }
                }
            }
            if events.is_empty() {
                let mut out: Outs<P> = refused_out.into_iter().collect();
                out.extend(self.advance(key, now, store));
                return out;
            }
        }
        // Verified: hand it to the driver to write, and ask for the next window now.
        let last = events.last().map(|e| Anchor {
            seq: e.seq(),
            id: e.id(),
        });
        if let Some(s) = self.sessions.get_mut(&key)
            && let Some(p) = s.pulls.get_mut(&author)
        {
            p.persisting += 1;
            if !probe {
                p.tail = last;
            }
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let durability = self.config.durability;
        self.pending.insert(
            ticket,
            Pending::Window {
                key: key.clone(),
                author,
                probe,
                events: events.clone(),
            },
        );
        let mut out: Outs<P> = refused_out.into_iter().chain(prefetch).collect();
        out.push(Output::Persist {
            ticket,
            events,
            durability,
            restart,
        });
        out.extend(self.advance(key, now, store));
        out
    }

    /// Whether a log may start over at the first event of `range` (see
    /// [`Config::may_restart`]).
    fn may_restart(&self, range: &[Event], peer_head: Seq) -> bool {
        self.config
            .may_restart
            .as_ref()
            .is_some_and(|f| (f.0)(range, peer_head))
    }

    /// Asks for the window of `author`'s log that starts at `next`, if the pull wants
    /// it and has nothing in flight.
    fn prefetch<S: ReadStore>(
        &mut self,
        key: &(P, Topic),
        author: AuthorId,
        next: Seq,
        now: Instant,
        store: &S,
    ) -> Option<Output<P>> {
        if !self.pulling {
            return None;
        }
        let window = self.config.window;
        // Past what the store already holds (gossip may have brought more meanwhile).
        let held = store
            .log_state(&author, &key.1)
            .ok()?
            .head
            .map_or(Seq(0), |h| Seq(h.seq.0.saturating_add(1)));
        let next = next.max(held);
        let s = self.sessions.get_mut(key)?;
        let p = s.pulls.get_mut(&author)?;
        if p.probe || p.inflight.is_some() || next > p.to {
            return None;
        }
        let left = u32::try_from(p.to.0 - next.0 + 1).unwrap_or(u32::MAX);
        let limit = window.min(left);
        self.next_req += 1;
        let req = self.next_req;
        p.inflight = Some((req, next, limit));
        p.skipped = false;
        s.deadline = now + self.config.request_timeout;
        Some(Output::Send {
            to: key.0.clone(),
            msg: Message::Want {
                req,
                topic: key.1.clone(),
                author,
                from: next,
                limit,
            },
        })
    }

    /// The outcome of the write named `ticket` (an [`Output::Persist`]): the store's
    /// outcome per event, or why the write failed. Reports what was stored and any fork
    /// it proved, and goes on with the round.
    pub fn persisted<S: ReadStore>(
        &mut self,
        ticket: u64,
        result: Result<Vec<Outcome>, String>,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        match self.pending.remove(&ticket) {
            None => Vec::new(),
            Some(Pending::Window {
                key,
                author,
                probe,
                events,
            }) => self.window_written(key, author, probe, events, result, now, store),
            Some(Pending::Fork { from, proof }) => match result {
                Ok(o) if o.iter().any(|o| matches!(o, Outcome::Fork(_))) => {
                    vec![Output::Fork(proof)]
                }
                Ok(o) => {
                    let stored: Vec<(Offset, Event)> = o
                        .iter()
                        .zip([proof.ours.clone(), proof.theirs.clone()])
                        .filter_map(|(o, e)| match o {
                            Outcome::Appended(off) => Some((*off, e)),
                            _ => None,
                        })
                        .collect();
                    if stored.is_empty() {
                        Vec::new()
                    } else {
                        vec![Output::Stored {
                            from,
                            events: stored,
                        }]
                    }
                }
                Err(e) => vec![failed_store(from, proof.ours.topic().clone(), e)],
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn window_written<S: ReadStore>(
        &mut self,
        key: (P, Topic),
        author: AuthorId,
        probe: bool,
        events: Vec<Event>,
        result: Result<Vec<Outcome>, String>,
        now: Instant,
        store: &S,
    ) -> Outs<P> {
        let (from, topic) = key.clone();
        let outcomes = match result {
            Ok(o) => o,
            Err(e) => {
                // Windows after this one were verified against it: the round ends.
                if self.sessions.remove(&key).is_some() {
                    return vec![failed_store(from, topic, e)];
                }
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let mut stored = Vec::new();
        let mut fork_at = None;
        let mut clean = true;
        for (ev, o) in events.into_iter().zip(outcomes) {
            match o {
                Outcome::Appended(off) => stored.push((off, ev)),
                Outcome::Duplicate => {}
                Outcome::Fork(seq) => {
                    fork_at = Some(seq);
                    clean = false;
                }
                _ => clean = false,
            }
        }
        if let Some(s) = self.sessions.get_mut(&key) {
            s.pulled += stored.len() as u64;
            if let Some(p) = s.pulls.get_mut(&author) {
                p.persisting = p.persisting.saturating_sub(1);
                // Nothing left in writing, or the store did not take it as a
                // continuation (another path wrote the log meanwhile): go on from what
                // the store holds.
                if p.persisting == 0 || !clean {
                    p.tail = None;
                }
            }
            if probe {
                // A probe answered: the fork (if any) is recorded; this log is done.
                s.pulls.remove(&author);
            }
        }
        if !stored.is_empty() {
            out.push(Output::Stored {
                from: from.clone(),
                events: stored,
            });
        }
        if let Some(seq) = fork_at {
            out.extend(self.announce_fork(&from, &author, &topic, seq, store));
        }
        out.extend(self.advance(key, now, store));
        out
    }

    fn announce_fork<S: ReadStore>(
        &mut self,
        to: &P,
        author: &AuthorId,
        topic: &Topic,
        seq: Seq,
        store: &S,
    ) -> Outs<P> {
        let Some(send) = fork_message(to, author, topic, seq, store) else {
            return Vec::new();
        };
        let proof = store.forks().ok().and_then(|forks| {
            forks
                .into_iter()
                .find(|f| f.author() == *author && f.topic() == topic && f.seq() == seq)
        });
        let mut out = vec![send];
        out.extend(proof.map(|f| Output::Fork(Box::new(f))));
        out
    }

    fn on_fork<S: ReadStore>(&mut self, from: P, a: Bytes, b: Bytes, store: &S) -> Outs<P> {
        let decode = |x: Bytes| Event::decode(x, MAX_EVENT_BYTES);
        let (a, b) = match (decode(a), decode(b)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return vec![Output::Misbehaved {
                    peer: from,
                    violation: Violation::BadForkProof(e.to_string()),
                }];
            }
        };
        let proof = ForkProof { ours: a, theirs: b };
        if let Err(why) = proof.check() {
            return vec![Output::Misbehaved {
                peer: from,
                violation: Violation::BadForkProof(why.into()),
            }];
        }
        // A proof matters only about a log this node holds at that seq: otherwise it
        // would be a way to store two events of any log, any topic, past every check
        // (a fleet's permissions, interest). Ignored, not a violation: the peer may
        // tell every neighbour of a fork it found.
        // It holds one of the two, or its head is just before them and one of them
        // continues it (that one is then an ordinary next event of a held log).
        let (author, topic, seq) = (
            proof.ours.author(),
            proof.ours.topic().clone(),
            proof.ours.seq(),
        );
        let sides = [proof.ours.id(), proof.theirs.id()];
        let held = store
            .log_range(&author, &topic, seq, 1)
            .ok()
            .and_then(|evs| evs.into_iter().next())
            .is_some_and(|e| e.seq() == seq && sides.contains(&e.id()));
        let continues = || {
            store
                .log_state(&author, &topic)
                .ok()
                .and_then(|st| st.head)
                .is_some_and(|h| {
                    h.seq.next() == Some(seq)
                        && [&proof.ours, &proof.theirs]
                            .iter()
                            .any(|e| e.prev() == Some(h.id))
                })
        };
        if !held && !continues() {
            return Vec::new();
        }
        if let Some(permit) = &self.config.permit {
            for ev in [&proof.ours, &proof.theirs] {
                if let Some((_, reason)) = (permit.0)(std::slice::from_ref(ev)) {
                    return vec![Output::Refused {
                        from,
                        event: Box::new(ev.clone()),
                        reason,
                    }];
                }
            }
        }
        // Writing both makes the store record the fork (it holds one of them).
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let events = vec![proof.ours.clone(), proof.theirs.clone()];
        self.pending.insert(
            ticket,
            Pending::Fork {
                from,
                proof: Box::new(proof),
            },
        );
        vec![Output::Persist {
            ticket,
            events,
            durability: self.config.durability,
            restart: false,
        }]
    }
}

fn failed_store<P>(peer: P, topic: Topic, e: impl std::fmt::Display) -> Output<P> {
    Output::Failed {
        peer,
        topic,
        reason: Failure::Store(e.to_string()),
    }
}

/// The digest a round starts with: the version vector's, mixed with the forks known in
/// the topic (author and seq) when there are any. Two nodes that hold the same events
/// but differ in what forks they know of then exchange vectors, and the one that knows
/// passes the proof on ([`Sync::handle`] of `Vector`); with equal plain digests the
/// round would end at once with `InSync` and the other node would never learn of the
/// fork (the replication machine's property test found it). A topic without forks has
/// the plain digest, as before.
fn round_digest<S: ReadStore>(
    topic: &Topic,
    vv: &VersionVector,
    store: &S,
) -> Result<crate::vv::Digest, S::Error> {
    let mut forks: Vec<(AuthorId, Seq)> = store
        .forks()?
        .iter()
        .filter(|f| f.topic() == topic)
        .map(|f| (f.author(), f.seq()))
        .collect();
    if forks.is_empty() {
        return Ok(vv.digest());
    }
    forks.sort();
    forks.dedup();
    let mut h = blake3::Hasher::new_derive_key("murmur round digest v1: known forks");
    h.update(&vv.digest().0);
    for (author, seq) in forks {
        h.update(&author.0);
        h.update(&seq.0.to_be_bytes());
    }
    Ok(crate::vv::Digest(*h.finalize().as_bytes()))
}

/// The message that passes on our proof of the fork of `author`'s log at `seq`, if we
/// hold one.
fn fork_message<P: Clone, S: ReadStore>(
    to: &P,
    author: &AuthorId,
    topic: &Topic,
    seq: Seq,
    store: &S,
) -> Option<Output<P>> {
    let forks = store.forks().ok()?;
    let f = forks
        .into_iter()
        .find(|f| f.author() == *author && f.topic() == topic && f.seq() == seq)?;
    Some(Output::Send {
        to: to.clone(),
        msg: Message::Fork {
            a: f.ours.bytes().clone(),
            b: f.theirs.bytes().clone(),
        },
    })
}
