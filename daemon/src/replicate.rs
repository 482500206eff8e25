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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::sync::{self as proto, Output, Sync};
use murmur_core::{Event, MAX_EVENT_BYTES, Offset, Outcome, Pattern, Store, Topic};
use murmur_p2p::{Command, PeerId, Verdict};
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
}

struct Replicator {
    store: Arc<RocksStore>,
    net: murmur_p2p::Handle,
    sync: Sync<PeerId>,
    config: Config,
    peers: BTreeSet<PeerId>,
    subscribed: BTreeSet<Topic>,
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
        while let Some(input) = inputs.blocking_recv() {
            let now = Instant::now();
            match input {
                Input::Net(ev) => self.net_event(ev, now),
                Input::Published(events) => self.gossip(events),
                Input::Tick => self.tick(now),
                Input::Stop => break,
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
                let outs = self.sync.handle(peer, msg, now, &*self.store);
                self.outputs(outs);
            }
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
                let verdict = self.gossiped(source, &topic, data, now);
                self.net.try_send(Command::Validate {
                    id,
                    source,
                    verdict,
                });
            }
        }
    }

    fn gossiped(&mut self, source: PeerId, topic: &str, data: Vec<u8>, now: Instant) -> Verdict {
        let ev = match Event::decode(Bytes::from(data), MAX_EVENT_BYTES) {
            Ok(ev) => ev,
            Err(e) => {
                self.metrics.rejected("malformed");
                tracing::debug!(peer = %source, error = %e, "rejected gossip: malformed event");
                return Verdict::Reject;
            }
        };
        if ev.topic().as_str() != topic {
            self.metrics.rejected("wrong_topic");
            return Verdict::Reject;
        }
        if !self.interested(ev.topic()) {
            return Verdict::Ignore;
        }
        if let Err(e) = ev.verify() {
            self.metrics.rejected("bad_signature");
            tracing::debug!(peer = %source, error = %e, "rejected gossip: bad signature");
            return Verdict::Reject;
        }
        let outcome = match self
            .store
            .insert(std::slice::from_ref(&ev), self.config.sync.durability)
        {
            Ok(mut o) => o.pop(),
            Err(e) => {
                tracing::error!(error = %e, "cannot store a gossiped event");
                return Verdict::Ignore;
            }
        };
        match outcome {
            Some(Outcome::Appended(_)) => {
                self.metrics.received("gossip", 1);
                self.notify.send_replace(self.store.next_offset());
                Verdict::Accept
            }
            Some(Outcome::Gap { .. }) => {
                // Fetch the missing range (and this event) from the peer that has it.
                let to = ev.seq();
                let outs = self.sync.pull(
                    source,
                    ev.topic().clone(),
                    ev.author(),
                    to,
                    now,
                    &*self.store,
                );
                self.outputs(outs);
                Verdict::Ignore
            }
            Some(Outcome::PrevMismatch) => {
                // The author forked at our head: a round with the sender proves it.
                let outs = self
                    .sync
                    .start(source, ev.topic().clone(), now, &*self.store);
                self.outputs(outs);
                Verdict::Ignore
            }
            Some(Outcome::Duplicate) => {
                self.metrics.duplicates.inc();
                Verdict::Ignore
            }
            _ => Verdict::Ignore,
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
                }
                Output::Fork(proof) => {
                    tracing::warn!(author = %proof.author(), topic = %proof.topic(), seq = %proof.seq(), "fork proven: log frozen");
                }
            }
        }
    }
}
