//! The replication policy of a node, as one sans-IO machine: everything a node decides
//! about live push and anti-entropy, which the daemon and the simulator both run.
//!
//! [`Replicator`] wraps the anti-entropy [`Sync`] machine and adds what sits around it:
//!
//! - **gossip in**: a gossiped run is decoded (bounded), checked for its topic, the
//!   node's interest and the application's body check, and its newest signature is
//!   verified (a run is hash-linked by its encoding, so the newest event vouches for
//!   the rest; the newest events of a batch are verified together). Valid runs are
//!   stored in one write. Each message gets a verdict for gossipsub: `Accept` (forward
//!   it) when it brought anything new, `Ignore` when it brought nothing or is off
//!   interest, `Reject` when it is invalid;
//! - **penalties**: a peer whose messages are rejected [`Config::rejects_before_ban`]
//!   times, or that breaks the sync protocol once, is banned ([`Output::Ban`]);
//! - **gaps**: an event past a gap in its log is held (at most
//!   [`Config::pending_max`] events) until the gap fills; a gap still open after
//!   [`Config::gap_wait`] is pulled from the peer that sent the event past it;
//! - **forks**: an event that does not link to our head (the author signed another
//!   event at that seq) starts a round with its sender, which proves the fork;
//! - **rounds**: a round on every topic of interest with each peer that connects, a
//!   round with the next connected peer in turn every [`Config::round_every`], a round
//!   when a peer announces a topic we replicate, and a round on demand;
//! - **retries**: a round that failed (no answer in time, the store failed, too many
//!   sessions) is run again with the same peer after [`Config::retry_first`], doubling
//!   up to [`Config::round_every`] while it keeps failing; the third failure in a row
//!   is reported ([`Output::Stuck`]). Without this a failed round waited for its turn
//!   in the round-robin: with 256 peers and a 10 s interval, 43 minutes;
//! - **lag watchdog**: a peer's vector that shows events we lack starts a watch; if
//!   what we lack from it has not shrunk after [`Config::lag_watch`], it is reported
//!   ([`Output::Lagging`]) and rounds on the topic run with that peer and the next;
//! - **interest**: which topics the node replicates (patterns), which it subscribes
//!   to, and what changes when the interest does;
//! - **own logs after a repair**: when started with topics to confirm, it reports
//!   [`Output::OwnLogsConfirmed`] once a round with a peer has finished on each.
//!
//! The driver feeds it inputs (messages, peer events, durable local events, ticks with
//! `now`, results of writes) and carries out every [`Output`]: sending, gossiping,
//! verdicts, bans, subscriptions, and writes. **The machine never writes the store**:
//! like [`Sync`] it reads it, and what it wants stored comes out as
//! [`Output::Persist`]; the driver writes it (the daemon through its one store writer,
//! group-committed with everything else) and hands the outcomes back to
//! [`Replicator::persisted`]. What depends on the write (a gossip verdict, and so
//! forwarding; events held past a gap; a round's end) waits for it: nothing is
//! forwarded before it is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::channel;
use crate::event::{Event, EventError};
use crate::id::{AuthorId, Seq};
use crate::run;
use crate::storage::{Durability, Outcome, ReadStore};
use crate::sync::{self, Message, Sync};
use crate::topic::{Pattern, Topic};
use crate::verify::verify_batch;

/// Verifies the signatures of `events` (the newest event of each run): one result per
/// event, in order. [`verify_batch`] unless the driver gives another (the simulator
/// caches results shared by all its nodes).
pub type VerifyFn = dyn Fn(&[Event]) -> Vec<Result<(), EventError>> + Send + std::marker::Sync;

/// Settings of the replication machine.
#[derive(Clone)]
pub struct Config {
    /// Topics this node replicates.
    pub interest: Vec<Pattern>,
    /// Interval between periodic rounds (with the next connected peer in turn).
    pub round_every: Duration,
    /// Wait before running a failed round again with the same peer; doubles with each
    /// failure in a row, up to `round_every`.
    pub retry_first: Duration,
    /// How long what this node lacks from a peer (by its last vector) may stay without
    /// shrinking before it is reported and other peers are tried.
    pub lag_watch: Duration,
    /// How long a gap may stay open before its range is pulled.
    pub gap_wait: Duration,
    /// Topic-aware discovery: for each interest pattern, the connected peers wanted
    /// that replicate an overlapping pattern. Fewer, and the machine asks for a lookup
    /// of the pattern's rendezvous keys ([`Output::FindPeers`]). 0 turns it off.
    pub topic_links: usize,
    /// How often the topic links are counted (the first time 2 s after the first tick).
    pub discover_every: Duration,
    /// Most gossiped events held past gaps (beyond this, the gap is pulled at once).
    pub pending_max: usize,
    /// Rejected gossip messages a peer may forward before it is banned (a few may be
    /// honest: a peer's checks can differ from ours, e.g. a larger change limit).
    pub rejects_before_ban: u32,
    /// Largest gossiped run accepted, bytes.
    pub gossip_max_bytes: usize,
    /// Most encoded event bytes in one gossiped run (a larger event is a run of its
    /// own).
    pub run_max_bytes: usize,
    /// The anti-entropy machine's settings (including the body check).
    pub sync: sync::Config,
    /// Signature verification of gossip; `None`: [`verify_batch`].
    pub verify: Option<std::sync::Arc<VerifyFn>>,
}

impl Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("interest", &self.interest)
            .field("round_every", &self.round_every)
            .field("gap_wait", &self.gap_wait)
            .field("pending_max", &self.pending_max)
            .field("rejects_before_ban", &self.rejects_before_ban)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interest: vec![Pattern::new("#").unwrap_or_else(|_| unreachable!("# parses"))],
            round_every: Duration::from_secs(10),
            retry_first: Duration::from_secs(1),
            lag_watch: Duration::from_secs(60),
            gap_wait: Duration::from_millis(300),
            topic_links: 3,
            discover_every: Duration::from_secs(10),
            pending_max: 16_384,
            rejects_before_ban: 3,
            gossip_max_bytes: 2 << 20,
            run_max_bytes: 64 * 1024,
            sync: sync::Config::default(),
            verify: None,
        }
    }
}

/// What gossipsub should do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: deliver and forward.
    Accept,
    /// Valid but nothing new, or not a topic we replicate: drop quietly.
    Ignore,
    /// Invalid: drop, and count it against the sender.
    Reject,
}

/// A gossiped message as received: who forwarded it, its id (for the verdict), the
/// gossip channel it came on, and its bytes (a run).
#[derive(Debug, Clone)]
pub struct Gossip<P, M> {
    /// The peer that forwarded it.
    pub from: P,
    /// The message id, returned with the verdict.
    pub id: M,
    /// The gossipsub topic it came on: a channel name ([`channel::name`]).
    pub channel: String,
    /// The run's bytes.
    pub data: Vec<u8>,
}

/// What the driver must do.
#[derive(Debug, Clone)]
pub enum Output<P, M> {
    /// An output of the anti-entropy machine (send, stored, done, failed, misbehaved,
    /// fork); the machine has already acted on it (held events drained, bans, own-log
    /// confirmation).
    Sync(sync::Output<P>),
    /// Gossip a run of durable events on a channel (one output per channel; see
    /// [`channel::cover`]).
    Gossip {
        /// The channel.
        channel: Pattern,
        /// The encoded run.
        data: Vec<u8>,
    },
    /// The verdict on a gossiped message.
    Verdict {
        /// The message id.
        id: M,
        /// The peer that forwarded it.
        from: P,
        /// What to do with it.
        verdict: Verdict,
    },
    /// Gossiped events newly stored (held ones too, once their gap filled).
    Received {
        /// The events.
        events: Vec<Event>,
    },
    /// A gossiped message was refused; `reason` is a stable label.
    Rejected {
        /// The peer that forwarded it.
        from: P,
        /// `malformed`, `wrong_channel`, `bad_body`, `bad_signature`, `pending_full`.
        reason: &'static str,
    },
    /// A gossiped run the fleet's policy refuses (see [`sync::Config::permit`]): not
    /// stored, not forwarded, not held against the sender (ignored for gossipsub).
    Refused {
        /// The peer that forwarded it.
        from: P,
        /// The first event refused.
        event: Box<Event>,
        /// Why.
        reason: crate::fleet::Refusal,
    },
    /// Gossiped events we already held.
    Duplicates(u64),
    /// A gossiped event conflicted with a held one at its seq: the store kept the fork
    /// proof and froze the log.
    Forked(Event),
    /// Keep `peer` out: it misbehaved (`bad_gossip` or `sync_violation`).
    Ban {
        /// The peer.
        peer: P,
        /// A stable label.
        reason: &'static str,
    },
    /// Announce that this node replicates what the rendezvous key stands for (a
    /// Kademlia provider record; see [`channel::rendezvous`]).
    Provide(String),
    /// Stop announcing a rendezvous key (no interest pattern needs it any more).
    Unprovide(String),
    /// Look up the providers of a rendezvous key and connect to up to `want` of them
    /// that are not connected yet: an interest pattern has fewer than
    /// [`Config::topic_links`] connected peers that replicate it.
    FindPeers {
        /// The key.
        key: String,
        /// Most new connections to make.
        want: usize,
    },
    /// A connected peer's own events came by sync after a round with it had ended on
    /// their topic: its live push to us was lost (see [`crate::push`]). `reconnect`:
    /// enough in a row; the driver should close the connection and dial again.
    PushLost {
        /// The peer.
        peer: P,
        /// Its events that came by sync.
        events: u64,
        /// Close the connection and dial again.
        reconnect: bool,
    },
    /// Join the gossip channel of an interest pattern.
    Subscribe(Pattern),
    /// Leave the gossip channel of a pattern no longer of interest.
    Unsubscribe(Pattern),
    /// Rounds with `peer` on `topic` have failed `failures` times in a row (reported at
    /// the third, then every third): replication with it is stuck, and is retried with
    /// back-off.
    Stuck {
        /// The peer.
        peer: P,
        /// The topic.
        topic: Topic,
        /// Failures in a row.
        failures: u32,
        /// The last failure.
        reason: sync::Failure,
    },
    /// What this node lacks from `peer` on `topic` (by the peer's last vector) has not
    /// shrunk for `stalled`: rounds on the topic now run with it and the next peer.
    Lagging {
        /// The peer.
        peer: P,
        /// The topic.
        topic: Topic,
        /// Events lacked.
        behind: u64,
        /// For how long it has not shrunk.
        stalled: Duration,
    },
    /// Write `events` (verified, in order) to the store, then hand the outcomes to
    /// [`Replicator::persisted`] with `ticket`.
    Persist {
        /// Names this write in [`Replicator::persisted`].
        ticket: Ticket,
        /// The events, in order.
        events: Vec<Event>,
        /// How durable the write must be.
        durability: Durability,
        /// Start the log over at the first event
        /// ([`crate::storage::Store::restart_log`]) instead of inserting.
        restart: bool,
    },
    /// A round with a peer has finished on every topic to confirm (see
    /// [`Replicator::new`]): the node's own logs are as complete as its peers can make
    /// them.
    OwnLogsConfirmed,
}

type Outs<P, M> = Vec<Output<P, M>>;

/// Most (peer, topic) pairs watched for lag.
const MAX_WATCHED: usize = 4096;

/// What this node lacked from a peer by its last vector.
#[derive(Debug)]
struct Watch {
    theirs: crate::vv::VersionVector,
    /// Since when it has not shrunk.
    since: Instant,
    /// How much it was then.
    behind: u64,
    /// When it was last reported.
    reported: Option<Instant>,
}

/// Names a write the machine asked for ([`Output::Persist`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(TicketOf);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TicketOf {
    /// A write of the anti-entropy machine.
    Sync(u64),
    /// A write of this machine (gossip, held events).
    Own(u64),
}

/// What the machine does once one of its writes is done.
#[derive(Debug)]
enum Pending<P, M> {
    /// Verified gossip runs.
    Gossip(Vec<Arrived<P, M>>),
    /// Held events of one log that continue its head.
    Drain {
        topic: Topic,
        author: AuthorId,
        events: Vec<Event>,
    },
}

/// When a log's gap was seen, who sent the event past it, and the held events by seq.
type Held<P> = (Instant, P, BTreeMap<Seq, Event>);

/// A verified gossip run waiting for its write: its sender, message id, the channel it
/// came on, the hash of its bytes, and its events.
#[derive(Debug)]
struct Arrived<P, M> {
    from: P,
    id: M,
    on: Pattern,
    hash: [u8; 32],
    events: Vec<Event>,
}

/// Runs accepted lately by hash, with their topic and channel, and their order.
type RecentRuns = (
    std::collections::VecDeque<[u8; 32]>,
    BTreeMap<[u8; 32], (Topic, Pattern)>,
);

/// Most sessions queued for room (rounds beyond it are dropped; the next round, retry
/// or watchdog brings them).
const MAX_QUEUED: usize = 65_536;

/// Sessions waiting for room, in order, and as a set.
type QueuedSessions<P> = (std::collections::VecDeque<(P, Topic)>, BTreeSet<(P, Topic)>);

/// Most runs remembered as recently accepted (see [`Replicator::gossiped`]).
const RECENT_RUNS: usize = 4096;

/// The replication machine of one node.
pub struct Replicator<P, M> {
    config: Config,
    sync: Sync<P>,
    peers: BTreeSet<P>,
    /// The channels joined: the interest's patterns, at most [`channel::MAX_JOINED`].
    joined: BTreeSet<Pattern>,
    /// The channels each peer announced (its interest), at most
    /// [`channel::MAX_PER_PEER`] each.
    channels: BTreeMap<P, BTreeSet<Pattern>>,
    /// Hashes of runs accepted lately, with their topic and the channel they came on,
    /// oldest first: the same run on another channel we are on is forwarded there too
    /// without a second look.
    recent: RecentRuns,
    /// Sessions waiting for a free one, in order (at most [`MAX_QUEUED`]).
    queued: QueuedSessions<P>,
    /// Rendezvous keys announced.
    provided: BTreeSet<String>,
    /// When the topic links are next counted.
    next_discover: Option<Instant>,
    held: BTreeMap<(Topic, AuthorId), Held<P>>,
    held_len: usize,
    rejects: BTreeMap<P, u32>,
    next_peer: usize,
    last_round: Option<Instant>,
    unconfirmed: Option<BTreeSet<Topic>>,
    pending: BTreeMap<u64, Pending<P, M>>,
    next_ticket: u64,
    /// Logs whose held events are being written.
    draining: BTreeSet<(Topic, AuthorId)>,
    /// Rounds that failed: failures in a row, and when to run them again (`None`: the
    /// failure is not yet scheduled; `tick` does it).
    retries: BTreeMap<(P, Topic), (u32, Option<Instant>)>,
    /// Peers whose last vector showed events we lack: that vector, since when what we
    /// lack has not shrunk, and how much it was then.
    watch: BTreeMap<(P, Topic), Watch>,
    last_watch: Option<Instant>,
    /// The store cannot write: pull nothing (see [`Replicator::set_store_full`]).
    full: bool,
    /// Pulls paused (see [`Replicator::set_pulls_paused`]).
    paused: bool,
    /// Whether each peer's live push reaches us.
    push: crate::push::PushWatch<P>,
    _msg: std::marker::PhantomData<fn() -> M>,
}

impl<P, M> Debug for Replicator<P, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("peers", &self.peers.len())
            .field("held", &self.held_len)
            .finish_non_exhaustive()
    }
}

/// One gossip output per channel, the run's bytes moved into the last.
fn gossip_on<P, M>(channels: Vec<Pattern>, data: Vec<u8>, outs: &mut Outs<P, M>) {
    if let Some((last, rest)) = channels.split_last() {
        for channel in rest {
            outs.push(Output::Gossip {
                channel: channel.clone(),
                data: data.clone(),
            });
        }
        outs.push(Output::Gossip {
            channel: last.clone(),
            data,
        });
    }
}

impl<P: Clone + Ord + Debug, M: Clone + Debug> Replicator<P, M> {
    /// A machine with `config`. `confirm`: topics on which a finished round with a peer
    /// must confirm the node's own logs (after a repair), if any.
    pub fn new(config: Config, confirm: Option<BTreeSet<Topic>>) -> Self {
        Replicator {
            sync: Sync::new(config.sync.clone()),
            config,
            peers: BTreeSet::new(),
            joined: BTreeSet::new(),
            channels: BTreeMap::new(),
            recent: Default::default(),
            queued: Default::default(),
            provided: BTreeSet::new(),
            next_discover: None,
            held: BTreeMap::new(),
            held_len: 0,
            rejects: BTreeMap::new(),
            next_peer: 0,
            last_round: None,
            unconfirmed: confirm,
            pending: BTreeMap::new(),
            next_ticket: 0,
            draining: BTreeSet::new(),
            retries: BTreeMap::new(),
            watch: BTreeMap::new(),
            last_watch: None,
            full: false,
            paused: false,
            push: Default::default(),
            _msg: std::marker::PhantomData,
        }
    }

    /// The store cannot write (its disk is full) or can again. While it cannot, the
    /// node pulls nothing: no rounds of its own, no gap pulls, gossip runs left to the
    /// peers (ignored, not stored or forwarded), and a peer's round gets this node's
    /// vector and windows but asks it for nothing. It keeps serving. When the store
    /// writes again, a round with every connected peer catches up what it missed.
    pub fn set_store_full<S: ReadStore>(
        &mut self,
        full: bool,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        self.set_pulling(full, self.paused, now, store)
    }

    /// Pauses pulls, or resumes them: as [`Replicator::set_store_full`], but live
    /// gossip is still stored and forwarded. For a store over its disk budget, which
    /// a catch-up would otherwise fill faster than pruning empties it.
    pub fn set_pulls_paused<S: ReadStore>(
        &mut self,
        paused: bool,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        self.set_pulling(self.full, paused, now, store)
    }

    /// Whether pulls are paused ([`Replicator::set_pulls_paused`]).
    pub fn pulls_paused(&self) -> bool {
        self.paused
    }

    fn pulling(&self) -> bool {
        !self.full && !self.paused
    }

    fn set_pulling<S: ReadStore>(
        &mut self,
        full: bool,
        paused: bool,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        let mut outs = Vec::new();
        let was = self.pulling();
        if full != self.full || paused != self.paused {
            // Gossip is ignored from now on, or was until now: what sync brings next
            // may have been pushed and ignored. And a round cut short by a pause ends
            // without holding all the peer had.
            self.push.forget_rounds();
        }
        self.full = full;
        self.paused = paused;
        let pulling = self.pulling();
        self.sync.set_pulling(pulling);
        if pulling && !was {
            for peer in self.peers.clone() {
                self.round(peer, now, store, &mut outs);
            }
        }
        outs
    }

    /// Whether the store is marked full ([`Replicator::set_store_full`]).
    pub fn store_full(&self) -> bool {
        self.full
    }

    /// The topic patterns in force.
    pub fn interest(&self) -> &[Pattern] {
        &self.config.interest
    }

    /// Whether this node replicates `topic`.
    pub fn interested(&self, topic: &Topic) -> bool {
        self.config.interest.iter().any(|p| p.matches(topic))
    }

    /// Connected peers.
    pub fn peers(&self) -> &BTreeSet<P> {
        &self.peers
    }

    /// Sync sessions in progress.
    pub fn sessions(&self) -> usize {
        self.sync.sessions()
    }

    /// Gossiped events held past gaps.
    pub fn held(&self) -> usize {
        self.held_len
    }

    /// Writes asked for and not yet reported done.
    pub fn persisting(&self) -> usize {
        self.pending.len()
    }

    /// True while own logs wait for confirmation.
    pub fn confirming(&self) -> bool {
        self.unconfirmed.is_some()
    }

    /// At start: join the channel of each interest pattern.
    pub fn start<S: ReadStore>(&mut self, _store: &S) -> Outs<P, M> {
        let mut outs = Vec::new();
        self.join_interest(&mut outs);
        outs
    }

    /// The channels joined.
    pub fn joined(&self) -> &BTreeSet<Pattern> {
        &self.joined
    }

    /// Whether `peer` replicates `topic`, as far as we know: true until it announced
    /// its channels.
    pub fn peer_wants(&self, peer: &P, topic: &Topic) -> bool {
        self.channels
            .get(peer)
            .is_none_or(|chans| chans.iter().any(|c| c.matches(topic)))
    }

    /// A peer connected: a round with it on every topic.
    pub fn connected<S: ReadStore>(&mut self, peer: P, now: Instant, store: &S) -> Outs<P, M> {
        self.peers.insert(peer.clone());
        let mut outs = Vec::new();
        self.round(peer, now, store, &mut outs);
        outs
    }

    /// `peer`, connecting now, signs its own events as `author` (a node's key is its
    /// network identity): its live push is watched (see [`crate::push`]). Called just
    /// before [`Replicator::connected`], whose round is the first that counts. Drivers
    /// that cannot tell leave it out, and nothing is watched.
    pub fn peer_author(&mut self, peer: P, author: AuthorId) {
        self.push.author(peer, author);
    }

    /// A peer disconnected: its sessions fail.
    pub fn disconnected<S: ReadStore>(&mut self, peer: &P, store: &S) -> Outs<P, M> {
        self.peers.remove(peer);
        self.push.gone(peer);
        self.channels.remove(peer);
        let (order, set) = &mut self.queued;
        order.retain(|(p, _)| p != peer);
        set.retain(|(p, _)| p != peer);
        self.retries.retain(|(p, _), _| p != peer);
        self.watch.retain(|(p, _), _| p != peer);
        let mut outs = Vec::new();
        let failed = self.sync.peer_gone(peer);
        self.sync_outputs(failed, store, &mut outs);
        outs
    }

    /// A peer joined a gossip channel: it replicates the topics of that pattern. We
    /// remember it (at most [`channel::MAX_PER_PEER`] per peer), to send our runs where
    /// it will get them and to run rounds with it only on topics it wants. It never
    /// makes us join anything. Names that are not channels are ignored.
    pub fn peer_subscribed(&mut self, peer: P, name: &str) {
        let Some(p) = channel::parse(name) else {
            return;
        };
        let chans = self.channels.entry(peer).or_default();
        if chans.len() < channel::MAX_PER_PEER {
            chans.insert(p);
        }
    }

    /// A peer left a gossip channel.
    pub fn peer_unsubscribed(&mut self, peer: &P, name: &str) {
        if let (Some(p), Some(chans)) = (channel::parse(name), self.channels.get_mut(peer)) {
            chans.remove(&p);
        }
    }

    /// A sync message from `peer`. Messages on topics we do not replicate are dropped
    /// (the peer's round times out).
    pub fn sync_message<S: ReadStore>(
        &mut self,
        peer: P,
        msg: Message,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        let mut outs = Vec::new();
        if msg.topic().is_some_and(|t| !self.interested(t)) {
            return outs;
        }
        if let Message::Vector { topic, vv } = &msg {
            self.watch_vector(&peer, topic, vv, now, store);
        }
        let o = self.sync.handle(peer, msg, now, store);
        self.sync_outputs(o, store, &mut outs);
        // A session that ended makes room for a queued one.
        self.start_queued(now, store, &mut outs);
        outs
    }

    /// A round now, with `peer` or with every connected peer.
    pub fn sync_now<S: ReadStore>(
        &mut self,
        peer: Option<P>,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        let peers: Vec<P> = match peer {
            Some(p) => vec![p],
            None => self.peers.iter().cloned().collect(),
        };
        let mut outs = Vec::new();
        for p in peers {
            self.round(p, now, store, &mut outs);
        }
        outs
    }

    /// The fleet's policy changed, or time passed a certificate's expiry: every peer
    /// `stands` refuses is banned ([`Output::Ban`] with the refusal's label, e.g.
    /// `revoked`), and if the policy `changed`, a round runs with every other peer, so
    /// that events refused for a certificate or grant that had not arrived yet are
    /// pulled again.
    pub fn policy_changed<S: ReadStore>(
        &mut self,
        changed: bool,
        stands: impl Fn(&P) -> Result<(), crate::fleet::Refusal>,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        let mut outs = Vec::new();
        if changed {
            self.sync.forget_refused();
        }
        let peers: Vec<P> = self.peers.iter().cloned().collect();
        for peer in peers {
            match stands(&peer) {
                Err(r) => self.ban_into(peer, r.reason(), store, &mut outs),
                Ok(()) if changed => self.round(peer, now, store, &mut outs),
                Ok(()) => {}
            }
        }
        outs
    }

    /// Durable local events: gossip them as runs, consecutive events of one log in one
    /// message (framing, message ids and IDONTWANT are paid per run).
    pub fn published(&mut self, mut events: Vec<Event>) -> Outs<P, M> {
        events.sort_by(|a, b| {
            (a.topic(), a.author(), a.seq()).cmp(&(b.topic(), b.author(), b.seq()))
        });
        let mut outs = Vec::new();
        for r in run::split(&events, self.config.run_max_bytes) {
            // Encoding our own valid events cannot fail; if it did, anti-entropy
            // delivers them.
            if let Ok(data) = run::encode(r) {
                let chans = channel::cover(r[0].topic(), &self.joined, &self.channels, None);
                gossip_on(chans, data, &mut outs);
            }
        }
        outs
    }

    /// Gossiped messages: checked, verified together, the valid ones stored in one
    /// write; a verdict for each.
    pub fn gossiped<S: ReadStore>(&mut self, batch: Vec<Gossip<P, M>>, store: &S) -> Outs<P, M> {
        let mut outs = Vec::new();
        let mut valid: Vec<Arrived<P, M>> = Vec::with_capacity(batch.len());
        for g in batch {
            let Some(on) = channel::parse(&g.channel) else {
                self.reject(g.from, g.id, "wrong_channel", store, &mut outs);
                continue;
            };
            let hash = *blake3::hash(&g.data).as_bytes();
            // A run accepted lately on another channel: it is valid, stored, and live.
            // Forward it on this channel too, or members of this mesh that we would
            // have relayed it to lose the path.
            if let Some((topic, first)) = self.recent.1.get(&hash)
                && *first != on
            {
                let verdict = if on.matches(topic) && self.interested(topic) {
                    Verdict::Accept
                } else {
                    Verdict::Ignore
                };
                outs.push(Output::Verdict {
                    id: g.id,
                    from: g.from,
                    verdict,
                });
                continue;
            }
            let refused = match run::decode(&g.data, self.config.gossip_max_bytes) {
                Err(_) => "malformed",
                Ok(evs) if !on.matches(evs[0].topic()) => "wrong_channel",
                Ok(evs) if !self.interested(evs[0].topic()) => {
                    outs.push(Output::Verdict {
                        id: g.id,
                        from: g.from,
                        verdict: Verdict::Ignore,
                    });
                    continue;
                }
                Ok(evs) if self.bad_body(&evs) => "bad_body",
                // Before the signatures: a lookup is cheaper than a verification.
                Ok(evs) if let Some((i, reason)) = self.not_permitted(&evs) => {
                    self.sync
                        .remember_refused(evs[i].topic(), evs[i].author(), evs[i].seq());
                    outs.push(Output::Refused {
                        from: g.from.clone(),
                        event: Box::new(evs[i].clone()),
                        reason,
                    });
                    // Dropped, not forwarded, and not held against the sender, not
                    // even in gossipsub's score (three rejects graylist a peer): it may
                    // not know the policy that refuses it yet, and cutting it off would
                    // split the fleet exactly while a revocation spreads. Cheap to
                    // refuse: no signature was verified.
                    outs.push(Output::Verdict {
                        id: g.id,
                        from: g.from,
                        verdict: Verdict::Ignore,
                    });
                    continue;
                }
                Ok(events) => {
                    valid.push(Arrived {
                        from: g.from,
                        id: g.id,
                        on,
                        hash,
                        events,
                    });
                    continue;
                }
            };
            self.reject(g.from, g.id, refused, store, &mut outs);
        }
        // A decoded run is hash-linked by construction: its newest event vouches for it.
        let newest: Vec<Event> = valid
            .iter()
            .filter_map(|a| a.events.last().cloned())
            .collect();
        let checks = match &self.config.verify {
            Some(f) => f(&newest),
            None => verify_batch(&newest),
        };
        let mut good = Vec::with_capacity(valid.len());
        for (a, check) in valid.into_iter().zip(checks) {
            match check {
                Ok(()) => good.push(a),
                Err(_) => self.reject(a.from, a.id, "bad_signature", store, &mut outs),
            }
        }
        if good.is_empty() {
            return outs;
        }
        // Nowhere to write them: left to the peers (a round brings them later).
        if self.full {
            for a in good {
                outs.push(Output::Verdict {
                    id: a.id,
                    from: a.from,
                    verdict: Verdict::Ignore,
                });
            }
            return outs;
        }
        // Stored in one write; the verdicts wait for it (nothing is forwarded before
        // it is durable).
        let events: Vec<Event> = good.iter().flat_map(|a| a.events.clone()).collect();
        self.persist(Pending::Gossip(good), events, &mut outs);
        outs
    }

    /// The outcome of the write named `ticket` (an [`Output::Persist`]): the store's
    /// outcome per event, or why the write failed. Gives the verdicts that waited for
    /// it, holds what arrived past a gap, stores held events that now continue their
    /// log, and goes on with the rounds.
    pub fn persisted<S: ReadStore>(
        &mut self,
        ticket: Ticket,
        result: Result<Vec<Outcome>, String>,
        now: Instant,
        store: &S,
    ) -> Outs<P, M> {
        let mut outs = Vec::new();
        self.push.at(now);
        match ticket.0 {
            TicketOf::Sync(t) => {
                let o = self.sync.persisted(t, result, now, store);
                self.sync_outputs(o, store, &mut outs);
                self.start_queued(now, store, &mut outs);
            }
            TicketOf::Own(t) => match self.pending.remove(&t) {
                None => {}
                Some(Pending::Gossip(good)) => {
                    self.gossip_written(good, result, now, store, &mut outs);
                }
                Some(Pending::Drain {
                    topic,
                    author,
                    events,
                }) => {
                    self.draining.remove(&(topic.clone(), author));
                    if let Ok(outcomes) = result {
                        let mut stored = Vec::new();
                        for (ev, o) in events.into_iter().zip(outcomes) {
                            match o {
                                Outcome::Appended(_) => stored.push(ev),
                                Outcome::Fork(_) => outs.push(Output::Forked(ev)),
                                _ => {}
                            }
                        }
                        if !stored.is_empty() {
                            outs.push(Output::Received { events: stored });
                        }
                    }
                    // More may have arrived meanwhile (or the write failed: the held
                    // events went, and anti-entropy brings them).
                    self.drain(&topic, author, store, &mut outs);
                }
            },
        }
        outs
    }

    fn persist(&mut self, then: Pending<P, M>, events: Vec<Event>, outs: &mut Outs<P, M>) {
        self.next_ticket += 1;
        self.pending.insert(self.next_ticket, then);
        outs.push(Output::Persist {
            ticket: Ticket(TicketOf::Own(self.next_ticket)),
            events,
            durability: self.config.sync.durability,
            restart: false,
        });
    }

    fn gossip_written<S: ReadStore>(
        &mut self,
        good: Vec<Arrived<P, M>>,
        result: Result<Vec<Outcome>, String>,
        now: Instant,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        let Ok(outcomes) = result else {
            // Not stored: nothing to forward; anti-entropy brings them later.
            for a in good {
                outs.push(Output::Verdict {
                    id: a.id,
                    from: a.from,
                    verdict: Verdict::Ignore,
                });
            }
            return;
        };
        let mut outcomes = outcomes.into_iter();
        let mut appended: BTreeSet<(Topic, AuthorId)> = BTreeSet::new();
        let mut received = Vec::new();
        let mut duplicates = 0;
        for a in good {
            let Arrived {
                from,
                id,
                on,
                hash,
                events: evs,
            } = a;
            let topic = evs[0].topic().clone();
            if self.push.is_own(&from, &evs[0].author()) {
                self.push.pushed(&from);
            }
            // Neighbours off this channel that want the topic: the run is kept (and
            // re-encoded, if it brought anything new) only for them.
            let bridge_to = channel::cover(&topic, &self.joined, &self.channels, Some(&on));
            let bridge = (!bridge_to.is_empty()).then(|| evs.clone());
            // Accept (and so forward) a run that brought anything new.
            let mut verdict = Verdict::Ignore;
            let mut round = false;
            for ev in evs {
                match outcomes.next() {
                    Some(Outcome::Appended(_)) => {
                        appended.insert((ev.topic().clone(), ev.author()));
                        received.push(ev);
                        verdict = Verdict::Accept;
                    }
                    Some(Outcome::Gap { .. }) => {
                        // Held until the gap fills: forward it meanwhile.
                        let held = self.hold(from.clone(), ev, now, store, outs);
                        if held {
                            verdict = Verdict::Accept;
                        }
                    }
                    // The author forked at our head: a round with the sender proves it.
                    Some(Outcome::PrevMismatch) if !round => {
                        round = true;
                        let o = self.begin_round(from.clone(), ev.topic().clone(), now, store);
                        self.sync_outputs(o, store, outs);
                    }
                    Some(Outcome::Duplicate) => duplicates += 1,
                    Some(Outcome::Fork(_)) => outs.push(Output::Forked(ev)),
                    _ => {}
                }
            }
            if verdict == Verdict::Accept {
                // Only a node on several channels can meet a run again on another.
                if self.joined.len() > 1 {
                    self.remember_run(hash, &topic, &on);
                }
                if let Some(Ok(data)) = bridge.as_deref().map(run::encode) {
                    gossip_on(bridge_to, data, outs);
                }
            }
            outs.push(Output::Verdict { id, from, verdict });
        }
        if duplicates > 0 {
            outs.push(Output::Duplicates(duplicates));
        }
        if !received.is_empty() {
            outs.push(Output::Received { events: received });
        }
        for (topic, author) in appended {
            self.drain(&topic, author, store, outs);
        }
    }

    /// Time passed: sync deadlines, gaps due for a pull, the periodic round.
    pub fn tick<S: ReadStore>(&mut self, now: Instant, store: &S) -> Outs<P, M> {
        self.push.at(now);
        let mut outs = Vec::new();
        let o = self.sync.tick(now);
        self.sync_outputs(o, store, &mut outs);
        // A full store pulls nothing (see `set_store_full`); deadlines still run.
        if !self.pulling() {
            self.discover(now, &mut outs);
            return outs;
        }
        // Gaps still open after gap_wait: pull them from the peer that sent the event
        // past the gap (at most one pull per gap_wait per log).
        let wait = self.config.gap_wait;
        let due: Vec<(Topic, AuthorId, P, Seq)> = self
            .held
            .iter_mut()
            .filter(|(_, (since, _, evs))| now.duration_since(*since) >= wait && !evs.is_empty())
            .map(|((t, a), (since, peer, evs))| {
                *since = now;
                let last = evs.keys().next_back().copied().unwrap_or_default();
                (t.clone(), *a, peer.clone(), last)
            })
            .collect();
        for (topic, author, peer, to) in due {
            let o = self.sync.pull(peer, topic, author, to, now, store);
            self.sync_outputs(o, store, &mut outs);
        }
        self.start_queued(now, store, &mut outs);
        self.retry_due(now, store, &mut outs);
        self.watch_lag(now, store, &mut outs);
        self.discover(now, &mut outs);
        let due = self
            .last_round
            .is_none_or(|t| now.duration_since(t) >= self.config.round_every);
        if due && !self.peers.is_empty() {
            self.last_round = Some(now);
            // The next peer in turn that replicates one of our topics (a turn given to
            // a peer that wants none of them would be a round skipped).
            let topics = self.known_topics(store);
            for _ in 0..self.peers.len() {
                self.next_peer = (self.next_peer + 1) % self.peers.len();
                let Some(peer) = self.peers.iter().nth(self.next_peer).cloned() else {
                    break;
                };
                if topics.iter().any(|t| self.peer_wants(&peer, t)) {
                    self.round_on(peer, &topics, now, store, &mut outs);
                    break;
                }
            }
        } else if self.last_round.is_none() {
            self.last_round = Some(now);
        }
        outs
    }

    /// Adds and/or removes an interest pattern. Returns whether the interest changed,
    /// and what to do: leave topics no longer wanted; join the new ones, hear peers'
    /// subscriptions again and run a round with every peer.
    pub fn change_interest<S: ReadStore>(
        &mut self,
        add: Option<Pattern>,
        remove: Option<Pattern>,
        now: Instant,
        store: &S,
    ) -> (bool, Outs<P, M>) {
        let mut outs = Vec::new();
        // Channels change: rounds from before say nothing about pushes after.
        self.push.forget_rounds();
        let before = self.config.interest.len();
        let mut added = false;
        if let Some(p) = remove {
            self.config.interest.retain(|t| *t != p);
            if self.joined.remove(&p) {
                let key = channel::rendezvous(&p);
                outs.push(Output::Unsubscribe(p));
                if !self.joined.iter().any(|q| channel::rendezvous(q) == key)
                    && self.provided.remove(&key)
                {
                    outs.push(Output::Unprovide(key));
                }
            }
            // A pattern that did not fit may fit now.
            self.join_interest(&mut outs);
        }
        if let Some(p) = add
            && !self.config.interest.contains(&p)
        {
            self.config.interest.push(p);
            added = true;
            self.join_interest(&mut outs);
            let peers: Vec<P> = self.peers.iter().cloned().collect();
            for peer in peers {
                self.round(peer, now, store, &mut outs);
            }
        }
        (added || self.config.interest.len() != before, outs)
    }

    /// Bans `peer` (the driver also bans for its own reasons): its sessions fail.
    pub fn ban<S: ReadStore>(&mut self, peer: P, reason: &'static str, store: &S) -> Outs<P, M> {
        let mut outs = Vec::new();
        self.ban_into(peer, reason, store, &mut outs);
        outs
    }

    fn ban_into<S: ReadStore>(
        &mut self,
        peer: P,
        reason: &'static str,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        self.rejects.remove(&peer);
        outs.push(Output::Ban {
            peer: peer.clone(),
            reason,
        });
        let failed = self.sync.peer_gone(&peer);
        self.sync_outputs(failed, store, outs);
    }

    /// The first event of a run that the fleet's policy refuses, and why (the whole
    /// run is refused: anti-entropy brings a permitted prefix).
    fn not_permitted(&self, evs: &[Event]) -> Option<(usize, crate::fleet::Refusal)> {
        (self.config.sync.permit.as_ref()?.0)(evs)
    }

    fn bad_body(&self, evs: &[Event]) -> bool {
        self.config
            .sync
            .check
            .as_ref()
            .is_some_and(|check| evs.iter().any(|e| (check.0)(e).is_err()))
    }

    /// A refused message: `Reject` for gossipsub, and a ban once the peer has forwarded
    /// too many.
    fn reject<S: ReadStore>(
        &mut self,
        from: P,
        id: M,
        reason: &'static str,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        outs.push(Output::Rejected {
            from: from.clone(),
            reason,
        });
        outs.push(Output::Verdict {
            id,
            from: from.clone(),
            verdict: Verdict::Reject,
        });
        let n = self.rejects.entry(from.clone()).or_insert(0);
        *n += 1;
        if *n >= self.config.rejects_before_ban {
            self.ban_into(from, "bad_gossip", store, outs);
        }
    }

    fn known_topics<S: ReadStore>(&self, store: &S) -> Vec<Topic> {
        let mut topics: Vec<Topic> = store
            .logs()
            .map(|logs| logs.into_iter().map(|l| l.topic).collect())
            .unwrap_or_default();
        // Exact topics named in the interest list replicate even before we hold them.
        topics.extend(self.config.interest.iter().filter_map(Pattern::as_topic));
        topics.sort();
        topics.dedup();
        topics.retain(|t| self.interested(t));
        topics
    }

    /// Joins the channel of each interest pattern not yet joined, up to
    /// [`channel::MAX_JOINED`] (the daemon refuses more patterns; past the bound a
    /// pattern replicates by anti-entropy only).
    fn join_interest(&mut self, outs: &mut Outs<P, M>) {
        for p in &self.config.interest {
            if self.joined.len() >= channel::MAX_JOINED + channel::FLEET_CHANNELS {
                break;
            }
            if self.joined.insert(p.clone()) {
                outs.push(Output::Subscribe(p.clone()));
                let key = channel::rendezvous(p);
                if self.provided.insert(key.clone()) {
                    outs.push(Output::Provide(key));
                }
            }
        }
    }

    /// Connected peers that replicate a pattern overlapping `pattern` (as far as their
    /// channels tell; peers that have not announced any are not counted).
    pub fn topic_links(&self, pattern: &Pattern) -> usize {
        self.peers
            .iter()
            .filter(|p| {
                self.channels
                    .get(*p)
                    .is_some_and(|cs| cs.iter().any(|c| c.overlaps(pattern)))
            })
            .count()
    }

    /// Counts each joined pattern's topic links; lookups for those short of
    /// [`Config::topic_links`].
    fn discover(&mut self, now: Instant, outs: &mut Outs<P, M>) {
        let want = self.config.topic_links;
        if want == 0 {
            return;
        }
        match self.next_discover {
            None => {
                self.next_discover = Some(now + Duration::from_secs(2));
                return;
            }
            Some(t) if now < t => return,
            Some(_) => self.next_discover = Some(now + self.config.discover_every),
        }
        let mut asked = BTreeMap::new();
        for p in &self.joined {
            let have = self.topic_links(p);
            if have < want {
                for key in channel::lookups(p) {
                    let w = asked.entry(key).or_insert(0);
                    *w = (*w).max(want - have);
                }
            }
        }
        for (key, want) in asked {
            outs.push(Output::FindPeers { key, want });
        }
    }

    fn remember_run(&mut self, hash: [u8; 32], topic: &Topic, on: &Pattern) {
        let (order, runs) = &mut self.recent;
        if runs.insert(hash, (topic.clone(), on.clone())).is_none() {
            order.push_back(hash);
        }
        while order.len() > RECENT_RUNS {
            if let Some(old) = order.pop_front() {
                runs.remove(&old);
            }
        }
    }

    fn round<S: ReadStore>(&mut self, peer: P, now: Instant, store: &S, outs: &mut Outs<P, M>) {
        let topics = self.known_topics(store);
        self.round_on(peer, &topics, now, store, outs);
    }

    /// A round with `peer` on those of `topics` it wants.
    fn round_on<S: ReadStore>(
        &mut self,
        peer: P,
        topics: &[Topic],
        now: Instant,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        let wanted: Vec<Topic> = topics
            .iter()
            .filter(|t| self.peer_wants(&peer, t))
            .cloned()
            .collect();
        for topic in wanted {
            self.start_session(peer.clone(), topic, now, store, outs);
        }
    }

    /// Starts a session on `topic` with `peer`, or queues it while the sync machine
    /// has no free session: a round on 2,000 topics starts them as earlier ones end,
    /// instead of failing most of them as busy and retrying them all every second.
    fn start_session<S: ReadStore>(
        &mut self,
        peer: P,
        topic: Topic,
        now: Instant,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        if !self.pulling() {
            return;
        }
        if self.sync.sessions() < self.config.sync.max_sessions && self.queued.0.is_empty() {
            let o = self.begin_round(peer, topic, now, store);
            self.sync_outputs(o, store, outs);
            return;
        }
        let key = (peer, topic);
        if self.queued.0.len() < MAX_QUEUED && self.queued.1.insert(key.clone()) {
            self.queued.0.push_back(key);
        }
    }

    /// Starts queued sessions while the sync machine has room (those whose peer left,
    /// or that no longer apply, are dropped).
    fn start_queued<S: ReadStore>(&mut self, now: Instant, store: &S, outs: &mut Outs<P, M>) {
        while self.sync.sessions() < self.config.sync.max_sessions {
            let Some(key) = self.queued.0.pop_front() else {
                return;
            };
            self.queued.1.remove(&key);
            let (peer, topic) = key;
            if self.peers.contains(&peer)
                && self.interested(&topic)
                && self.peer_wants(&peer, &topic)
            {
                let o = self.begin_round(peer, topic, now, store);
                self.sync_outputs(o, store, outs);
            }
        }
    }

    /// Sessions waiting for room.
    pub fn queued(&self) -> usize {
        self.queued.0.len()
    }

    /// Events a session with `from` stored that a connected peer wrote after an earlier
    /// round with it on their topic had ended, on a channel both sides are on: its
    /// push was lost. One output per such peer; one strike per session.
    fn lost_pushes<'a>(
        &mut self,
        from: &P,
        events: impl Iterator<Item = &'a Event>,
    ) -> Vec<Output<P, M>> {
        if self.full {
            return Vec::new();
        }
        let mut by_peer: BTreeMap<P, (u64, Topic)> = BTreeMap::new();
        for e in events {
            let Some(peer) = self.push.peer_of(&e.author()) else {
                continue;
            };
            let shared = self.channels.get(peer).is_some_and(|theirs| {
                self.joined
                    .iter()
                    .any(|c| c.matches(e.topic()) && theirs.contains(c))
            });
            if shared && self.push.is_caught_up(peer, e.topic()) {
                by_peer
                    .entry(peer.clone())
                    .or_insert((0, e.topic().clone()))
                    .0 += 1;
            }
        }
        let mut outs = Vec::new();
        for (peer, (events, topic)) in by_peer {
            // One strike per session, not per window or event: a lost run pulled in
            // several windows is one loss, and a congested path that still pushes
            // between losses starts the count over.
            let reconnect = self.push.first_in_session(from, &topic, &peer)
                && self.push.missed(&peer) == crate::push::Missed::Reconnect;
            outs.push(Output::PushLost {
                peer,
                events,
                reconnect,
            });
        }
        outs
    }

    /// A round with `peer` on `topic`: started, and remembered by the push watch if it
    /// really began (a session with the peer on the topic may be running already).
    fn begin_round<S: ReadStore>(
        &mut self,
        peer: P,
        topic: Topic,
        now: Instant,
        store: &S,
    ) -> Vec<sync::Output<P>> {
        let o = self.sync.start(peer.clone(), topic.clone(), now, store);
        if o.iter().any(|x| {
            matches!(
                x,
                sync::Output::Send {
                    msg: sync::Message::Hello { .. },
                    ..
                }
            )
        }) {
            self.push.round_started(&peer, &topic);
        }
        o
    }

    /// Passes the sync machine's outputs on, and acts on them: a stored range may let
    /// held events follow, a finished round may confirm own logs, a protocol violation
    /// bans the peer.
    fn sync_outputs<S: ReadStore>(
        &mut self,
        o: Vec<sync::Output<P>>,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        for out in o {
            if let sync::Output::Persist {
                ticket,
                events,
                durability,
                restart,
            } = out
            {
                outs.push(Output::Persist {
                    ticket: Ticket(TicketOf::Sync(ticket)),
                    events,
                    durability,
                    restart,
                });
                continue;
            }
            let mut drain = BTreeSet::new();
            let mut done = None;
            let mut ban = None;
            let mut failed = None;
            let mut lost = Vec::new();
            match &out {
                sync::Output::Stored { from, events } => {
                    drain = events
                        .iter()
                        .map(|(_, e)| (e.topic().clone(), e.author()))
                        .collect();
                    lost = self.lost_pushes(from, events.iter().map(|(_, e)| e));
                }
                sync::Output::Done { peer, topic, .. } => {
                    self.retries.remove(&(peer.clone(), topic.clone()));
                    self.push.caught_up(peer, topic);
                    done = Some(topic.clone());
                }
                sync::Output::Failed {
                    peer,
                    topic,
                    reason,
                } => {
                    self.push.round_failed(peer, topic);
                    failed = Some((peer.clone(), topic.clone(), reason.clone()));
                }
                sync::Output::Misbehaved { peer, .. } => ban = Some(peer.clone()),
                _ => {}
            }
            outs.push(Output::Sync(out));
            outs.extend(lost);
            for (topic, author) in drain {
                self.drain(&topic, author, store, outs);
            }
            if let Some(topic) = done {
                self.confirm(&topic, outs);
            }
            if let Some((peer, topic, reason)) = failed {
                self.round_failed(&peer, &topic, &reason, outs);
            }
            if let Some(peer) = ban {
                self.ban_into(peer, "sync_violation", store, outs);
            }
        }
    }

    /// For how long what this node lacks from `peer` on `topic` has not shrunk, once
    /// that is past [`Config::lag_watch`].
    pub fn stalled(&self, peer: &P, topic: &Topic, now: Instant) -> Option<Duration> {
        let w = self.watch.get(&(peer.clone(), topic.clone()))?;
        let d = now.saturating_duration_since(w.since);
        (d >= self.config.lag_watch).then_some(d)
    }

    /// A peer's vector: starts or updates the watch on what we lack from it.
    fn watch_vector<S: ReadStore>(
        &mut self,
        peer: &P,
        topic: &Topic,
        theirs: &crate::vv::VersionVector,
        now: Instant,
        store: &S,
    ) {
        let key = (peer.clone(), topic.clone());
        let Ok(ours) = store.version_vector(topic) else {
            return;
        };
        // Not what the fleet's policy refused: that is not lag.
        let behind = ours
            .wants_from(theirs)
            .iter()
            .map(|w| {
                let to = match self.sync.refused_cap(topic, &w.author) {
                    Some(cap) if cap < w.to => cap,
                    _ => w.to,
                };
                if to < w.from {
                    0
                } else {
                    to.0.saturating_sub(w.from.0).saturating_add(1)
                }
            })
            .fold(0, u64::saturating_add);
        if behind == 0 {
            self.watch.remove(&key);
            return;
        }
        if !self.watch.contains_key(&key) && self.watch.len() >= MAX_WATCHED {
            return;
        }
        let w = self.watch.entry(key).or_insert(Watch {
            theirs: theirs.clone(),
            since: now,
            behind,
            reported: None,
        });
        w.theirs = theirs.clone();
        if behind < w.behind {
            w.since = now;
            w.behind = behind;
            w.reported = None;
        }
    }

    /// Once a second: what we lack from each watched peer, by its last vector. Progress
    /// restarts the watch; none for `lag_watch` reports it and runs rounds on the topic
    /// with that peer and the next one.
    fn watch_lag<S: ReadStore>(&mut self, now: Instant, store: &S, outs: &mut Outs<P, M>) {
        if self
            .last_watch
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_watch = Some(now);
        let mut ours: BTreeMap<Topic, crate::vv::VersionVector> = BTreeMap::new();
        let mut stuck = Vec::new();
        let limit = self.config.lag_watch;
        self.watch.retain(|(peer, topic), w| {
            if !ours.contains_key(topic) {
                let Ok(vv) = store.version_vector(topic) else {
                    return true;
                };
                ours.insert(topic.clone(), vv);
            }
            let behind = ours.get(topic).map_or(0, |vv| vv.lacking(&w.theirs));
            if behind == 0 {
                return false;
            }
            if behind < w.behind {
                w.behind = behind;
                w.since = now;
                w.reported = None;
            } else if now.saturating_duration_since(w.since) >= limit
                && w.reported
                    .is_none_or(|r| now.saturating_duration_since(r) >= limit)
            {
                // Reported again every `lag_watch` while it stays stuck.
                stuck.push((peer.clone(), topic.clone(), behind, now - w.since));
                w.reported = Some(now);
            }
            true
        });
        for (peer, topic, behind, stalled) in stuck {
            outs.push(Output::Lagging {
                peer: peer.clone(),
                topic: topic.clone(),
                behind,
                stalled,
            });
            self.round_with_others(&peer, &topic, now, store, outs);
        }
    }

    /// A round on `topic` with `peer` (if connected) and with the next connected peer.
    fn round_with_others<S: ReadStore>(
        &mut self,
        peer: &P,
        topic: &Topic,
        now: Instant,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        let next = self
            .peers
            .range((std::ops::Bound::Excluded(peer), std::ops::Bound::Unbounded))
            .chain(self.peers.iter())
            .find(|p| *p != peer && self.peer_wants(p, topic))
            .cloned();
        let mut with: Vec<P> = next.into_iter().collect();
        if self.peers.contains(peer) {
            with.push(peer.clone());
        }
        for p in with {
            self.start_session(p, topic.clone(), now, store, outs);
        }
    }

    /// Schedules failed rounds (back-off from the failures in a row) and runs those due
    /// with peers still connected.
    fn retry_due<S: ReadStore>(&mut self, now: Instant, store: &S, outs: &mut Outs<P, M>) {
        let (first, cap) = (self.config.retry_first, self.config.round_every);
        let mut due = Vec::new();
        for (key, (failures, at)) in &mut self.retries {
            match at {
                None => {
                    let shift = failures.saturating_sub(1).min(16);
                    *at = Some(now + first.saturating_mul(1 << shift).min(cap));
                }
                Some(t) if *t <= now => due.push(key.clone()),
                Some(_) => {}
            }
        }
        // With the same peer only: the lag watchdog tries others when nothing moves.
        // Retrying with the next peer too from the second failure made the adversity
        // simulation slower (the last node holding an event: 20.7 → 25.6 s at the
        // median), as the extra rounds crowd slow links.
        for (peer, topic) in due {
            if let Some((_, at)) = self.retries.get_mut(&(peer.clone(), topic.clone())) {
                // Until it fails again (or finishes), nothing is scheduled.
                *at = Some(now + cap);
            }
            if self.peers.contains(&peer)
                && self.interested(&topic)
                && self.peer_wants(&peer, &topic)
            {
                self.start_session(peer, topic, now, store, outs);
            }
        }
    }

    /// A round failed: worth another try with the same peer soon, unless the peer is
    /// gone or broke the protocol (it is banned).
    fn round_failed(
        &mut self,
        peer: &P,
        topic: &Topic,
        reason: &sync::Failure,
        outs: &mut Outs<P, M>,
    ) {
        if matches!(
            reason,
            sync::Failure::Disconnected | sync::Failure::Violation
        ) || !self.peers.contains(peer)
            || !self.peer_wants(peer, topic)
        {
            return;
        }
        // Bounded by peers × topics of interest; a cap keeps a hostile topic list small.
        const MAX_RETRIES: usize = 4096;
        let key = (peer.clone(), topic.clone());
        if !self.retries.contains_key(&key) && self.retries.len() >= MAX_RETRIES {
            return;
        }
        let entry = self.retries.entry(key).or_insert((0, None));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = None;
        if entry.0.is_multiple_of(3) {
            outs.push(Output::Stuck {
                peer: peer.clone(),
                topic: topic.clone(),
                failures: entry.0,
                reason: reason.clone(),
            });
        }
    }

    fn confirm(&mut self, topic: &Topic, outs: &mut Outs<P, M>) {
        let Some(waiting) = &mut self.unconfirmed else {
            return;
        };
        waiting.remove(topic);
        if waiting.is_empty() {
            self.unconfirmed = None;
            outs.push(Output::OwnLogsConfirmed);
        }
    }

    /// Holds a valid event that arrived past a gap (gossip took another path for the
    /// events before it) until the gap fills; `tick` pulls gaps that stay open. When
    /// the holding area is full, the gap is pulled at once instead. True when held.
    fn hold<S: ReadStore>(
        &mut self,
        from: P,
        ev: Event,
        now: Instant,
        store: &S,
        outs: &mut Outs<P, M>,
    ) -> bool {
        if self.held_len >= self.config.pending_max {
            outs.push(Output::Rejected {
                from: from.clone(),
                reason: "pending_full",
            });
            let o = self
                .sync
                .pull(from, ev.topic().clone(), ev.author(), ev.seq(), now, store);
            self.sync_outputs(o, store, outs);
            return false;
        }
        let entry = self
            .held
            .entry((ev.topic().clone(), ev.author()))
            .or_insert_with(|| (now, from, BTreeMap::new()));
        if entry.2.insert(ev.seq(), ev).is_none() {
            self.held_len += 1;
        }
        true
    }

    /// Writes the held events of a log that now continue its head (one write at a time
    /// per log; [`Replicator::persisted`] drains again after it).
    fn drain<S: ReadStore>(
        &mut self,
        topic: &Topic,
        author: AuthorId,
        store: &S,
        outs: &mut Outs<P, M>,
    ) {
        let key = (topic.clone(), author);
        if self.draining.contains(&key) {
            return;
        }
        let Ok(state) = store.log_state(&author, topic) else {
            return;
        };
        let head = state.head.map(|h| h.seq);
        let Some((_, _, held)) = self.held.get_mut(&key) else {
            return;
        };
        // Forget what the log already holds.
        while let Some((&s, _)) = held.first_key_value() {
            if head.is_some_and(|h| s <= h) {
                held.remove(&s);
                self.held_len -= 1;
            } else {
                break;
            }
        }
        let mut next = head.map_or(Seq(0), |h| Seq(h.0 + 1));
        let mut run = Vec::new();
        while let Some(ev) = held.remove(&next) {
            self.held_len -= 1;
            run.push(ev);
            next = Seq(next.0 + 1);
        }
        if held.is_empty() {
            self.held.remove(&key);
        }
        if run.is_empty() {
            return;
        }
        self.draining.insert(key);
        self.persist(
            Pending::Drain {
                topic: topic.clone(),
                author,
                events: run.clone(),
            },
            run,
            outs,
        );
    }
}
