//! # murmur-sim
//!
//! murmur's replication over a virtual network of up to 10,000 nodes in one process,
//! deterministic from a seed. What runs is the project's own code: events are signed
//! and encoded by `murmur-core`, pushed as real runs (`core::run`), checked by the real
//! acceptance rules in the real in-memory store, and handled by the daemon's own
//! replication machine (`core::replicate`: gossip checks and verdicts, bans, events held
//! past gaps and gap pulls, rounds on connect and in turn, fork handling) around the
//! real sans-IO sync machine (`core::sync`), every sync message crossing the real frame
//! codec. The simulator has no replication policy of its own.
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
//!   per-message jitter, independent loss and duplication, an upload bandwidth per
//!   node, partitions, swizzle-clog, churn with or without the returning node's store;
//!   every message costs its encoded size plus [`FRAMING`] bytes;
//! - byzantine nodes that publish forged events; invariants checked at every write of
//!   an honest node (only events an honest author published; heads never go back);
//! - a gossiped run's signature is verified once per distinct event across the whole
//!   simulation (the machine's verifier hook; the result is the same on every node),
//!   so 10,000 nodes do not spend 10,000 verifications each; sync ranges are verified
//!   by the sync machine itself;
//! - connections: a node's machine learns at its next tick (every second) which
//!   neighbours it can reach, as the daemon learns from libp2p (connect and
//!   disconnect); bans cut the link at the banning end.
//!
//! Layout: this file builds the fleet, runs the event loop and delivers messages;
//! `network` is the clock and the links, `gossip` the gossipsub mesh, `plumtree` the
//! experimental tree push, `replication` publishing, storing, sync and anti-entropy,
//! `faults` churn, cloned keys and swizzle-clog, `report` the figures, `scenario` the
//! parameters.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::replicate::{self, Gossip, Output, Replicator};
use murmur_core::sync::{self, Message};
use murmur_core::{
    AuthorId, Clock, Draft, Durability, Event, EventId, Keypair, Outcome, Pattern, Payload,
    ReadStore, Seq, Store, Topic,
};
use murmur_store::MemoryStore;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

mod faults;
mod fleet;
mod gossip;
mod network;
mod plumtree;
mod replication;
mod report;
mod retention;
mod scenario;

pub use fleet::FleetReport;
pub use report::Report;
pub use retention::RetentionReport;
pub use scenario::{FleetPolicy, Partition, Push, Retention, Scenario, Swizzle};

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
    /// A rendezvous lookup of `node` has its answer: it dials up to `want` providers.
    Found {
        node: usize,
        key: String,
        want: usize,
    },
    Publish(usize),
    PartitionStart,
    Heal,
    ChurnStep,
    /// A churned node returns (without its store if `wiped`).
    Rejoin {
        node: usize,
        wiped: bool,
    },
    /// Cloned devices get their publisher's key and head.
    CloneKeys,
    /// Swizzle-clog: cut the next node, or restore a random cut one.
    Swizzle {
        cut: bool,
    },
    /// A node's retention pass.
    Prune(usize),
    /// Node 0 revokes the last node (see `Scenario::fleet`).
    Revoke,
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
    /// The daemon's replication machine.
    machine: Replicator<usize, MsgId>,
    /// Peers this node banned (their messages are dropped, no rounds with them).
    banned: BTreeSet<usize>,
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
    online: bool,
    side: bool,
    /// Cut off by swizzle-clog.
    cut: bool,
    /// Byzantine: publishes forged events (see `Scenario::forgers`).
    forger: bool,
    /// A cloned device: gets this publisher's key at `clone_at`.
    clone_of: Option<usize>,
    /// When its uplink is free again (bandwidth limit), µs.
    uplink_free: u64,
    /// The highest head seq seen per log, for the "heads only grow" check.
    heads: HashMap<AuthorId, u64>,
    /// Events this node held before it lost its store and has not got back.
    lost: BTreeSet<EventId>,
    interested: bool,
    /// Publisher state: key, clock, head.
    author: Option<(Keypair, Clock, Option<Event>)>,
    bytes_push: u64,
    bytes_sync: u64,
    msgs_push: u64,
    msgs_sync: u64,
    duplicates: u64,
    /// Its retention (the daemon's policy), if it prunes.
    policy: Option<murmur_core::retention::Policy>,
    /// Per log, the highest seq it cut below: nothing under it may be stored again.
    cut_below: HashMap<AuthorId, u64>,
    /// Came back without its store (a reset device).
    reset: bool,
    /// Publishes what the fleet does not allow (a revoked device, an author without
    /// the grant): not checked as an honest node, like a forger.
    hostile: bool,
    /// Its copy of the fleet's policy (a closed fleet).
    fleet: Option<Arc<std::sync::RwLock<murmur_core::fleet::Fleet>>>,
    /// When it learned of the revocation, µs.
    knew_at: Option<u64>,
}

impl Node {
    /// Not an honest node: a forger, or a node the fleet shuts out.
    fn byzantine(&self) -> bool {
        self.forger || self.hostile
    }
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
    /// The topic's gossip channel: interested nodes replicate exactly the topic, so it
    /// is that pattern's.
    channel: String,
    /// Rendezvous keys and the nodes that announced them (the DHT's provider records).
    providers: HashMap<String, Vec<usize>>,
    /// Rendezvous lookups made.
    lookups: u64,
    /// Every node's verifier of gossiped runs: one verification per distinct event.
    verifier: Arc<replicate::VerifyFn>,
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
    /// Invariant violations seen during the run (see [`Report::violations`]), and the
    /// first few described.
    violations: u64,
    violation_examples: Vec<String>,
    /// Forged events published.
    forged: usize,
    /// Cloned logs: the author and the seq where it forks.
    fork_at: Vec<(AuthorId, u64)>,
    /// Events at or past a fork, from either device: allowed, not required.
    past_fork: BTreeSet<EventId>,
    /// Fork outcomes at honest nodes' writes.
    forks_met: u64,
    /// Events lost with a store and not yet held again, over all nodes; and those got
    /// again.
    lost_total: usize,
    refetched: usize,
    /// Swizzle-clog: the nodes to cut, in order, and those cut now.
    swizzle_order: Vec<usize>,
    swizzle_cut: Vec<usize>,
    /// The fleet's wall clock (ms) for the retention hooks of every machine.
    wall: Arc<std::sync::atomic::AtomicU64>,
    /// What retention did.
    ret: RetentionReport,
    /// Each publisher's last seq, at the end.
    final_heads: Vec<(AuthorId, u64)>,
    /// A closed fleet's state and report.
    fleet: Option<fleet::FleetSim>,
}

const US: u64 = 1_000_000;

impl Sim {
    /// Builds the fleet: keys, a random connection graph, meshes, timers.
    pub fn new(sc: Scenario) -> anyhow::Result<Sim> {
        anyhow::ensure!(sc.nodes >= 2, "a fleet needs at least 2 nodes");
        anyhow::ensure!(
            sc.publishers + sc.forgers + sc.clones <= sc.nodes,
            "more publishers, forgers and clones than nodes"
        );
        anyhow::ensure!(sc.clones <= sc.publishers, "more clones than publishers");
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
        let topic = Topic::new("sim/events")?;
        let verifier = replication::shared_verifier(sc.verify_push);
        let wall = Arc::new(std::sync::atomic::AtomicU64::new(retention::wall_ms(0)));
        // A closed fleet: the last node (revoked later) and the `unprivileged` before it
        // publish too.
        let fleet_authors = sc.fleet.as_ref().map_or(0, |f| f.unprivileged + 1);
        let is_author = |i: usize| i < sc.publishers + sc.forgers || i >= n - fleet_authors;
        let keys: Vec<Option<Keypair>> = (0..n)
            .map(|i| is_author(i).then(|| author_key(i, sc.seed)))
            .collect();
        let (fleet_sim, base_policy) = match sc.fleet {
            Some(_) => {
                let (f, p) = fleet::FleetSim::new(&sc, &topic, &keys)?;
                (Some(f), Some(p))
            }
            None => (None, None),
        };
        let mut nodes = Vec::with_capacity(n);
        for (i, nb) in neighbors.into_iter().enumerate() {
            let interested = i < sc.publishers || rng.random_range(0.0..1.0) < sc.interested;
            let nb: Vec<usize> = nb.into_iter().collect();
            let forger = i >= sc.publishers && i < sc.publishers + sc.forgers;
            let clone_of = (i >= sc.publishers + sc.forgers)
                .then(|| i - sc.publishers - sc.forgers)
                .filter(|&k| k < sc.clones);
            let hostile = fleet_authors > 0 && i >= n - fleet_authors;
            let author = keys[i].clone().map(|k| (k, Clock::default(), None));
            let policy_copy = base_policy
                .as_ref()
                .map(|p| Arc::new(std::sync::RwLock::new(p.clone())));
            // Archives keep everything (drawn only with retention on, so other runs
            // stay as they were).
            let policy = match &sc.retention {
                Some(r) if interested && !forger => {
                    let archive = i >= sc.publishers
                        && r.archives > 0.0
                        && rng.random_range(0.0..1.0) < r.archives;
                    (!archive)
                        .then(|| retention::policy(r, &topic))
                        .transpose()?
                }
                _ => None,
            };
            let own = author.as_ref().map(|(k, _, _)| k.author());
            nodes.push(Node {
                store: MemoryStore::new(),
                machine: Replicator::new(
                    replication::machine_config(
                        &sc,
                        interested,
                        &topic,
                        &verifier,
                        policy.as_ref().map(|p| (p, own, &wall)),
                        policy_copy.as_ref(),
                    ),
                    None,
                ),
                banned: BTreeSet::new(),
                neighbors: nb,
                mesh: BTreeSet::new(),
                seen: BTreeSet::new(),
                mcache: VecDeque::new(),
                has: HashMap::new(),
                announce: Vec::new(),
                announced: HashMap::new(),
                online: true,
                side: i >= n - small_side,
                cut: false,
                forger,
                clone_of,
                uplink_free: 0,
                heads: HashMap::new(),
                lost: BTreeSet::new(),
                interested,
                author,
                bytes_push: 0,
                bytes_sync: 0,
                msgs_push: 0,
                msgs_sync: 0,
                duplicates: 0,
                policy,
                cut_below: HashMap::new(),
                reset: false,
                hostile,
                fleet: policy_copy,
                knew_at: None,
            });
        }
        let channel = murmur_core::channel::name(&Pattern::new(topic.as_str())?);
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            base: Instant::now(),
            queue: BinaryHeap::new(),
            topic,
            partitioned: false,
            channel,
            providers: HashMap::new(),
            lookups: 0,
            verifier,
            runs: HashMap::new(),
            published: BTreeMap::new(),
            event_bytes: 0,
            inflight: vec![0; n],
            peak_inflight: 0,
            heal_at: None,
            converged_at: None,
            steps: 0,
            violations: 0,
            violation_examples: Vec::new(),
            forged: 0,
            fork_at: Vec::new(),
            past_fork: BTreeSet::new(),
            forks_met: 0,
            lost_total: 0,
            refetched: 0,
            swizzle_order: Vec::new(),
            swizzle_cut: Vec::new(),
            wall,
            ret: RetentionReport::default(),
            final_heads: Vec::new(),
            fleet: fleet_sim,
            nodes,
            sc,
        };
        // Each machine joins the channel of its interest, as the daemon's does at start.
        // (and announces its rendezvous key).
        for i in 0..n {
            let node = &mut sim.nodes[i];
            let outs = node.machine.start(&node.store);
            sim.outputs(i, outs);
        }
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
        }
        let gap = ((US as f64 / sim.sc.rate.max(1e-6)) as u64).clamp(1, US);
        for p in 0..sim.sc.publishers + sim.sc.forgers {
            let t = sim.rng.random_range(0..gap);
            sim.at(t, Ev::Publish(p));
        }
        if let Some(f) = sim.sc.fleet.clone() {
            for p in n - f.unprivileged - 1..n {
                let t = sim.rng.random_range(0..gap);
                sim.at(t, Ev::Publish(p));
            }
            sim.at((f.revoke_at * US as f64) as u64, Ev::Revoke);
        }
        if sim.sc.clones > 0 {
            sim.at((sim.sc.clone_at * US as f64) as u64, Ev::CloneKeys);
        }
        if let Some(s) = sim.sc.swizzle.clone() {
            let first = sim.sc.publishers + sim.sc.forgers + sim.sc.clones;
            anyhow::ensure!(
                first + s.k <= n,
                "swizzle: more nodes to cut than bystanders"
            );
            let mut pool: Vec<usize> = (first..n).collect();
            for _ in 0..s.k {
                let k = sim.rng.random_range(0..pool.len());
                sim.swizzle_order.push(pool.swap_remove(k));
            }
            let step = (s.step_s * US as f64) as u64;
            let at = (s.at * US as f64) as u64;
            for c in 0..s.k as u64 {
                sim.at(at + c * step, Ev::Swizzle { cut: true });
                sim.at(at + (s.k as u64 + c) * step, Ev::Swizzle { cut: false });
            }
        }
        if let Some(p) = sim.sc.partition.clone() {
            sim.at((p.at * US as f64) as u64, Ev::PartitionStart);
            sim.at((p.heal * US as f64) as u64, Ev::Heal);
        }
        if sim.sc.churn_per_min > 0.0 {
            sim.at(US, Ev::ChurnStep);
        }
        if let Some(r) = sim.sc.retention.clone() {
            // Each node at its own phase, as daemons started at different times.
            let every = (r.every_s * US as f64) as u64;
            for i in 0..n {
                if sim.nodes[i].policy.is_some() {
                    let t = sim.rng.random_range(0..every.max(1));
                    sim.at(t, Ev::Prune(i));
                }
            }
        }
        Ok(sim)
    }

    /// Runs to the end; returns the report.
    pub fn run(mut self) -> anyhow::Result<Report> {
        let end = self.end();
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.at > end {
                break;
            }
            self.now = q.at;
            self.wall.store(
                retention::wall_ms(self.now),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.steps += 1;
            self.step(q.ev)?;
        }
        self.finish_retention();
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
            Ev::Found { node, key, want } => self.found(node, &key, want),
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
            Ev::ChurnStep => self.churn_step(),
            Ev::Rejoin { node, wiped } => self.rejoin(node, wiped),
            Ev::CloneKeys => self.clone_keys(),
            Ev::Swizzle { cut } => self.swizzle(cut),
            Ev::Revoke => self.revoke()?,
            Ev::Prune(i) => {
                if self.nodes[i].online {
                    self.retention_pass(i);
                }
                let every = self.sc.retention.as_ref().map_or(10.0, |r| r.every_s);
                self.at(self.now + (every * US as f64) as u64, Ev::Prune(i));
            }
        }
        Ok(())
    }

    fn deliver(&mut self, to: usize, from: usize, msg: Msg) -> anyhow::Result<()> {
        // A banned peer is hung up on: nothing it sends gets through.
        if self.nodes[to].banned.contains(&from) {
            return Ok(());
        }
        let size = msg.wire_bytes();
        if matches!(msg, Msg::Sync(_)) {
            self.nodes[to].msgs_sync += 1;
        } else {
            self.nodes[to].msgs_push += 1;
        }
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
                let now = self.instant();
                let node = &mut self.nodes[to];
                let outs = node.machine.sync_message(from, m, now, &node.store);
                self.outputs(to, outs);
            }
        }
        Ok(())
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
                .filter(|n| n.interested && !n.byzantine())
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
            push_msgs_per_event: per(|n| n.msgs_push),
            sync_msgs_per_event: per(|n| n.msgs_sync),
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
            forged: self.forged,
            refetched: self.refetched,
            lookups_per_node: self.lookups as f64 / self.nodes.len().max(1) as f64,
            forks_met: self.forks_met,
            fork_proven_at: (!self.fork_at.is_empty()).then(|| {
                self.nodes
                    .iter()
                    .filter(|n| n.interested && !n.byzantine())
                    .filter(|n| {
                        let Ok(proofs) = n.store.forks();
                        self.fork_at
                            .iter()
                            .all(|(a, _)| proofs.iter().any(|p| p.author() == *a))
                    })
                    .count()
            }),
            violations: self.violations,
            violation_examples: self.violation_examples.clone(),
            retention: self.sc.retention.is_some().then(|| self.ret.clone()),
            fleet: self.fleet_report(),
        }
    }
}

/// The key of publisher (or forger) `i`, from the scenario's seed.
fn author_key(i: usize, seed: u64) -> Keypair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    s[8..16].copy_from_slice(&seed.to_le_bytes());
    Keypair::from_seed(&s)
}
