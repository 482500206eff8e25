//! The sync protocol between several nodes over a seeded virtual network with latency,
//! reordering, loss, duplication and partitions. Every message crosses the real frame
//! codec. After the faults heal, every node must hold exactly the same logs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::sync::{Config, Message, Output, Sync};
use murmur_core::testing::key;
use murmur_core::{
    Clock, Draft, Durability, Event, Keypair, Payload, ReadStore, Seq, Store, Topic, VersionVector,
};
use murmur_store::MemoryStore;
use proptest::prelude::*;

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() as f64 / u64::MAX as f64) < p
    }
}

struct Node {
    store: MemoryStore,
    sync: Sync<usize>,
    key: Keypair,
    /// The node's hybrid logical clock, driven as the daemon drives it: local events
    /// tick it, stored remote events are observed.
    clock: Clock,
    /// How far this node's wall clock is ahead of true time.
    skew_ms: u64,
    /// Remote events whose time was beyond the drift limit.
    ahead: usize,
}

impl Node {
    fn new(key: Keypair, config: Config) -> Node {
        Node {
            store: MemoryStore::new(),
            sync: Sync::new(config),
            key,
            clock: Clock::new(MAX_DRIFT),
            skew_ms: 0,
            ahead: 0,
        }
    }

    /// A message from `from`, its writes carried out at once.
    fn handle(&mut self, from: usize, msg: Message, now: Instant) -> Vec<Output<usize>> {
        let outs = self.sync.handle(from, msg, now, &self.store);
        murmur_core::testing::settle_sync(&mut self.sync, outs, now, &self.store)
    }
}

/// True time at the start of a run, ms since the epoch.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// The drift limit of every simulated clock.
const MAX_DRIFT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Faults {
    loss: f64,
    dup: f64,
    /// Group of each node during the fault phase; nodes in different groups cannot talk.
    groups: Vec<u8>,
}

type Frame = Reverse<(u64, u64, usize, usize, Vec<u8>)>;

struct Sim {
    nodes: Vec<Node>,
    topics: Vec<Topic>,
    rng: Rng,
    base: Instant,
    now_ms: u64,
    queue: BinaryHeap<Frame>,
    sent: u64,
    faults: Option<Faults>,
    violations: u64,
    /// Per node and topic: the vector last seen, to check heads only grow.
    seen: BTreeMap<(usize, Topic), VersionVector>,
}

impl Sim {
    fn new(n: usize, topics: usize, seed: u64) -> Sim {
        let config = Config {
            request_timeout: Duration::from_millis(500),
            window: 16,
            ..Config::default()
        };
        Sim {
            nodes: (0..n)
                .map(|i| Node::new(key(i as u8 + 1), config.clone()))
                .collect(),
            topics: (0..topics)
                .map(|t| Topic::new(format!("sim/t{t}")).unwrap())
                .collect(),
            rng: Rng(seed),
            base: Instant::now(),
            now_ms: 0,
            queue: BinaryHeap::new(),
            sent: 0,
            faults: None,
            violations: 0,
            seen: BTreeMap::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    /// `node`'s wall clock.
    fn wall(&self, node: usize) -> u64 {
        EPOCH_MS + self.now_ms + self.nodes[node].skew_ms
    }

    fn publish(&mut self, node: usize, topic: usize) {
        let wall = self.wall(node);
        let time = self.nodes[node].clock.tick(wall);
        let n = &self.nodes[node];
        let topic = self.topics[topic].clone();
        let head = n.store.log_state(&n.key.author(), &topic).unwrap().head;
        let d = Draft {
            topic,
            seq: head.map_or(Seq(0), |h| Seq(h.seq.0 + 1)),
            prev: head.map(|h| h.id),
            time,
            body: Payload::data(Bytes::from(format!("n{node}@{}", self.now_ms))),
        };
        let ev = Event::sign(&d, &n.key).unwrap();
        n.store.insert(&[ev], Durability::Sync).unwrap();
    }

    fn run_outputs(&mut self, from: usize, outs: Vec<Output<usize>>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => self.send(from, to, &msg),
                Output::Misbehaved { .. } => self.violations += 1,
                Output::Stored { events, .. } => {
                    let wall = self.wall(from);
                    let node = &mut self.nodes[from];
                    let times = events.iter().map(|(_, e)| (e.author(), e.time()));
                    node.ahead += node.clock.observe_events(times, wall).len();
                    let limit = wall + MAX_DRIFT.as_millis() as u64;
                    assert!(
                        node.clock.last().ms <= limit,
                        "node {from}: a remote clock dragged ours to {} (wall {wall})",
                        node.clock.last()
                    );
                }
                _ => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: &Message) {
        let frame = msg.to_frame().expect("encodable");
        let mut copies = 1;
        if let Some(f) = &self.faults {
            if f.groups[from] != f.groups[to] || self.rng.chance(f.loss) {
                return;
            }
            if self.rng.chance(f.dup) {
                copies = 2;
            }
        }
        for _ in 0..copies {
            // 1–40 ms: messages overtake each other.
            let at = self.now_ms + 1 + self.rng.below(40);
            self.sent += 1;
            self.queue
                .push(Reverse((at, self.sent, from, to, frame.clone())));
        }
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse((at, _, _, _, _))) = self.queue.peek() {
            if *at > self.now_ms {
                break;
            }
            let Reverse((_, _, from, to, frame)) = self.queue.pop().unwrap();
            let len = Message::frame_len(frame[..4].try_into().unwrap()).unwrap();
            let msg = Message::from_body(&frame[4..4 + len]).expect("decodable");
            let now = self.now();
            let node = &mut self.nodes[to];
            let outs = node.handle(from, msg, now);
            self.run_outputs(to, outs);
        }
    }

    /// One anti-entropy round per node, with a random peer, for every topic.
    fn rounds(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            let peer = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            for t in 0..self.topics.len() {
                let topic = self.topics[t].clone();
                let now = self.now();
                let node = &mut self.nodes[i];
                let outs = node.sync.start(peer, topic, now, &node.store);
                self.run_outputs(i, outs);
            }
        }
    }

    fn step(&mut self, publish_p: f64) {
        self.now_ms += 5;
        self.deliver_due();
        if self.now_ms.is_multiple_of(100) {
            self.rounds();
        }
        if self.now_ms.is_multiple_of(50) {
            let now = self.now();
            for i in 0..self.nodes.len() {
                let outs = self.nodes[i].sync.tick(now);
                self.run_outputs(i, outs);
            }
            self.check_heads_only_grow();
        }
        if self.rng.chance(publish_p) {
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let topic = self.rng.below(self.topics.len() as u64) as usize;
            self.publish(node, topic);
        }
    }

    fn check_heads_only_grow(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            for t in &self.topics {
                let vv = node.store.version_vector(t).unwrap();
                if let Some(old) = self.seen.get(&(i, t.clone())) {
                    for (a, e) in old.iter() {
                        let now = vv.get(a).expect("a log disappeared");
                        assert!(now.seq >= e.seq, "node {i}: head of {a:?} went back");
                    }
                }
                self.seen.insert((i, t.clone()), vv);
            }
        }
    }

    fn converged(&self) -> bool {
        self.topics.iter().all(|t| {
            let first = self.nodes[0].store.version_vector(t).unwrap();
            self.nodes
                .iter()
                .all(|n| n.store.version_vector(t).unwrap() == first)
        })
    }

    /// Every author's own head is what every node holds.
    fn complete(&self) -> bool {
        self.topics.iter().all(|t| {
            let mut union = VersionVector::new();
            for n in &self.nodes {
                if let Some(h) = n.store.log_state(&n.key.author(), t).unwrap().head {
                    union.insert(
                        n.key.author(),
                        murmur_core::vv::Entry {
                            seq: h.seq,
                            id: h.id,
                        },
                    );
                }
            }
            self.nodes
                .iter()
                .all(|n| n.store.version_vector(t).unwrap() == union)
        })
    }

    fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for t in &self.topics {
                out.extend_from_slice(&n.store.version_vector(t).unwrap().digest().0);
            }
            out.extend_from_slice(&n.store.next_offset().0.to_be_bytes());
        }
        out.extend_from_slice(&self.sent.to_be_bytes());
        out
    }
}

/// Faults and publishing until `fault_ms`, then a healed network until convergence.
/// Returns the virtual ms the healed phase needed.
fn run(sim: &mut Sim, faults: Faults, fault_ms: u64, publish_p: f64) -> u64 {
    sim.faults = Some(faults);
    while sim.now_ms < fault_ms {
        sim.step(publish_p);
    }
    sim.faults = None;
    let healed_at = sim.now_ms;
    while !(sim.converged() && sim.complete() && sim.queue.is_empty()) {
        if sim.now_ms >= healed_at + 60_000 {
            for (i, n) in sim.nodes.iter().enumerate() {
                let vvs: Vec<String> = sim
                    .topics
                    .iter()
                    .map(|t| {
                        format!(
                            "{:?}",
                            n.store
                                .version_vector(t)
                                .unwrap()
                                .iter()
                                .map(|(a, e)| (a.short(), e.seq.0))
                                .collect::<Vec<_>>()
                        )
                    })
                    .collect();
                eprintln!(
                    "node {i}: offset {} sessions {} vv {vvs:?}",
                    n.store.next_offset().0,
                    n.sync.sessions()
                );
            }
            for Reverse((at, _, from, to, frame)) in sim.queue.iter().take(12) {
                let msg = Message::from_body(&frame[4..]).unwrap();
                eprintln!("  at {at} {from}->{to}: {:.150}", format!("{msg:?}"));
            }
            panic!(
                "no convergence 60 s after healing; queue {} now {}",
                sim.queue.len(),
                sim.now_ms
            );
        }
        sim.step(0.0);
    }
    sim.now_ms - healed_at
}

#[test]
fn three_nodes_converge_after_a_partition() {
    let mut sim = Sim::new(3, 2, 7);
    let heal = run(
        &mut sim,
        Faults {
            loss: 0.0,
            dup: 0.0,
            groups: vec![0, 0, 1],
        },
        3_000,
        0.5,
    );
    let total: u64 = sim
        .topics
        .iter()
        .map(|t| sim.nodes[0].store.version_vector(t).unwrap().total_events())
        .sum();
    assert!(total > 200, "{total} events");
    assert_eq!(sim.violations, 0);
    assert!(heal < 5_000, "healed in {heal} ms");
}

#[test]
fn a_clock_a_day_ahead_neither_stops_replication_nor_drags_the_others() {
    let mut sim = Sim::new(4, 2, 11);
    sim.nodes[0].skew_ms = 86_400_000;
    let all = Faults {
        loss: 0.0,
        dup: 0.0,
        groups: vec![0; 4],
    };
    run(&mut sim, all, 3_000, 0.5);
    // Its events reached everyone (complete() held), and each honest node saw them
    // beyond the drift limit without following them.
    let skewed = sim.nodes[0].key.author();
    let from_skewed: u64 = sim
        .topics
        .iter()
        .map(|t| {
            let vv = sim.nodes[1].store.version_vector(t).unwrap();
            vv.get(&skewed).map_or(0, |e| e.seq.0 + 1)
        })
        .sum();
    assert!(from_skewed > 10, "{from_skewed} events of the skewed node");
    for i in 1..4 {
        let wall = sim.wall(i);
        let n = &sim.nodes[i];
        assert!(n.ahead > 0, "node {i} never saw a time beyond the limit");
        assert!(
            n.clock.last().ms <= wall + MAX_DRIFT.as_millis() as u64,
            "node {i}: clock {} vs wall {wall}",
            n.clock.last()
        );
    }
    assert_eq!(sim.violations, 0);
}

#[test]
fn same_seed_same_run() {
    let go = || {
        let mut sim = Sim::new(5, 2, 42);
        run(
            &mut sim,
            Faults {
                loss: 0.2,
                dup: 0.1,
                groups: vec![0, 0, 1, 1, 2],
            },
            2_000,
            0.4,
        );
        sim.fingerprint()
    };
    assert_eq!(go(), go());
}

#[test]
fn a_node_that_was_away_catches_up_a_large_backlog() {
    let mut sim = Sim::new(3, 1, 3);
    for _ in 0..1500 {
        sim.publish(0, 0);
        sim.publish(1, 0);
    }
    // Node 2 was cut off while the others published 3,000 events.
    let heal = run(
        &mut sim,
        Faults {
            loss: 0.0,
            dup: 0.0,
            groups: vec![0, 0, 1],
        },
        200,
        0.0,
    );
    assert_eq!(sim.nodes[2].store.next_offset().0, 3000);
    assert!(heal < 10_000, "caught up in {heal} ms of virtual time");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any loss, duplication and reordering pattern, and any partition, that heals ends
    /// with identical logs everywhere.
    #[test]
    fn any_faults_that_heal_converge(
        seed in any::<u64>(),
        n in 2usize..8,
        loss in 0.0f64..0.4,
        dup in 0.0f64..0.3,
        groups in proptest::collection::vec(0u8..3, 8),
    ) {
        let mut sim = Sim::new(n, 2, seed);
        run(&mut sim, Faults { loss, dup, groups: groups[..n].to_vec() }, 2_000, 0.3);
        prop_assert!(sim.converged() && sim.complete());
        prop_assert_eq!(sim.violations, 0);
    }
}

// --- adversarial peers -----------------------------------------------------------------

fn pump(nodes: &mut [Node], first: Vec<(usize, usize, Message)>) -> Vec<(usize, Output<usize>)> {
    let now = Instant::now();
    let mut queue: std::collections::VecDeque<(usize, usize, Message)> = first.into();
    let mut seen = Vec::new();
    let mut budget = 10_000;
    while let Some((from, to, msg)) = queue.pop_front() {
        budget -= 1;
        assert!(budget > 0, "message storm");
        let node = &mut nodes[to];
        for o in node.handle(from, msg, now) {
            if let Output::Send { to: dest, msg } = &o {
                queue.push_back((to, *dest, msg.clone()));
            }
            seen.push((to, o));
        }
    }
    seen
}

/// Node `from` starts a round of `topic` with node `to`; runs it to the end.
fn round(nodes: &mut [Node], from: usize, to: usize, topic: &Topic) -> Vec<(usize, Output<usize>)> {
    let n = &mut nodes[from];
    let outs = n.sync.start(to, topic.clone(), Instant::now(), &n.store);
    let Some(Output::Send { msg, .. }) = outs.into_iter().next() else {
        panic!("a round starts with a message")
    };
    pump(nodes, vec![(from, to, msg)])
}

fn node(n: u8) -> Node {
    Node::new(key(n), Config::default())
}

#[test]
fn a_peer_sending_a_forged_range_is_flagged_and_nothing_is_stored() {
    let honest = node(2);
    let evs = murmur_core::testing::chain(&honest.key, "adv", 10, "x");
    let topic = evs[0].topic().clone();
    honest.store.insert(&evs, Durability::Sync).unwrap();
    let now = Instant::now();
    let mut victim = node(9);
    victim.sync.start(1, topic.clone(), now, &victim.store);
    let vv = honest.store.version_vector(&topic).unwrap();
    let outs = victim.handle(
        1,
        Message::Vector {
            topic: topic.clone(),
            vv,
        },
        now,
    );
    let want = outs
        .iter()
        .find_map(|o| match o {
            Output::Send {
                msg: m @ Message::Want { .. },
                ..
            } => Some(m.clone()),
            _ => None,
        })
        .expect("a want");
    let mut server = honest;
    let answer = server.handle(0, want, now);
    let Output::Send {
        msg:
            Message::Events {
                req,
                topic: t,
                author,
                run,
            },
        ..
    } = answer[0].clone()
    else {
        panic!("{answer:?}")
    };
    assert_eq!(murmur_core::run::header(&run).unwrap().count, 10);
    let mut forged = run.to_vec();
    let n = forged.len();
    forged[n - 5] ^= 1; // break the newest event's signature: it vouches for the range
    let outs = victim.handle(
        1,
        Message::Events {
            req,
            topic: t,
            author,
            run: Bytes::from(forged),
        },
        now,
    );
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Misbehaved { peer: 1, .. })),
        "{outs:?}"
    );
    assert_eq!(
        victim.store.next_offset().0,
        0,
        "nothing of a forged range is stored"
    );
}

/// Outputs sorted: messages sent, writes asked for (ticket, events), the rest.
type Split = (Vec<Message>, Vec<(u64, Vec<Event>)>, Vec<Output<usize>>);

/// The sends and the writes among `outs`.
fn split(outs: Vec<Output<usize>>) -> Split {
    let (mut sends, mut writes, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for o in outs {
        match o {
            Output::Send { msg, .. } => sends.push(msg),
            Output::Persist { ticket, events, .. } => writes.push((ticket, events)),
            other => rest.push(other),
        }
    }
    (sends, writes, rest)
}

/// `me` (node 0) starts a round with `server` (node 1): Hello, the vectors, and what
/// `me` then sends (its vector and its first Wants).
fn open_round(me: &mut Node, server: &mut Node, topic: &Topic, now: Instant) -> Vec<Message> {
    let (hello, ..) = split(me.sync.start(1, topic.clone(), now, &me.store));
    let (vector, ..) = split(server.sync.handle(0, hello[0].clone(), now, &server.store));
    let (to_server, ..) = split(me.sync.handle(1, vector[0].clone(), now, &me.store));
    to_server
}

#[test]
fn windows_are_written_by_the_driver_while_the_next_is_fetched_and_verified() {
    let mut server = node(2);
    let evs = murmur_core::testing::chain(&server.key, "pipe", 2500, "x");
    let topic = evs[0].topic().clone();
    server.store.insert(&evs, Durability::Sync).unwrap();
    let mut me = node(1);
    let now = Instant::now();
    let mut to_server = open_round(&mut me, &mut server, &topic, now);
    let mut writes = Vec::new();
    // Three windows (1,024 + 1,024 + 452) arrive before anything is written.
    for _ in 0..3 {
        let want = to_server
            .iter()
            .find(|m| matches!(m, Message::Want { .. }))
            .cloned()
            .expect("a want");
        to_server.clear();
        let (events, ..) = split(server.sync.handle(0, want, now, &server.store));
        let (sends, w, rest) = split(me.sync.handle(1, events[0].clone(), now, &me.store));
        assert!(
            rest.is_empty(),
            "nothing is stored or done before a write: {rest:?}"
        );
        to_server = sends;
        writes.extend(w);
    }
    assert!(to_server.is_empty(), "all 2,500 were asked for");
    assert_eq!(writes.len(), 3);
    assert_eq!(me.store.next_offset().0, 0, "the machine never writes");
    // The next window was asked for from the end of the one being written and
    // verified against its last event, not against the (empty) store.
    let firsts: Vec<u64> = writes.iter().map(|(_, e)| e[0].seq().0).collect();
    assert_eq!(firsts, vec![0, 1024, 2048]);
    // Writes done in order: each reports what it stored; the round ends with the last.
    let mut done = None;
    for (ticket, events) in writes {
        let written = me.store.insert(&events, Durability::Buffered).unwrap();
        for o in me.sync.persisted(ticket, Ok(written), now, &me.store) {
            match o {
                Output::Done { pulled, .. } => done = Some(pulled),
                Output::Stored { events: s, .. } => assert_eq!(s.len(), events.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(done, Some(2500));
    assert_eq!(me.store.next_offset().0, 2500);
}

#[test]
fn a_window_that_cannot_be_written_ends_the_round() {
    let mut server = node(2);
    let evs = murmur_core::testing::chain(&server.key, "pipe", 1500, "x");
    let topic = evs[0].topic().clone();
    server.store.insert(&evs, Durability::Sync).unwrap();
    let mut me = node(1);
    let now = Instant::now();
    let to_server = open_round(&mut me, &mut server, &topic, now);
    let (events, ..) = split(
        server
            .sync
            .handle(0, to_server[1].clone(), now, &server.store),
    );
    let (_, writes, _) = split(me.sync.handle(1, events[0].clone(), now, &me.store));
    let outs = me.sync.persisted(
        writes[0].0,
        Err("no space left on device".into()),
        now,
        &me.store,
    );
    assert!(
        outs.iter().any(|o| matches!(o, Output::Failed { reason: murmur_core::sync::Failure::Store(e), .. } if e.contains("no space"))),
        "{outs:?}"
    );
    assert_eq!(me.sync.sessions(), 0);
}

#[test]
fn stray_events_are_never_stored() {
    let n = node(1);
    let evs = murmur_core::testing::chain(&key(2), "adv", 3, "x");
    let msg = Message::Events {
        req: 1,
        topic: evs[0].topic().clone(),
        author: evs[0].author(),
        run: Bytes::from(murmur_core::run::encode(&evs).unwrap()),
    };
    let mut n = n;
    let outs = n.handle(1, msg, Instant::now());
    // No session asked for them: ignored (a late answer to an abandoned round).
    assert!(outs.is_empty());
    assert_eq!(n.store.next_offset().0, 0);
}

#[test]
fn a_fork_is_proven_frozen_and_passed_on() {
    // One device key cloned onto two devices: both publish with different content.
    let mut nodes: Vec<Node> = (1..=3).map(node).collect();
    let cloned = key(77);
    let a = murmur_core::testing::chain(&cloned, "fork", 5, "a");
    let b = murmur_core::testing::chain(&cloned, "fork", 5, "b");
    nodes[0].store.insert(&a, Durability::Sync).unwrap();
    nodes[1].store.insert(&b[..3], Durability::Sync).unwrap();
    let topic = a[0].topic().clone();
    let now = Instant::now();
    let trace = round(&mut nodes, 0, 1, &topic);
    assert!(
        trace.iter().any(|(_, o)| matches!(o, Output::Fork(_))),
        "{trace:?}"
    );
    for n in &nodes[..2] {
        let st = n.store.log_state(&cloned.author(), &topic).unwrap();
        assert!(st.frozen_at.is_some(), "frozen on both nodes");
        let forks = n.store.forks().unwrap();
        assert_eq!(forks.len(), 1);
        forks[0].check().unwrap();
    }
    // Node 2 holds the start of one chain; the proof reaches it and freezes it too.
    nodes[2].store.insert(&a[..2], Durability::Sync).unwrap();
    let proof = nodes[0].store.forks().unwrap().remove(0);
    let msg = Message::Fork {
        a: proof.ours.bytes().clone(),
        b: proof.theirs.bytes().clone(),
    };
    let n2 = &mut nodes[2];
    n2.handle(0, msg, now);
    assert_eq!(n2.store.forks().unwrap().len(), 1);
    // A fake proof (two events of one valid chain) is a violation.
    let fake = Message::Fork {
        a: a[0].bytes().clone(),
        b: a[1].bytes().clone(),
    };
    let outs = n2.handle(0, fake, now);
    assert!(outs.iter().any(|o| matches!(o, Output::Misbehaved { .. })));
    // A real proof about a log node 2 does not hold stores nothing: it would be a way
    // to store events of any topic past every check (interest, a fleet's permissions).
    let other = key(78);
    let x = murmur_core::testing::chain(&other, "elsewhere", 1, "x");
    let y = murmur_core::testing::chain(&other, "elsewhere", 1, "y");
    let before = n2.store.next_offset();
    let outs = n2.handle(
        0,
        Message::Fork {
            a: x[0].bytes().clone(),
            b: y[0].bytes().clone(),
        },
        now,
    );
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(n2.store.next_offset(), before);
}

#[test]
fn a_round_passes_a_known_fork_on_to_a_node_that_saw_one_side() {
    // Nodes 0 and 1 proved a fork between them; node 2 only ever saw one side (and more
    // of it past the fork). An ordinary round between 2 and 0 must freeze 2's log too.
    let mut nodes: Vec<Node> = (1..=3).map(node).collect();
    let cloned = key(78);
    let a = murmur_core::testing::chain(&cloned, "fork", 6, "a");
    let b = murmur_core::testing::chain(&cloned, "fork", 6, "b");
    nodes[0].store.insert(&a[..4], Durability::Sync).unwrap();
    nodes[1].store.insert(&b[..4], Durability::Sync).unwrap();
    nodes[2].store.insert(&a, Durability::Sync).unwrap();
    let topic = a[0].topic().clone();
    round(&mut nodes, 0, 1, &topic);
    assert_eq!(
        nodes[0].store.forks().unwrap().len(),
        1,
        "0 and 1 proved it"
    );
    assert!(nodes[2].store.forks().unwrap().is_empty());
    // The round: node 2 starts it with node 0.
    let trace = round(&mut nodes, 2, 0, &topic);
    assert!(
        trace
            .iter()
            .any(|(n, o)| *n == 2 && matches!(o, Output::Fork(_))),
        "{trace:?}"
    );
    let st = nodes[2].store.log_state(&cloned.author(), &topic).unwrap();
    assert!(st.frozen_at.is_some(), "frozen on node 2 too");
    nodes[2].store.forks().unwrap()[0].check().unwrap();
}

/// Retention: a peer that pruned the range a node asks for answers from its base. That
/// is not a violation (no ban), and it cannot continue the node's log, so the node's
/// log stays as it was. A node that pruned never pulls the pruned range back from a
/// peer that still holds it: its head stays, so its vector asks for nothing below it.
#[test]
fn a_peer_that_pruned_is_no_violator_and_nothing_pruned_comes_back() {
    use murmur_core::storage::Cut;
    let mut nodes = vec![node(1), node(2), node(3)];
    let author = key(7);
    let evs = murmur_core::testing::chain(&author, "ret", 10, "r");
    let topic = evs[0].topic().clone();
    nodes[0].store.insert(&evs[..3], Durability::Sync).unwrap();
    nodes[1].store.insert(&evs, Durability::Sync).unwrap();
    nodes[2].store.insert(&evs, Durability::Sync).unwrap();
    let cut = Cut {
        topic: topic.clone(),
        author: author.author(),
        below: Seq(7),
    };
    assert_eq!(nodes[1].store.prune(&[cut]).unwrap().events, 7);

    // Node 0 (seq 0..=2) asks node 1 (7..=9) for 3..: the answer starts at 7.
    let outs = round(&mut nodes, 0, 1, &topic);
    assert!(
        !outs
            .iter()
            .any(|(_, o)| matches!(o, Output::Misbehaved { .. })),
        "{outs:?}"
    );
    let st = nodes[0].store.log_state(&author.author(), &topic).unwrap();
    assert_eq!(st.head.unwrap().seq, Seq(2), "no jump over the gap");
    // Node 0 still completes from node 2, which holds everything.
    round(&mut nodes, 0, 2, &topic);
    let st = nodes[0].store.log_state(&author.author(), &topic).unwrap();
    assert_eq!(st.head.unwrap().seq, Seq(9));

    // A node whose rule keeps the newest 3 of a log lets what lies below the peer's
    // base go: its log starts over there (it returns after the fleet's window and gets
    // the window). One whose rule keeps 5 would lose events it keeps (the peer holds
    // only 3): it stays as it is. So does one with no rule, even with an empty log.
    let policy = |n: u64| {
        let p = murmur_core::retention::Policy::new(vec![murmur_core::retention::Rule {
            pattern: murmur_core::Pattern::new("#").unwrap(),
            max_age: None,
            max_events_per_log: Some(n),
            max_bytes: None,
            keep: false,
        }])
        .unwrap();
        murmur_core::sync::RestartCheck(std::sync::Arc::new(move |range: &[Event], head: Seq| {
            p.may_restart(&range[0], head, 0, None)
        }))
    };
    for (n, restarts) in [(3, true), (5, false)] {
        let late = Node::new(
            key(4),
            Config {
                may_restart: Some(policy(n)),
                ..Config::default()
            },
        );
        late.store.insert(&evs[..3], Durability::Sync).unwrap();
        nodes.push(late);
        let at = nodes.len() - 1;
        let outs = round(&mut nodes, at, 1, &topic);
        assert!(
            !outs
                .iter()
                .any(|(_, o)| matches!(o, Output::Misbehaved { .. })),
            "{outs:?}"
        );
        let st = nodes[at].store.log_state(&author.author(), &topic).unwrap();
        let expect = if restarts {
            (Seq(7), Seq(9))
        } else {
            (Seq(0), Seq(2))
        };
        assert_eq!((st.base, st.head.unwrap().seq), expect, "keep {n}");
    }
    nodes.push(node(5));
    let fresh = nodes.len() - 1;
    round(&mut nodes, fresh, 1, &topic);
    let st = nodes[fresh]
        .store
        .log_state(&author.author(), &topic)
        .unwrap();
    assert!(
        st.head.is_none(),
        "no rule: an empty log takes no peer's base"
    );

    // Node 1 rounds with node 2 both ways: its base and head stay (both heads are
    // equal, so neither asks for anything; gossip of old events is refused as pruned,
    // see the store's conformance suite).
    round(&mut nodes, 1, 2, &topic);
    round(&mut nodes, 2, 1, &topic);
    let held = nodes[1]
        .store
        .log_range(&author.author(), &topic, Seq(0), 100)
        .unwrap();
    assert_eq!(
        held.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
}

/// Retention: a node far behind (new, reset, back after the window) asks only for the
/// window its own rule keeps, even from a peer that holds the whole log: it never pulls
/// what it would prune at once. Its log starts at the window. A peer whose log is
/// shorter than the window is pulled whole, and a node with no rule pulls everything.
#[test]
fn a_node_far_behind_pulls_only_its_window() {
    let author = key(7);
    let evs = murmur_core::testing::chain(&author, "win", 10, "w");
    let topic = evs[0].topic().clone();
    let policy = murmur_core::retention::Policy::new(vec![murmur_core::retention::Rule {
        pattern: murmur_core::Pattern::new("#").unwrap(),
        max_age: None,
        max_events_per_log: Some(3),
        max_bytes: None,
        keep: false,
    }])
    .unwrap();
    let windowed = || {
        let (p1, p2) = (policy.clone(), policy.clone());
        Config {
            may_restart: Some(murmur_core::sync::RestartCheck(std::sync::Arc::new(
                move |range: &[Event], head: Seq| p1.may_restart(&range[0], head, 0, None),
            ))),
            keeps_from: Some(murmur_core::sync::KeepsFrom(std::sync::Arc::new(
                move |t: &murmur_core::Topic, _: &murmur_core::AuthorId, head: Seq| {
                    p2.keeps_from(t, head)
                },
            ))),
            // Windows smaller than the rule's window: the skip's answer must not
            // prefetch before the restart is allowed (a document's would stall).
            window: 2,
            ..Config::default()
        }
    };
    let mut nodes = vec![node(1), Node::new(key(2), windowed()), node(3)];
    nodes[0].store.insert(&evs, Durability::Sync).unwrap();
    let outs = round(&mut nodes, 1, 0, &topic);
    let pulled = outs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Send {
                msg: Message::Want { from, limit, .. },
                ..
            } => Some((*from, *limit)),
            _ => None,
        })
        .collect::<Vec<_>>();
    let st = nodes[1].store.log_state(&author.author(), &topic).unwrap();
    assert_eq!((st.base, st.head.unwrap().seq), (Seq(7), Seq(9)));
    assert_eq!(
        pulled,
        vec![(Seq(7), 2), (Seq(9), 1)],
        "only the window was asked for"
    );

    // A node holding 0..=1 also skips to the window (what lies between is pruned at
    // its next pass anyway).
    nodes.push(Node::new(key(4), windowed()));
    nodes[3].store.insert(&evs[..2], Durability::Sync).unwrap();
    round(&mut nodes, 3, 0, &topic);
    let st = nodes[3].store.log_state(&author.author(), &topic).unwrap();
    assert_eq!((st.base, st.head.unwrap().seq), (Seq(7), Seq(9)));

    // No rule: the whole log.
    round(&mut nodes, 2, 0, &topic);
    let st = nodes[2].store.log_state(&author.author(), &topic).unwrap();
    assert_eq!((st.base, st.head.unwrap().seq), (Seq(0), Seq(9)));

    // A document's log never starts over (its changes build on each other): the skip
    // is refused, and the pull asks again from the start.
    let doc_topic = murmur_core::Topic::new("doc").unwrap();
    let mut docs: Vec<Event> = Vec::new();
    for i in 0..10u64 {
        let draft = murmur_core::Draft {
            topic: doc_topic.clone(),
            seq: Seq(i),
            prev: docs.last().map(Event::id),
            time: murmur_core::Timestamp::from_ms(1_700_000_000_000 + i),
            body: murmur_core::Payload::Doc {
                doc: murmur_core::DocId::new("d").unwrap(),
                change: bytes::Bytes::from(vec![i as u8]),
            },
        };
        docs.push(Event::sign(&draft, &author).unwrap());
    }
    nodes[0].store.insert(&docs, Durability::Sync).unwrap();
    round(&mut nodes, 1, 0, &doc_topic);
    let st = nodes[1]
        .store
        .log_state(&author.author(), &doc_topic)
        .unwrap();
    assert_eq!((st.base, st.head.unwrap().seq), (Seq(0), Seq(9)));
}
