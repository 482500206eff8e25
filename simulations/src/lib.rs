//! # murmur-sim
//!
//! murmur's replication over a virtual network of up to 10,000 nodes in one process,
//! deterministic from a seed. What runs is the project's own code: events are signed
//! and encoded by `murmur-core`, pushed as real runs (`core::run`), checked by the real
//! acceptance rules in the real in-memory store, and reconciled by the real sans-IO sync
//! machine (`core::sync`), every sync message crossing the real frame codec.
//!
//! What is a **model** (see `simulations/README.md` for what it leaves out):
//! - live push follows gossipsub's mesh: each node keeps a mesh of `mesh_n` neighbours
//!   (repaired at each heartbeat between `mesh_lo` and `mesh_hi`), forwards a new run
//!   to its mesh peers once it has stored it, and every heartbeat announces the ids of
//!   the last `history` heartbeats' messages (IHAVE) to `lazy` non-mesh neighbours, who
//!   ask for what they lack (IWANT). An author sends `publish_ms` after publishing; a
//!   receiver holds and forwards a run `validate_ms` after receipt (verify and durable
//!   write), forwards it `hold_ms` later, and not to peers that sent it the message
//!   or announced IDONTWANT, which it sends to its mesh on receipt (gossipsub 1.2).
//!   Mesh links are symmetric (both ends graft and prune together, without sending
//!   GRAFT/PRUNE); peer scoring is not modelled;
//! - or, as an experiment ([`Push::Plumtree`]), Plumtree's eager tree and lazy
//!   announcements;
//! - the network: a latency per link drawn uniformly from `latency_ms` with a
//!   per-message jitter, independent loss and duplication, partitions, churn;
//!   bandwidth is not limited; every message costs its encoded size plus [`FRAMING`]
//!   bytes;
//! - a signature is verified once per distinct run or event across the whole
//!   simulation (the result is the same on every node), so 10,000 nodes do not spend
//!   10,000 verifications each; sync ranges are verified by the sync machine itself.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::sync::{self, Message, Output, Sync};
use murmur_core::{
    Clock, Draft, Durability, Event, EventId, Keypair, Outcome, Payload, Seq, Store, Topic, run,
    verify,
};
use murmur_store::MemoryStore;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

mod report;
mod scenario;

pub use report::Report;
pub use scenario::{Partition, Push, Scenario};

/// Bytes added to every message for transport framing (TCP/IP, Noise, Yamux, protocol
/// headers), as measured on loopback for small messages.
pub const FRAMING: u64 = 100;

type MsgId = [u8; 32];

#[derive(Clone)]
enum Msg {
    /// A gossip message: a run of events.
    Push {
        id: MsgId,
        run: Arc<Vec<u8>>,
    },
    IHave(Vec<MsgId>),
    IWant(Vec<MsgId>),
    IDontWant(MsgId),
    /// Plumtree: make this link eager again and send these messages.
    Graft(Vec<MsgId>),
    /// Plumtree: make this link lazy (a duplicate came over it).
    Prune,
    /// A sync protocol frame (length prefix included).
    Sync(Arc<Vec<u8>>),
}

impl Msg {
    fn wire_bytes(&self) -> u64 {
        FRAMING
            + match self {
                Msg::Push { run, .. } => run.len() as u64,
                Msg::IHave(ids) | Msg::IWant(ids) => 32 * ids.len() as u64,
                Msg::IDontWant(_) => 32,
                Msg::Graft(ids) => 32 * ids.len() as u64,
                Msg::Prune => 0,
                Msg::Sync(f) => f.len() as u64,
            }
    }
}

enum Ev {
    Deliver {
        to: usize,
        from: usize,
        msg: Msg,
    },
    Heartbeat(usize),
    /// A received run has been verified and stored at `node`.
    Validated {
        node: usize,
        from: usize,
        id: MsgId,
        run: Arc<Vec<u8>>,
    },
    /// A stored run's forward hold is over: send it to the mesh peers still lacking it.
    Forward {
        node: usize,
        from: usize,
        id: MsgId,
    },
    /// Plumtree: announce the ids gathered since the last flush to lazy neighbours.
    LazyFlush(usize),
    /// Plumtree: an announced message is overdue at `node`.
    GraftTimer {
        node: usize,
        id: MsgId,
    },
    Tick(usize),
    /// A node's anti-entropy timer.
    Round(usize),
    Publish(usize),
    PartitionStart,
    Heal,
    ChurnStep,
    Rejoin(usize),
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Node {
    store: MemoryStore,
    sync: Sync<usize>,
    neighbors: Vec<usize>,
    mesh: BTreeSet<usize>,
    seen: BTreeSet<MsgId>,
    /// Message ids of the last `history` heartbeats.
    mcache: VecDeque<Vec<MsgId>>,
    /// Peers that have a recent message (they sent it, or announced IDONTWANT): it is
    /// not forwarded to them. Pruned with the message cache.
    has: HashMap<MsgId, Vec<usize>>,
    /// Plumtree: ids to announce to lazy neighbours at the next flush.
    announce: Vec<MsgId>,
    /// Plumtree: neighbours that announced a message this node lacks, in order.
    announced: HashMap<MsgId, VecDeque<usize>>,
    /// Anti-entropy: index of the last peer rounded with, among the reachable ones.
    next_peer: usize,
    online: bool,
    side: bool,
    interested: bool,
    /// Publisher state: key, clock, head.
    author: Option<(Keypair, Clock, Option<Event>)>,
    bytes_push: u64,
    bytes_sync: u64,
    duplicates: u64,
}

/// The simulation.
pub struct Sim {
    sc: Scenario,
    rng: SmallRng,
    now: u64,
    seq: u64,
    base: Instant,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node>,
    topic: Topic,
    partitioned: bool,
    /// Pushed runs decoded and verified once: the events, or `None` if invalid.
    decoded: HashMap<MsgId, Option<Arc<Vec<Event>>>>,
    /// Every run pushed, by message id.
    runs: HashMap<MsgId, Arc<Vec<u8>>>,
    /// Publish time (µs) of every event, and when each interested node first held it.
    published: BTreeMap<EventId, (u64, Vec<u64>)>,
    event_bytes: u64,
    inflight: Vec<u64>,
    peak_inflight: u64,
    heal_at: Option<u64>,
    converged_at: Option<u64>,
    steps: u64,
}

const US: u64 = 1_000_000;

impl Sim {
    /// Builds the fleet: keys, a random connection graph, meshes, timers.
    pub fn new(sc: Scenario) -> anyhow::Result<Sim> {
        anyhow::ensure!(sc.nodes >= 2, "a fleet needs at least 2 nodes");
        anyhow::ensure!(sc.publishers <= sc.nodes, "more publishers than nodes");
        let mut rng = SmallRng::seed_from_u64(sc.seed);
        let n = sc.nodes;
        let mut neighbors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        // A ring keeps the graph connected; random links add the rest of the degree.
        for i in 0..n {
            let j = (i + 1) % n;
            neighbors[i].insert(j);
            neighbors[j].insert(i);
        }
        for i in 0..n {
            while neighbors[i].len() < sc.degree.min(n - 1) {
                let j = rng.random_range(0..n);
                if j != i {
                    neighbors[i].insert(j);
                    neighbors[j].insert(i);
                }
            }
        }
        let small_side = sc
            .partition
            .as_ref()
            .map_or(0, |p| (p.fraction * n as f64) as usize);
        let mut nodes = Vec::with_capacity(n);
        for (i, nb) in neighbors.into_iter().enumerate() {
            let nb: Vec<usize> = nb.into_iter().collect();
            let author = (i < sc.publishers).then(|| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                seed[8..16].copy_from_slice(&sc.seed.to_le_bytes());
                (Keypair::from_seed(&seed), Clock::default(), None)
            });
            nodes.push(Node {
                store: MemoryStore::new(),
                sync: Sync::new(sync::Config {
                    durability: Durability::Buffered,
                    ..sync::Config::default()
                }),
                neighbors: nb,
                mesh: BTreeSet::new(),
                seen: BTreeSet::new(),
                mcache: VecDeque::new(),
                has: HashMap::new(),
                announce: Vec::new(),
                announced: HashMap::new(),
                next_peer: 0,
                online: true,
                side: i >= n - small_side,
                interested: i < sc.publishers || rng.random_range(0.0..1.0) < sc.interested,
                author,
                bytes_push: 0,
                bytes_sync: 0,
                duplicates: 0,
            });
        }
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            base: Instant::now(),
            queue: BinaryHeap::new(),
            topic: Topic::new("sim/events")?,
            partitioned: false,
            decoded: HashMap::new(),
            runs: HashMap::new(),
            published: BTreeMap::new(),
            event_bytes: 0,
            inflight: vec![0; n],
            peak_inflight: 0,
            heal_at: None,
            converged_at: None,
            steps: 0,
            nodes,
            sc,
        };
        for i in 0..n {
            match sim.sc.push {
                Push::Gossipsub => sim.graft(i),
                // Plumtree starts with every link eager; duplicates prune it to a tree.
                Push::Plumtree => {
                    sim.nodes[i].mesh = sim.nodes[i].neighbors.iter().copied().collect();
                    let t = sim.rng.random_range(0..sim.sc.lazy_ms.max(1) * 1000);
                    sim.at(t, Ev::LazyFlush(i));
                }
            }
        }
        for i in 0..n {
            let hb = sim.rng.random_range(0..sim.sc.heartbeat_ms * 1000);
            sim.at(hb, Ev::Heartbeat(i));
            let t = sim.rng.random_range(0..US);
            sim.at(t, Ev::Tick(i));
            let t = sim.rng.random_range(0..sim.round_every().max(1));
            sim.at(t, Ev::Round(i));
        }
        let gap = ((US as f64 / sim.sc.rate.max(1e-6)) as u64).clamp(1, US);
        for p in 0..sim.sc.publishers {
            let t = sim.rng.random_range(0..gap);
            sim.at(t, Ev::Publish(p));
        }
        if let Some(p) = sim.sc.partition.clone() {
            sim.at((p.at * US as f64) as u64, Ev::PartitionStart);
            sim.at((p.heal * US as f64) as u64, Ev::Heal);
        }
        if sim.sc.churn_per_min > 0.0 {
            sim.at(US, Ev::ChurnStep);
        }
        Ok(sim)
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: t,
            seq: self.seq,
            ev,
        }));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn end(&self) -> u64 {
        ((self.sc.publish_s + self.sc.settle_s) * US as f64) as u64
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.nodes[a].online
            && self.nodes[b].online
            && !(self.partitioned && self.nodes[a].side != self.nodes[b].side)
    }

    /// Sends a message over the link a → b (lost, duplicated, delayed as configured).
    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.send_after(0, from, to, msg);
    }

    /// Sends a message `extra` µs from now.
    fn send_after(&mut self, extra: u64, from: usize, to: usize, msg: Msg) {
        if !self.connected(from, to) || self.rng.random_range(0.0..1.0) < self.sc.loss {
            return;
        }
        let copies = if self.rng.random_range(0.0..1.0) < self.sc.duplicate {
            2
        } else {
            1
        };
        let base = self.link_latency(from, to);
        for _ in 0..copies {
            let j = self.sc.jitter.max(0.0);
            let lat = ((base * self.rng.random_range(1.0 - j..=1.0 + j)) as u64).max(1);
            let bytes = msg.wire_bytes();
            self.inflight[to] += bytes;
            self.peak_inflight = self.peak_inflight.max(self.inflight[to]);
            self.at(
                self.now + extra + lat,
                Ev::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    /// The latency of the link between `a` and `b` (either way), µs: drawn from
    /// `latency_ms` by a hash of the seed and the pair, so no table is kept.
    fn link_latency(&self, a: usize, b: usize) -> f64 {
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let mut z = self.sc.seed ^ (x << 32 | y).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        let (lo, hi) = self.sc.latency_ms;
        (lo + u * (hi.max(lo) - lo)) * 1000.0
    }

    /// Runs to the end; returns the report.
    pub fn run(mut self) -> anyhow::Result<Report> {
        let end = self.end();
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.at > end {
                break;
            }
            self.now = q.at;
            self.steps += 1;
            self.step(q.ev)?;
        }
        Ok(self.report())
    }

    fn step(&mut self, ev: Ev) -> anyhow::Result<()> {
        match ev {
            Ev::Deliver { to, from, msg } => {
                self.inflight[to] = self.inflight[to].saturating_sub(msg.wire_bytes());
                if !self.connected(from, to) {
                    return Ok(()); // cut while in flight
                }
                self.deliver(to, from, msg)?;
            }
            Ev::Validated {
                node,
                from,
                id,
                run,
            } => {
                if self.nodes[node].online {
                    self.validated(node, from, id, run);
                }
            }
            Ev::Forward { node, from, id } => {
                if self.nodes[node].online {
                    self.forward(node, from, id);
                }
            }
            Ev::LazyFlush(i) => {
                self.lazy_flush(i);
                self.at(self.now + self.sc.lazy_ms.max(1) * 1000, Ev::LazyFlush(i));
            }
            Ev::GraftTimer { node, id } => {
                if self.nodes[node].online {
                    self.graft_timer(node, id);
                }
            }
            Ev::Heartbeat(i) => {
                self.heartbeat(i);
                let next = self.now + self.sc.heartbeat_ms * 1000;
                self.at(next, Ev::Heartbeat(i));
            }
            Ev::Tick(i) => {
                self.tick(i);
                self.at(self.now + US, Ev::Tick(i));
            }
            Ev::Round(i) => {
                // The daemon's timer runs while it is cut off, too; a round then finds
                // no reachable peer.
                if self.nodes[i].online {
                    self.round(i);
                }
                self.at(self.now + self.round_every().max(1), Ev::Round(i));
            }
            Ev::Publish(p) => {
                if (self.now as f64) < self.sc.publish_s * US as f64 {
                    self.publish(p)?;
                    let gap = (US as f64 / self.sc.rate.max(1e-6)) as u64;
                    self.at(self.now + gap.max(1), Ev::Publish(p));
                }
            }
            Ev::PartitionStart => self.partitioned = true,
            Ev::Heal => {
                self.partitioned = false;
                self.heal_at = Some(self.now);
            }
            Ev::ChurnStep => {
                let per_s = self.sc.churn_per_min / 60.0 * self.sc.nodes as f64;
                let mut k = per_s.floor() as usize;
                if self.rng.random_range(0.0..1.0) < per_s.fract() {
                    k += 1;
                }
                for _ in 0..k {
                    let i = self.rng.random_range(
                        self.sc.publishers..self.sc.nodes.max(self.sc.publishers + 1),
                    );
                    if i < self.sc.nodes && self.nodes[i].online {
                        self.nodes[i].online = false;
                        let back = self.now + (self.sc.churn_offline_s * US as f64) as u64;
                        self.at(back, Ev::Rejoin(i));
                    }
                }
                // Churn stops with publishing, so the settle phase shows the fleet heal.
                if (self.now as f64) < self.sc.publish_s * US as f64 {
                    self.at(self.now + US, Ev::ChurnStep);
                }
            }
            Ev::Rejoin(i) => {
                self.nodes[i].online = true;
                // A node that comes back runs a round with a neighbour at once.
                self.round(i);
            }
        }
        Ok(())
    }

    fn publish(&mut self, p: usize) -> anyhow::Result<()> {
        let wall_ms = 1_700_000_000_000 + self.now / 1000;
        let topic = self.topic.clone();
        let Some((key, clock, head)) = self.nodes[p].author.as_mut() else {
            return Ok(());
        };
        let seq = head.as_ref().map_or(Seq(0), |h| Seq(h.seq().0 + 1));
        let ev = Event::sign(
            &Draft {
                topic,
                seq,
                prev: head.as_ref().map(Event::id),
                time: clock.tick(wall_ms),
                body: Payload::data(Bytes::from(vec![b'x'; 256])),
            },
            key,
        )?;
        *head = Some(ev.clone());
        self.event_bytes += ev.bytes().len() as u64;
        self.published.insert(ev.id(), (self.now, Vec::new()));
        self.store(p, std::slice::from_ref(&ev));
        let bytes = run::encode(std::slice::from_ref(&ev))?;
        let id = *blake3::hash(&bytes).as_bytes();
        self.nodes[p].seen.insert(id);
        self.remember(p, id);
        let bytes = Arc::new(bytes);
        self.runs.insert(id, bytes.clone());
        let msg = Msg::Push { id, run: bytes };
        // gossipsub: flood publish, to every neighbour, once the event is durable.
        // Plumtree: to the eager neighbours; the others get the id in the next batch.
        let durable = (self.sc.publish_ms * 1000.0) as u64;
        let to = match self.sc.push {
            Push::Gossipsub => self.nodes[p].neighbors.clone(),
            Push::Plumtree => {
                self.nodes[p].announce.push(id);
                self.nodes[p].mesh.iter().copied().collect()
            }
        };
        for to in to {
            self.send_after(durable, p, to, msg.clone());
        }
        Ok(())
    }

    fn remember(&mut self, i: usize, id: MsgId) {
        let m = &mut self.nodes[i].mcache;
        if m.is_empty() {
            m.push_back(Vec::new());
        }
        if let Some(w) = m.back_mut() {
            w.push(id);
        }
    }

    /// Stores events at node `i`, recording first arrivals.
    fn store(&mut self, i: usize, events: &[Event]) -> Vec<Outcome> {
        let outcomes = match self.nodes[i].store.insert(events, Durability::Buffered) {
            Ok(o) => o,
            Err(e) => match e {},
        };
        for (ev, o) in events.iter().zip(&outcomes) {
            if matches!(o, Outcome::Appended(_)) {
                self.arrived(i, ev.id());
            }
        }
        outcomes
    }

    fn arrived(&mut self, i: usize, id: EventId) {
        if let Some((_, times)) = self.published.get_mut(&id)
            && self.nodes[i].interested
        {
            times.push(self.now);
        }
    }

    fn deliver(&mut self, to: usize, from: usize, msg: Msg) -> anyhow::Result<()> {
        let size = msg.wire_bytes();
        match msg {
            Msg::Push { id, run: bytes } => {
                self.nodes[to].bytes_push += size;
                if !self.nodes[to].interested {
                    return Ok(());
                }
                self.nodes[to].has.entry(id).or_default().push(from);
                if !self.nodes[to].seen.insert(id) {
                    self.nodes[to].duplicates += 1;
                    if self.sc.push == Push::Plumtree
                        && self.nodes[to].mesh.len() > self.sc.eager_min
                        && self.nodes[to].mesh.remove(&from)
                    {
                        self.send(to, from, Msg::Prune);
                    }
                    return Ok(());
                }
                if self.sc.push == Push::Plumtree {
                    // The link it came over is (again) a tree link.
                    self.nodes[to].announced.remove(&id);
                    self.nodes[to].mesh.insert(from);
                }
                if self.sc.push == Push::Gossipsub
                    && self
                        .sc
                        .idontwant_above
                        .is_some_and(|t| bytes.len() as u64 > t)
                {
                    for peer in self.nodes[to].mesh.clone() {
                        if peer != from {
                            self.send(to, peer, Msg::IDontWant(id));
                        }
                    }
                }
                // Verify and store take `validate_ms`; the node holds the run after that.
                let delay = (self.sc.validate_ms * 1000.0) as u64;
                self.at(
                    self.now + delay,
                    Ev::Validated {
                        node: to,
                        from,
                        id,
                        run: bytes,
                    },
                );
            }
            Msg::IHave(ids) if self.sc.push == Push::Plumtree => {
                self.nodes[to].bytes_push += size;
                if !self.nodes[to].interested {
                    return Ok(());
                }
                for id in ids {
                    if self.nodes[to].seen.contains(&id) {
                        continue;
                    }
                    let first = !self.nodes[to].announced.contains_key(&id);
                    self.nodes[to]
                        .announced
                        .entry(id)
                        .or_default()
                        .push_back(from);
                    if first {
                        let t = self.now + self.sc.graft_ms * 1000;
                        self.at(t, Ev::GraftTimer { node: to, id });
                    }
                }
            }
            Msg::Graft(ids) => {
                self.nodes[to].bytes_push += size;
                self.nodes[to].mesh.insert(from);
                for id in ids {
                    if let Some(run) = self.cached_run(to, &id) {
                        self.send(to, from, Msg::Push { id, run });
                    }
                }
            }
            Msg::Prune => {
                self.nodes[to].bytes_push += size;
                self.nodes[to].mesh.remove(&from);
            }
            Msg::IHave(ids) => {
                self.nodes[to].bytes_push += size;
                if !self.nodes[to].interested {
                    return Ok(());
                }
                let want: Vec<MsgId> = ids
                    .into_iter()
                    .filter(|id| !self.nodes[to].seen.contains(id))
                    .collect();
                if !want.is_empty() {
                    self.send(to, from, Msg::IWant(want));
                }
            }
            Msg::IDontWant(id) => {
                self.nodes[to].bytes_push += size;
                self.nodes[to].has.entry(id).or_default().push(from);
            }
            Msg::IWant(ids) => {
                self.nodes[to].bytes_push += size;
                // Serve what we still cache (we re-encode from the store by id).
                for id in ids {
                    if let Some(run) = self.cached_run(to, &id) {
                        self.send(to, from, Msg::Push { id, run });
                    }
                }
            }
            Msg::Sync(frame) => {
                self.nodes[to].bytes_sync += size;
                let Ok(m) = Message::from_body(&frame[4..]) else {
                    return Ok(());
                };
                if !self.nodes[to].interested {
                    return Ok(());
                }
                let now = self.instant();
                let node = &mut self.nodes[to];
                let outs = node.sync.handle(from, m, now, &node.store);
                self.outputs(to, outs);
            }
        }
        Ok(())
    }

    /// A received run, verified and stored (after `validate_ms`): the node holds it,
    /// pulls any gap from the sender, and forwards it to its mesh.
    fn validated(&mut self, node: usize, from: usize, id: MsgId, run: Arc<Vec<u8>>) {
        // Decoding and verifying the same bytes gives the same result on every
        // node: done once per message, shared (the events' bytes too).
        let decoded = match self.decoded.get(&id) {
            Some(d) => d.clone(),
            None => {
                let d = run::decode(&run, usize::MAX)
                    .ok()
                    .filter(|evs| verify::verify_range(evs, None).is_ok())
                    .map(Arc::new);
                self.decoded.insert(id, d.clone());
                d
            }
        };
        // A real node rejects a bad run and scores the sender down.
        let Some(events) = decoded else {
            return;
        };
        let outcomes = self.store(node, &events);
        if outcomes.iter().any(|o| matches!(o, Outcome::Gap { .. })) {
            // The daemon holds it and pulls the gap; here: pull from the sender.
            let ev = &events[events.len() - 1];
            let (topic, author, seq) = (ev.topic().clone(), ev.author(), ev.seq());
            let now = self.instant();
            let n = &mut self.nodes[node];
            let outs = n.sync.pull(from, topic, author, seq, now, &n.store);
            self.outputs(node, outs);
        }
        if outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Appended(_) | Outcome::Gap { .. }))
        {
            self.remember(node, id);
            if self.sc.push == Push::Plumtree {
                self.nodes[node].announce.push(id);
            }
            let hold = (self.sc.hold_ms * 1000.0) as u64;
            if hold == 0 {
                self.forward(node, from, id);
            } else {
                self.at(self.now + hold, Ev::Forward { node, from, id });
            }
        }
    }

    /// Sends a held run to the mesh peers that do not have it.
    fn forward(&mut self, node: usize, from: usize, id: MsgId) {
        if let Some(run) = self.runs.get(&id).cloned() {
            let msg = Msg::Push { id, run };
            let skip = self.nodes[node].has.get(&id).cloned().unwrap_or_default();
            for peer in self.nodes[node].mesh.clone() {
                if peer != from && !skip.contains(&peer) {
                    self.send(node, peer, msg.clone());
                }
            }
        }
    }

    /// The run behind a message id, if node `i` still caches it (message ids are
    /// content hashes, so one table serves every node).
    fn cached_run(&self, i: usize, id: &MsgId) -> Option<Arc<Vec<u8>>> {
        if !self.nodes[i].mcache.iter().any(|w| w.contains(id)) {
            return None;
        }
        self.runs.get(id).cloned()
    }

    fn outputs(&mut self, i: usize, outs: Vec<Output<usize>>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    if let Ok(frame) = msg.to_frame() {
                        self.send(i, to, Msg::Sync(Arc::new(frame)));
                    }
                }
                Output::Stored { events, .. } => {
                    for (_, ev) in events {
                        self.arrived(i, ev.id());
                    }
                }
                _ => {}
            }
        }
    }

    fn heartbeat(&mut self, i: usize) {
        if !self.nodes[i].online {
            return;
        }
        if self.sc.push == Push::Plumtree {
            self.rotate_cache(i);
            return;
        }
        // Mesh repair: drop unreachable peers, top up from neighbours, trim the excess.
        // Both ends of a mesh link change together (GRAFT and PRUNE are not sent as
        // messages: they are rare and small).
        let reachable: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|&p| self.connected(i, p))
            .collect();
        let gone: Vec<usize> = self.nodes[i]
            .mesh
            .iter()
            .copied()
            .filter(|p| !reachable.contains(p))
            .collect();
        for p in gone {
            self.prune(i, p);
        }
        if self.nodes[i].mesh.len() < self.sc.mesh_lo {
            self.graft(i);
        }
        while self.nodes[i].mesh.len() > self.sc.mesh_hi {
            let k = self.rng.random_range(0..self.nodes[i].mesh.len());
            if let Some(p) = self.nodes[i].mesh.iter().nth(k).copied() {
                self.prune(i, p);
            }
        }
        // IHAVE: the last `history` windows, to `lazy` non-mesh neighbours.
        let ids: Vec<MsgId> = self.nodes[i].mcache.iter().flatten().copied().collect();
        if !ids.is_empty() {
            let mut pool: Vec<usize> = reachable
                .into_iter()
                .filter(|p| !self.nodes[i].mesh.contains(p))
                .collect();
            for _ in 0..self.sc.lazy.min(pool.len()) {
                let k = self.rng.random_range(0..pool.len());
                let p = pool.swap_remove(k);
                self.send(i, p, Msg::IHave(ids.clone()));
            }
        }
        self.rotate_cache(i);
    }

    /// Starts a new message cache window and forgets what fell out of the last one.
    fn rotate_cache(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.mcache.push_back(Vec::new());
        while node.mcache.len() > self.sc.history {
            node.mcache.pop_front();
        }
        let recent: BTreeSet<MsgId> = node.mcache.iter().flatten().copied().collect();
        node.has.retain(|id, _| recent.contains(id));
    }

    /// Plumtree: one batch of ids to every lazy neighbour (not on a tree link).
    fn lazy_flush(&mut self, i: usize) {
        if !self.nodes[i].online || self.nodes[i].announce.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.nodes[i].announce);
        let lazy: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|p| !self.nodes[i].mesh.contains(p))
            .collect();
        for p in lazy {
            self.send(i, p, Msg::IHave(ids.clone()));
        }
    }

    /// Plumtree: an announced message has not arrived; graft the next announcer's link
    /// and ask it for the message, and try the one after if that fails too.
    fn graft_timer(&mut self, node: usize, id: MsgId) {
        if self.nodes[node].seen.contains(&id) {
            self.nodes[node].announced.remove(&id);
            return;
        }
        let Some(peer) = self.nodes[node]
            .announced
            .get_mut(&id)
            .and_then(VecDeque::pop_front)
        else {
            self.nodes[node].announced.remove(&id);
            return;
        };
        self.nodes[node].mesh.insert(peer);
        self.send(node, peer, Msg::Graft(vec![id]));
        let t = self.now + self.sc.graft_ms * 1000;
        self.at(t, Ev::GraftTimer { node, id });
    }

    /// Grafts reachable neighbours with room (under `mesh_hi`) into node `i`'s mesh,
    /// up to `mesh_n`; both ends add the link.
    fn graft(&mut self, i: usize) {
        let mut pool: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|&p| {
                self.connected(i, p)
                    && !self.nodes[i].mesh.contains(&p)
                    && self.nodes[p].mesh.len() < self.sc.mesh_hi
            })
            .collect();
        while self.nodes[i].mesh.len() < self.sc.mesh_n && !pool.is_empty() {
            let k = self.rng.random_range(0..pool.len());
            let p = pool.swap_remove(k);
            self.nodes[i].mesh.insert(p);
            self.nodes[p].mesh.insert(i);
        }
    }

    /// Removes the mesh link between `i` and `p`, at both ends.
    fn prune(&mut self, i: usize, p: usize) {
        self.nodes[i].mesh.remove(&p);
        self.nodes[p].mesh.remove(&i);
    }

    fn tick(&mut self, i: usize) {
        if !self.nodes[i].online {
            return;
        }
        let now = self.instant();
        let node = &mut self.nodes[i];
        let outs = node.sync.tick(now);
        self.outputs(i, outs);
        self.check_converged();
    }

    /// The anti-entropy interval, µs.
    fn round_every(&self) -> u64 {
        (self.sc.anti_entropy_s * US as f64) as u64
    }

    /// An anti-entropy round with the next reachable neighbour in turn, as the daemon
    /// rounds with its next connected peer. (The model takes a lost or restored
    /// connection as known at once; the daemon learns it from pings and redials.)
    fn round(&mut self, i: usize) {
        if !self.nodes[i].interested {
            return;
        }
        let reachable: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|&p| self.connected(i, p))
            .collect();
        if reachable.is_empty() {
            return;
        }
        let k = (self.nodes[i].next_peer + 1) % reachable.len();
        self.nodes[i].next_peer = k;
        let peer = reachable[k];
        let now = self.instant();
        let node = &mut self.nodes[i];
        let outs = node.sync.start(peer, self.topic.clone(), now, &node.store);
        self.outputs(i, outs);
    }

    fn check_converged(&mut self) {
        if let (Some(h), None) = (self.heal_at, self.converged_at)
            && self.now >= h
            && self.complete()
        {
            self.converged_at = Some(self.now);
        }
    }

    fn complete(&self) -> bool {
        let want = self.published.len();
        self.published
            .values()
            .all(|(_, t)| t.len() == self.interested_count())
            && want > 0
    }

    fn interested_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.interested).count()
    }

    fn report(&self) -> Report {
        let interested = self.interested_count();
        let mut t50 = Vec::new();
        let mut t99 = Vec::new();
        let mut t100 = Vec::new();
        for (t0, times) in self.published.values() {
            let mut times = times.clone();
            times.sort_unstable();
            let at = |frac: f64| {
                let need = ((interested as f64) * frac).ceil() as usize;
                times
                    .get(need.saturating_sub(1))
                    .filter(|_| times.len() >= need)
                    .map_or(f64::INFINITY, |t| (t - t0) as f64 / 1000.0)
            };
            t50.push(at(0.5));
            t99.push(at(0.99));
            t100.push(at(1.0));
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            v.sort_by(f64::total_cmp);
            v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
        };
        let events = self.published.len().max(1) as f64;
        let per = |f: fn(&Node) -> u64| {
            self.nodes
                .iter()
                .filter(|n| n.interested)
                .map(f)
                .sum::<u64>() as f64
                / interested.max(1) as f64
                / events
        };
        let mut h = blake3::Hasher::new();
        for n in &self.nodes {
            let Ok(vv) = n.store.version_vector(&self.topic);
            h.update(&vv.digest().0);
        }
        Report {
            events: self.published.len(),
            interested,
            t50_ms: (pct(&mut t50.clone(), 0.5), pct(&mut t50, 0.99)),
            t99_ms: (pct(&mut t99.clone(), 0.5), pct(&mut t99, 0.99)),
            t100_ms: (pct(&mut t100.clone(), 0.5), pct(&mut t100, 0.99)),
            push_bytes_per_event: per(|n| n.bytes_push),
            sync_bytes_per_event: per(|n| n.bytes_sync),
            event_bytes: self.event_bytes as f64 / events,
            redundancy: per(|n| n.duplicates),
            peak_queued_bytes: self.peak_inflight,
            converged_after_heal_ms: match (self.heal_at, self.converged_at) {
                (Some(h), Some(c)) => Some((c - h) as f64 / 1000.0),
                _ => None,
            },
            complete: self.complete(),
            state_hash: h.finalize().to_hex().to_string(),
            simulated_s: self.now as f64 / US as f64,
            steps: self.steps,
        }
    }
}
