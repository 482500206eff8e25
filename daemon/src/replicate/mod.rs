//! Replication: the thread that drives the core sync machine over the network.
//!
//! It owns the [`murmur_core::sync::Sync`] machine and talks to the store directly
//! (blocking calls are fine on this thread, never on the network task). Inputs arrive on
//! one bounded channel: network events, locally published events to gossip, ticks.
//!
//! - Locally published events arrive here only after they are durable, and are gossiped.
//! - Gossiped events are decoded (bounded), checked for topic and signature, and inserted;
//!   the verdict goes back to gossipsub (Accept / Reject / Ignore), so only accepted runs
//!   are forwarded, and a peer that forwards invalid runs 3 times (`REJECTS_BEFORE_BAN`) is
//!   banned (as is one that breaks the sync protocol once). gossipsub peer scoring is not
//!   enabled. An event past a gap triggers a targeted pull from its sender.
//! - A round of anti-entropy runs with every peer that connects, and periodically with
//!   the next connected peer in turn, for every topic we hold.

mod gossip;
mod persist;
mod status;

use status::RemoteView;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use murmur_core::VersionVector;
use murmur_core::run;
use murmur_core::sync::{self as proto, Output, Sync};
use murmur_core::verify::verify_batch;
use murmur_core::{AuthorId, Event, Offset, Outcome, Pattern, Seq, Store, Topic};
use murmur_p2p::{Command, MessageId, PeerId, Verdict};
use murmur_store::RocksStore;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// Inputs of the replicator.
#[derive(Debug)]
pub enum Input {
    /// Something from the network.
    Net(murmur_p2p::Event),
    /// Durable local events to gossip.
    Published(Vec<Event>),
    /// Time passed: deadlines and periodic rounds.
    Tick,
    /// Run a round now (with one peer, or all).
    SyncNow(Option<PeerId>),
    /// Stop (at shutdown; other senders may still be alive).
    Stop,
    /// Report the replication state.
    Status(tokio::sync::oneshot::Sender<crate::api::ReplicationJson>),
    /// Add or remove an interest pattern; answers with the patterns now in force.
    Interest {
        /// Pattern to add.
        add: Option<Pattern>,
        /// Pattern to remove.
        remove: Option<Pattern>,
        /// The patterns in force afterwards.
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// Settings of the replicator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Topics this node replicates (patterns).
    pub topics: Vec<Pattern>,
    /// Interval between periodic rounds.
    pub anti_entropy_interval: Duration,
    /// Sync machine settings.
    pub sync: proto::Config,
    /// Where known peer addresses are kept across restarts.
    pub peers_file: std::path::PathBuf,
    /// Where interest changes made at runtime are kept (overrides `topics` when present).
    pub interest_file: std::path::PathBuf,
    /// The node's clock: remote events' times move it (within the drift limit).
    pub clock: Arc<crate::clock::NodeClock>,
    /// This node's author, and the publishing hold to release once its own logs are
    /// confirmed by a round with a peer on every topic (after `murmur repair`).
    pub own: (AuthorId, crate::ingest::Hold),
}

/// Most gossiped events held while waiting for a gap to fill (overflow is dropped: the
/// pull that follows fetches them).
const PENDING_MAX: usize = 16_384;
/// Most gossiped events verified and stored together.
const GOSSIP_BATCH: usize = 256;
/// Invalid gossiped runs a peer may forward before it is banned (a few may be honest: a
/// peer's checks can differ from ours, e.g. a larger `docs.max_change_bytes`).
const REJECTS_BEFORE_BAN: u32 = 3;
/// Most peers remembered in the peers file.
pub const KNOWN_PEERS_MAX: usize = 256;
/// How long a misbehaving peer is kept out.
const BAN: Duration = Duration::from_secs(600);

/// Most encoded event bytes in one gossiped run (a single larger event is a run of its
/// own). Large enough to amortise framing, small enough to keep latency and the memory
/// of a message in flight low.
const RUN_MAX_BYTES: usize = 64 * 1024;
/// Largest gossip message accepted: one event of the maximum size, as a run.
pub(crate) const GOSSIP_MAX_BYTES: usize = murmur_p2p::MAX_GOSSIP_BYTES;
/// Most durable events gathered from queued batches into one round of gossip.
const PUBLISH_COALESCE: usize = 8192;
/// A gossiped message: forwarding peer, gossipsub id, murmur topic, bytes (a run).
type Gossiped = (PeerId, MessageId, String, Vec<u8>);
/// How long a gap may stay open before its range is pulled from a peer.
const GAP_WAIT: Duration = Duration::from_millis(300);

/// When a log's gap was seen, who sent the event past it, and the held events by seq.
type HeldLog = (Instant, PeerId, BTreeMap<Seq, Event>);

/// Verified events that arrived ahead of a gap in their log, and when the gap was seen.
#[derive(Default)]
struct Pending {
    logs: BTreeMap<(Topic, AuthorId), HeldLog>,
    len: usize,
}

struct Replicator {
    /// While publishing is held: the topics still waiting for a finished round.
    unconfirmed: Option<BTreeSet<Topic>>,
    store: Arc<RocksStore>,
    net: murmur_p2p::Handle,
    sync: Sync<PeerId>,
    config: Config,
    peers: BTreeSet<PeerId>,
    subscribed: BTreeSet<Topic>,
    pending: Pending,
    rejects: BTreeMap<PeerId, u32>,
    known: BTreeMap<PeerId, Vec<murmur_p2p::Multiaddr>>,
    /// The last version vector each peer showed for each topic, and when.
    remote: BTreeMap<(Topic, PeerId), (Instant, RemoteView)>,
    known_dirty: bool,
    next_peer: usize,
    last_round: Instant,
    notify: Arc<watch::Sender<Offset>>,
    metrics: Metrics,
}

/// Starts the replicator thread; it stops when `inputs` closes.
pub fn spawn(
    store: Arc<RocksStore>,
    net: murmur_p2p::Handle,
    config: Config,
    notify: Arc<watch::Sender<Offset>>,
    metrics: Metrics,
    inputs: mpsc::Receiver<Input>,
) -> std::io::Result<JoinHandle<()>> {
    let unconfirmed = config.own.1.is_on().then(|| {
        store
            .logs()
            .map(|logs| logs.into_iter().map(|l| l.topic).collect())
            .unwrap_or_default()
    });
    let r = Replicator {
        unconfirmed,
        store,
        net,
        sync: Sync::new(config.sync.clone()),
        config,
        peers: BTreeSet::new(),
        subscribed: BTreeSet::new(),
        pending: Pending::default(),
        rejects: BTreeMap::new(),
        known: BTreeMap::new(),
        remote: BTreeMap::new(),
        known_dirty: false,
        next_peer: 0,
        last_round: Instant::now(),
        notify,
        metrics,
    };
    std::thread::Builder::new()
        .name("murmur-replicator".into())
        .spawn(move || r.run(inputs))
}

impl Replicator {
    fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        self.subscribe_known();
        let mut next: Option<Input> = None;
        loop {
            let input = match next.take() {
                Some(i) => i,
                None => match inputs.blocking_recv() {
                    Some(i) => i,
                    None => break,
                },
            };
            let now = Instant::now();
            match input {
                // Gossip that queued up is verified as a batch and stored in one write.
                Input::Net(murmur_p2p::Event::Gossip {
                    source,
                    id,
                    topic,
                    data,
                }) => {
                    let mut batch = vec![(source, id, topic, data)];
                    while batch.len() < GOSSIP_BATCH {
                        match inputs.try_recv() {
                            Ok(Input::Net(murmur_p2p::Event::Gossip {
                                source,
                                id,
                                topic,
                                data,
                            })) => {
                                batch.push((source, id, topic, data));
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.gossiped(batch, now);
                }
                Input::Net(ev) => self.net_event(ev, now),
                // Durable batches that queued up are gossiped together, so a log's
                // consecutive events leave as few, large runs.
                Input::Published(mut events) => {
                    while events.len() < PUBLISH_COALESCE {
                        match inputs.try_recv() {
                            Ok(Input::Published(more)) => events.extend(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    events.sort_by(|a, b| {
                        (a.topic(), a.author(), a.seq()).cmp(&(b.topic(), b.author(), b.seq()))
                    });
                    self.gossip(events);
                }
                Input::Tick => self.tick(now),
                Input::Stop => break,
                Input::Interest { add, remove, reply } => {
                    self.change_interest(add, remove, now);
                    let _ =
                        reply.send(self.config.topics.iter().map(ToString::to_string).collect());
                }
                Input::Status(reply) => {
                    let _ = reply.send(self.status(now));
                }
                Input::SyncNow(peer) => {
                    let peers: Vec<PeerId> = match peer {
                        Some(p) => vec![p],
                        None => self.peers.iter().copied().collect(),
                    };
                    for p in peers {
                        self.round(p, now);
                    }
                }
            }
        }
        tracing::debug!("replicator stopped");
    }

    fn interested(&self, topic: &Topic) -> bool {
        self.config.topics.iter().any(|p| p.matches(topic))
    }

    fn known_topics(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = match self.store.logs() {
            Ok(logs) => logs.into_iter().map(|l| l.topic).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list topics");
                Vec::new()
            }
        };
        topics.dedup();
        // Exact topics named in the interest list replicate even before we hold them.
        topics.extend(self.config.topics.iter().filter_map(Pattern::as_topic));
        topics.sort();
        topics.dedup();
        topics.retain(|t| self.interested(t));
        topics
    }

    fn subscribe(&mut self, topic: &Topic) {
        if self.interested(topic) && self.subscribed.insert(topic.clone()) {
            self.net.try_send(Command::Subscribe(topic.to_string()));
        }
    }

    fn subscribe_known(&mut self) {
        for t in self.known_topics() {
            self.subscribe(&t);
        }
    }

    fn round(&mut self, peer: PeerId, now: Instant) {
        for topic in self.known_topics() {
            let outs = self.sync.start(peer, topic, now, &*self.store);
            self.outputs(outs);
        }
    }

    fn tick(&mut self, now: Instant) {
        let outs = self.sync.tick(now);
        self.outputs(outs);
        self.save_known();
        // Gaps still open after GAP_WAIT: pull them from the peer that sent the event
        // past the gap.
        let due: Vec<(Topic, AuthorId, PeerId, Seq)> = self
            .pending
            .logs
            .iter_mut()
            .filter(|(_, (since, _, evs))| {
                now.duration_since(*since) >= GAP_WAIT && !evs.is_empty()
            })
            .map(|((t, a), (since, peer, evs))| {
                *since = now; // at most one pull per GAP_WAIT per log
                let last = evs.keys().next_back().copied().unwrap_or_default();
                (t.clone(), *a, *peer, last)
            })
            .collect();
        for (topic, author, peer, to) in due {
            let outs = self.sync.pull(peer, topic, author, to, now, &*self.store);
            self.outputs(outs);
        }
        if now.duration_since(self.last_round) >= self.config.anti_entropy_interval
            && !self.peers.is_empty()
        {
            self.last_round = now;
            self.next_peer = (self.next_peer + 1) % self.peers.len();
            if let Some(peer) = self.peers.iter().nth(self.next_peer).copied() {
                self.round(peer, now);
            }
        }
        self.metrics.sync_sessions.set(self.sync.sessions() as i64);
        self.metrics.peers.set(self.peers.len() as i64);
        self.metrics.expire_bans(now);
    }

    /// Gossips durable events as runs: consecutive events of one log travel as one
    /// message, so framing, message ids and IDONTWANT notices are paid per run.
    fn gossip(&mut self, events: Vec<Event>) {
        for r in run::split(&events, RUN_MAX_BYTES) {
            self.subscribe(r[0].topic());
            let data = match run::encode(r) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a run to gossip");
                    continue;
                }
            };
            let sent = self.net.try_send(Command::Publish {
                topic: r[0].topic().to_string(),
                data,
            });
            if !sent {
                // Anti-entropy delivers what live gossip dropped.
                self.metrics.refused("network_queue_full");
            }
        }
    }

    fn net_event(&mut self, ev: murmur_p2p::Event, now: Instant) {
        match ev {
            murmur_p2p::Event::Connected(peer) => {
                self.peers.insert(peer);
                self.round(peer, now);
            }
            murmur_p2p::Event::Disconnected(peer) => {
                self.peers.remove(&peer);
                self.forget_lag(&peer);
                let outs = self.sync.peer_gone(&peer);
                self.outputs(outs);
            }
            murmur_p2p::Event::Sync { peer, msg } => {
                if let Some(t) = msg.topic()
                    && !self.interested(t)
                {
                    return; // not a topic we replicate: let the peer's round time out
                }
                if let Some(t) = msg.topic().cloned() {
                    self.subscribe(&t);
                }
                self.observe(peer, &msg, now);
                let outs = self.sync.handle(peer, msg, now, &*self.store);
                self.outputs(outs);
            }
            murmur_p2p::Event::Identified { peer, addrs } => self.remember(peer, addrs),
            murmur_p2p::Event::PeerSubscribed { peer, topic } => {
                // Topic discovery: a peer announces a topic; if we replicate it, join its
                // gossip and reconcile it with that peer now.
                if let Ok(topic) = Topic::new(topic)
                    && self.interested(&topic)
                {
                    self.subscribe(&topic);
                    let outs = self.sync.start(peer, topic, now, &*self.store);
                    self.outputs(outs);
                }
            }
            murmur_p2p::Event::Gossip {
                source,
                id,
                topic,
                data,
            } => {
                self.gossiped(vec![(source, id, topic, data)], now);
            }
        }
    }

    fn outputs(&mut self, outs: Vec<Output<PeerId>>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    if !self.net.try_send(Command::Sync { peer: to, msg }) {
                        self.metrics.refused("network_queue_full");
                    }
                }
                Output::Stored { events, .. } => {
                    self.metrics.received("sync", events.len() as u64);
                    self.config
                        .clock
                        .observe(events.iter().map(|(_, e)| (e.author(), e.time())));
                    let logs: BTreeSet<(Topic, AuthorId)> = events
                        .iter()
                        .map(|(_, e)| (e.topic().clone(), e.author()))
                        .collect();
                    for (topic, author) in logs {
                        self.drain(&topic, author);
                    }
                    self.notify.send_replace(self.store.next_offset());
                }
                Output::Done {
                    peer,
                    topic,
                    pulled,
                } => {
                    self.metrics.session("done");
                    if pulled > 0 {
                        tracing::info!(%peer, %topic, pulled, "caught up");
                    }
                    self.confirm_own(&topic);
                }
                Output::Failed {
                    peer,
                    topic,
                    reason,
                } => {
                    self.metrics.session("failed");
                    tracing::debug!(%peer, %topic, ?reason, "sync round failed");
                }
                Output::Misbehaved { peer, violation } => {
                    self.metrics.rejected("sync_violation");
                    tracing::warn!(%peer, ?violation, "peer broke the sync protocol");
                    self.ban(peer, "sync_violation", "broke the sync protocol");
                }
                Output::Fork(proof) => {
                    tracing::warn!(author = %proof.author(), topic = %proof.topic(), seq = %proof.seq(), "fork proven: log frozen");
                }
            }
        }
    }
}
