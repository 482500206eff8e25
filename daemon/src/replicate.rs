//! Replication: the thread that drives the core sync machine over the network.
//!
//! It owns the [`murmur_core::sync::Sync`] machine and talks to the store directly
//! (blocking calls are fine on this thread, never on the network task). Inputs arrive on
//! one bounded channel: network events, locally published events to gossip, ticks.
//!
//! - Locally published events arrive here only after they are durable, and are gossiped.
//! - Gossiped events are decoded (bounded), checked for topic and signature, and inserted;
//!   the verdict goes back to gossipsub (Accept / Reject / Ignore) so peer scoring learns
//!   who sends garbage. An event past a gap triggers a targeted pull from its sender.
//! - A round of anti-entropy runs with every peer that connects, and periodically with
//!   the next connected peer in turn, for every topic we hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::VersionVector;
use murmur_core::sync::{self as proto, Output, Sync};
use murmur_core::verify::verify_batch;
use murmur_core::{AuthorId, Event, MAX_EVENT_BYTES, Offset, Outcome, Pattern, Seq, Store, Topic};
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
}

/// Most gossiped events held while waiting for a gap to fill (overflow is dropped: the
/// pull that follows fetches them).
const PENDING_MAX: usize = 16_384;
/// Most gossiped events verified and stored together.
const GOSSIP_BATCH: usize = 256;
/// Invalid gossiped events a peer may forward before it is banned (a few can be honest
/// forwarding of someone else's garbage before scoring catches up).
const REJECTS_BEFORE_BAN: u32 = 3;
/// Most (topic, peer) views kept for the replication status.
const REMOTE_VIEWS_MAX: usize = 4096;

/// What a peer showed of a topic in its last round with us.
#[derive(Debug, Clone)]
enum RemoteView {
    /// Its version vector (the digests differed).
    Vector(VersionVector),
    /// Same digest as ours at that time.
    InSync,
}

/// Events `theirs` holds beyond `ours` (sum over authors).
fn lag(ours: &VersionVector, theirs: &VersionVector) -> u64 {
    ours.wants_from(theirs)
        .iter()
        .map(|w| w.to.0 + 1 - w.from.0)
        .sum()
}

/// Most peers remembered in the peers file.
pub const KNOWN_PEERS_MAX: usize = 256;
/// How long a misbehaving peer is kept out.
const BAN: Duration = Duration::from_secs(600);

/// A gossiped message: forwarding peer, gossipsub id, murmur topic, bytes.
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
    let r = Replicator {
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
                Input::Published(events) => self.gossip(events),
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
    }

    fn gossip(&mut self, events: Vec<Event>) {
        for ev in events {
            self.subscribe(ev.topic());
            self.net.try_send(Command::Publish {
                topic: ev.topic().to_string(),
                data: ev.bytes().to_vec(),
            });
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

    /// Decodes, checks and batch-verifies gossiped events, stores the valid ones in one
    /// write, and reports a verdict for each to gossipsub.
    fn gossiped(&mut self, batch: Vec<Gossiped>, now: Instant) {
        let mut valid: Vec<(PeerId, MessageId, Event)> = Vec::with_capacity(batch.len());
        for (source, id, topic, data) in batch {
            let verdict = match Event::decode(Bytes::from(data), MAX_EVENT_BYTES) {
                Err(e) => {
                    tracing::debug!(peer = %source, error = %e, "rejected gossip: malformed event");
                    self.metrics.rejected("malformed");
                    Verdict::Reject
                }
                Ok(ev) if ev.topic().as_str() != topic => {
                    self.metrics.rejected("wrong_topic");
                    Verdict::Reject
                }
                Ok(ev) if !self.interested(ev.topic()) => Verdict::Ignore,
                Ok(ev) => {
                    valid.push((source, id, ev));
                    continue;
                }
            };
            self.validate(id, source, verdict);
        }
        let events: Vec<Event> = valid.iter().map(|(_, _, e)| e.clone()).collect();
        let checks = verify_batch(&events);
        let mut good = Vec::with_capacity(valid.len());
        for ((source, id, ev), check) in valid.into_iter().zip(checks) {
            match check {
                Ok(()) => good.push((source, id, ev)),
                Err(e) => {
                    tracing::debug!(peer = %source, error = %e, "rejected gossip: bad signature");
                    self.metrics.rejected("bad_signature");
                    self.validate(id, source, Verdict::Reject);
                }
            }
        }
        if good.is_empty() {
            return;
        }
        let events: Vec<Event> = good.iter().map(|(_, _, e)| e.clone()).collect();
        let outcomes = match self.store.insert(&events, self.config.sync.durability) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot store gossiped events");
                for (source, id, _) in good {
                    self.validate(id, source, Verdict::Ignore);
                }
                return;
            }
        };
        let mut appended: BTreeSet<(Topic, AuthorId)> = BTreeSet::new();
        for ((source, id, ev), outcome) in good.into_iter().zip(outcomes) {
            let verdict = match outcome {
                Outcome::Appended(_) => {
                    self.metrics.received("gossip", 1);
                    appended.insert((ev.topic().clone(), ev.author()));
                    Verdict::Accept
                }
                Outcome::Gap { .. } => self.hold(source, ev, now),
                Outcome::PrevMismatch => {
                    // The author forked at our head: a round with the sender proves it.
                    let outs = self
                        .sync
                        .start(source, ev.topic().clone(), now, &*self.store);
                    self.outputs(outs);
                    Verdict::Ignore
                }
                Outcome::Duplicate => {
                    self.metrics.duplicates.inc();
                    Verdict::Ignore
                }
                _ => Verdict::Ignore,
            };
            self.validate(id, source, verdict);
        }
        for (topic, author) in appended {
            self.drain(&topic, author);
        }
        self.notify.send_replace(self.store.next_offset());
    }

    /// Reports a verdict to gossipsub; bans a peer that keeps forwarding invalid events.
    fn validate(&mut self, id: MessageId, source: PeerId, verdict: Verdict) {
        self.net.try_send(Command::Validate {
            id,
            source,
            verdict,
        });
        if verdict == Verdict::Reject {
            let n = self.rejects.entry(source).or_insert(0);
            *n += 1;
            if *n >= REJECTS_BEFORE_BAN {
                self.rejects.remove(&source);
                self.ban(source, "forwarded invalid events");
            }
        }
    }

    /// Remembers where `peer` listens (bounded: [`KNOWN_PEERS_MAX`] peers, 8 addresses
    /// each); written to the peers file at the next tick.
    fn remember(&mut self, peer: PeerId, mut addrs: Vec<murmur_p2p::Multiaddr>) {
        addrs.truncate(8);
        if self.known.get(&peer) == Some(&addrs) {
            return;
        }
        if !self.known.contains_key(&peer) && self.known.len() >= KNOWN_PEERS_MAX {
            return;
        }
        self.known.insert(peer, addrs);
        self.known_dirty = true;
    }

    /// Writes the known peers atomically (temp file + rename), one dialable address per
    /// line.
    fn save_known(&mut self) {
        if !self.known_dirty {
            return;
        }
        self.known_dirty = false;
        let mut text =
            String::from("# peers this node has met; dialed at start (murmur writes this file)\n");
        for (peer, addrs) in &self.known {
            for a in addrs {
                text.push_str(&format!("{a}/p2p/{peer}\n"));
            }
        }
        let tmp = self.config.peers_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.config.peers_file));
        if let Err(e) = r {
            tracing::warn!(error = %e, file = %self.config.peers_file.display(), "cannot save known peers");
        }
    }

    fn change_interest(&mut self, add: Option<Pattern>, remove: Option<Pattern>, now: Instant) {
        if let Some(p) = remove {
            self.config.topics.retain(|t| *t != p);
            let gone: Vec<Topic> = self
                .subscribed
                .iter()
                .filter(|t| !self.interested(t))
                .cloned()
                .collect();
            for t in gone {
                self.subscribed.remove(&t);
                self.net.try_send(Command::Unsubscribe(t.to_string()));
            }
        }
        if let Some(p) = add
            && !self.config.topics.contains(&p)
        {
            self.config.topics.push(p);
            self.subscribe_known();
            // Topics peers announced before we cared about them: hear them again.
            self.net.try_send(Command::ReplaySubscriptions);
            let peers: Vec<PeerId> = self.peers.iter().copied().collect();
            for peer in peers {
                self.round(peer, now);
            }
        }
        let text: String = self
            .config
            .topics
            .iter()
            .map(|p| format!("{p}\n"))
            .collect();
        let tmp = self.config.interest_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.config.interest_file));
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot save the interest list");
        }
        tracing::info!(patterns = ?self.config.topics.iter().map(ToString::to_string).collect::<Vec<_>>(), "interest changed");
    }

    /// Notes what a peer shows of a topic in a round.
    fn observe(&mut self, peer: PeerId, msg: &proto::Message, now: Instant) {
        let view = match msg {
            proto::Message::Vector { vv, .. } => RemoteView::Vector(vv.clone()),
            proto::Message::InSync { .. } => RemoteView::InSync,
            _ => return,
        };
        let Some(topic) = msg.topic() else { return };
        if self.remote.len() >= REMOTE_VIEWS_MAX
            && !self.remote.contains_key(&(topic.clone(), peer))
        {
            return;
        }
        self.remote.insert((topic.clone(), peer), (now, view));
    }

    /// Per topic and peer: events they showed that we lack, and that we hold beyond them.
    fn status(&self, now: Instant) -> crate::api::ReplicationJson {
        let mut topics: BTreeMap<Topic, Vec<crate::api::PeerLagJson>> = BTreeMap::new();
        for ((topic, peer), (at, view)) in &self.remote {
            let Ok(ours) = self.store.version_vector(topic) else {
                continue;
            };
            let (behind, ahead) = match view {
                RemoteView::InSync => (0, 0),
                RemoteView::Vector(theirs) => (lag(&ours, theirs), lag(theirs, &ours)),
            };
            topics
                .entry(topic.clone())
                .or_default()
                .push(crate::api::PeerLagJson {
                    peer: peer.to_string(),
                    connected: self.peers.contains(peer),
                    behind,
                    ahead,
                    seen_secs_ago: now.duration_since(*at).as_secs(),
                });
        }
        crate::api::ReplicationJson {
            peers: self.peers.len() as u64,
            sync_sessions: self.sync.sessions() as u64,
            held_out_of_order: self.pending.len as u64,
            topics: topics
                .into_iter()
                .map(|(topic, peers)| crate::api::TopicLagJson {
                    topic: topic.to_string(),
                    peers,
                })
                .collect(),
        }
    }

    fn ban(&mut self, peer: PeerId, why: &str) {
        if self.known.remove(&peer).is_some() {
            self.known_dirty = true;
        }
        tracing::warn!(%peer, why, "disconnecting a misbehaving peer for {BAN:?}");
        self.metrics.refused("peer_banned");
        self.net.try_send(Command::Ban { peer, for_: BAN });
        let outs = self.sync.peer_gone(&peer);
        self.outputs(outs);
    }

    /// Holds a valid event that arrived ahead of a gap (gossip took another path for the
    /// events before it) until the gap fills; `tick` pulls gaps that stay open.
    fn hold(&mut self, source: PeerId, ev: Event, now: Instant) -> Verdict {
        if self.pending.len >= PENDING_MAX {
            self.metrics.rejected("pending_full");
            let outs = self.sync.pull(
                source,
                ev.topic().clone(),
                ev.author(),
                ev.seq(),
                now,
                &*self.store,
            );
            self.outputs(outs);
            return Verdict::Ignore;
        }
        let key = (ev.topic().clone(), ev.author());
        let entry = self
            .pending
            .logs
            .entry(key)
            .or_insert_with(|| (now, source, BTreeMap::new()));
        if entry.2.insert(ev.seq(), ev).is_none() {
            self.pending.len += 1;
        }
        Verdict::Accept
    }

    /// Inserts the held events of a log that now continue its head, in one batch.
    fn drain(&mut self, topic: &Topic, author: AuthorId) {
        let key = (topic.clone(), author);
        loop {
            let head = match self.store.log_state(&author, topic) {
                Ok(st) => st.head.map(|h| h.seq),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a log head");
                    return;
                }
            };
            let Some((_, _, held)) = self.pending.logs.get_mut(&key) else {
                return;
            };
            // Forget what the log already holds.
            let stale: Vec<Seq> = held
                .keys()
                .copied()
                .take_while(|s| head.is_some_and(|h| *s <= h))
                .collect();
            for s in stale {
                held.remove(&s);
                self.pending.len -= 1;
            }
            let mut next = head.map_or(Seq(0), |h| Seq(h.0 + 1));
            let mut run = Vec::new();
            while let Some(ev) = held.remove(&next) {
                self.pending.len -= 1;
                run.push(ev);
                next = Seq(next.0 + 1);
            }
            if held.is_empty() {
                self.pending.logs.remove(&key);
            }
            if run.is_empty() {
                return;
            }
            match self.store.insert(&run, self.config.sync.durability) {
                Ok(outcomes) => {
                    let n = outcomes
                        .iter()
                        .filter(|o| matches!(o, Outcome::Appended(_)))
                        .count();
                    self.metrics.received("gossip", n as u64);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store held events");
                    return;
                }
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
                    self.ban(peer, "broke the sync protocol");
                }
                Output::Fork(proof) => {
                    tracing::warn!(author = %proof.author(), topic = %proof.topic(), seq = %proof.seq(), "fork proven: log frozen");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_core::{EventId, vv::Entry};

    #[test]
    fn lag_counts_the_events_one_side_lacks() {
        let a = AuthorId([1; 32]);
        let b = AuthorId([2; 32]);
        let e = |seq: u64| Entry {
            seq: Seq(seq),
            id: EventId([seq as u8; 32]),
        };
        let mut ours = VersionVector::new();
        ours.insert(a, e(9)); // 10 events
        let mut theirs = VersionVector::new();
        theirs.insert(a, e(14)); // 15 events: we lack 5
        theirs.insert(b, e(2)); // 3 events of an author we do not have
        assert_eq!(lag(&ours, &theirs), 5 + 3);
        assert_eq!(lag(&theirs, &ours), 0);
        assert_eq!(lag(&ours, &ours), 0);
    }
}
