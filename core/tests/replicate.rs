//! The replication machine (`core::replicate`): its policy case by case, and several
//! machines driven together through live push with loss and reordering, gaps,
//! partitions, a cloned key (fork) and a forger. After healing every node holds the
//! same logs, no head ever goes back, and nothing forged is ever stored.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::replicate::{Config, Gossip, Output, Replicator, Verdict};
use murmur_core::sync::{self, Message};
use murmur_core::testing::{chain, key};
use murmur_core::{Durability, Event, EventId, Pattern, ReadStore, Seq, Store, Topic, run};
use murmur_store::MemoryStore;
use proptest::prelude::*;

type M = u64;

/// Calls the machine with `call` and carries out its writes at once.
fn go<S: murmur_core::Store>(
    m: &mut Replicator<usize, M>,
    now: Instant,
    store: &S,
    call: impl FnOnce(&mut Replicator<usize, M>) -> Vec<Output<usize, M>>,
) -> Vec<Output<usize, M>> {
    let outs = call(m);
    murmur_core::testing::settle(m, outs, now, store)
}

fn config(interest: &str) -> Config {
    Config {
        interest: vec![Pattern::new(interest).unwrap()],
        round_every: Duration::from_secs(2),
        gap_wait: Duration::from_millis(300),
        sync: sync::Config {
            durability: Durability::Buffered,
            request_timeout: Duration::from_secs(2),
            ..sync::Config::default()
        },
        ..Config::default()
    }
}

fn gossip(from: usize, id: M, events: &[Event]) -> Gossip<usize, M> {
    Gossip {
        from,
        id,
        channel: "murmur:#".into(),
        data: run::encode(events).unwrap(),
    }
}

fn verdicts(outs: &[Output<usize, M>]) -> Vec<(M, Verdict)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Verdict { id, verdict, .. } => Some((*id, *verdict)),
            _ => None,
        })
        .collect()
}

fn sends_to(outs: &[Output<usize, M>], peer: usize) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Sync(sync::Output::Send { to, msg }) if *to == peer => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn head(store: &MemoryStore, ev: &Event) -> Option<Seq> {
    store
        .log_state(&ev.author(), ev.topic())
        .unwrap()
        .head
        .map(|h| h.seq)
}

/// The events of one run broken: the last byte of the newest signature flipped.
fn forged(events: &[Event]) -> Vec<u8> {
    let mut b = run::encode(events).unwrap();
    let n = b.len();
    b[n - 7] ^= 0x20;
    b
}

/// The machine's one write of an output list, taken out of it.
fn take_persist(outs: &mut Vec<Output<usize, M>>) -> (murmur_core::replicate::Ticket, Vec<Event>) {
    let i = outs
        .iter()
        .position(|o| matches!(o, Output::Persist { .. }))
        .expect("a write");
    match outs.remove(i) {
        Output::Persist { ticket, events, .. } => (ticket, events),
        _ => unreachable!(),
    }
}

#[test]
fn a_failed_round_is_retried_with_back_off_reported_when_stuck_and_reset_when_done() {
    let store = MemoryStore::new();
    let evs = chain(&key(3), "a/t", 3, "x");
    store.insert(&evs, Durability::Buffered).unwrap();
    let topic = evs[0].topic().clone();
    let mut cfg = config("#");
    cfg.round_every = Duration::from_secs(60);
    cfg.retry_first = Duration::from_secs(1);
    let mut m: Replicator<usize, M> = Replicator::new(cfg, None);
    let t0 = Instant::now();
    m.tick(t0, &store);
    let hellos = |outs: &[Output<usize, M>]| {
        sends_to(outs, 1)
            .iter()
            .filter(|msg| matches!(msg, Message::Hello { .. }))
            .count()
    };
    assert_eq!(hellos(&m.connected(1, t0, &store)), 1);
    // The peer never answers: each round fails at its deadline (2 s) and runs again
    // 1, 2, 4, 8 s later; the third failure in a row is reported.
    let run = |m: &mut Replicator<usize, M>, from: u64, to: u64| {
        let (mut at, mut stuck) = (Vec::new(), Vec::new());
        for ms in (from..to).step_by(250) {
            let outs = m.tick(t0 + Duration::from_millis(ms), &store);
            if hellos(&outs) > 0 {
                at.push(ms);
            }
            for o in &outs {
                if let Output::Stuck { failures, .. } = o {
                    stuck.push((ms, *failures));
                }
            }
        }
        (at, stuck)
    };
    let (at, stuck) = run(&mut m, 250, 23_250);
    assert_eq!(at, vec![3_000, 7_000, 13_000, 23_000]);
    assert_eq!(stuck, vec![(9_000, 3)]);
    // This time the peer answers: the round is done, and the back-off forgotten.
    let outs = m.sync_message(
        1,
        Message::InSync {
            topic: topic.clone(),
        },
        t0 + Duration::from_millis(23_100),
        &store,
    );
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Sync(sync::Output::Done { .. })))
    );
    let (at, _) = run(&mut m, 23_250, 59_750);
    assert!(
        at.is_empty(),
        "no retry after a round that finished: {at:?}"
    );
    // A peer that disconnects is not retried.
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    m.tick(t0, &store);
    m.connected(1, t0, &store);
    m.tick(t0 + Duration::from_millis(2_000), &store);
    m.disconnected(&1, &store);
    let outs = m.tick(t0 + Duration::from_millis(3_500), &store);
    assert_eq!(hellos(&outs), 0);
}

/// A machine with peers 1 and 2 connected whose peer 1 showed a vector with 10 events
/// of a log this node lacks; retries and periodic rounds out of the way.
fn lagging_setup(store: &MemoryStore, t0: Instant) -> (Replicator<usize, M>, Vec<Event>) {
    let theirs = chain(&key(5), "a/t", 10, "x");
    let peer = MemoryStore::new();
    peer.insert(&theirs, Durability::Buffered).unwrap();
    let topic = theirs[0].topic().clone();
    let mut cfg = config("#");
    cfg.round_every = Duration::from_secs(1000);
    cfg.retry_first = Duration::from_secs(500);
    cfg.lag_watch = Duration::from_secs(10);
    let mut m: Replicator<usize, M> = Replicator::new(cfg, None);
    m.tick(t0, store);
    m.connected(1, t0, store);
    m.connected(2, t0, store);
    let vv = peer.version_vector(&topic).unwrap();
    m.sync_message(1, Message::Vector { topic, vv }, t0, store);
    (m, theirs)
}

#[test]
fn a_lag_that_does_not_shrink_is_reported_and_another_peer_is_tried() {
    let store = MemoryStore::new();
    let t0 = Instant::now();
    let (mut m, theirs) = lagging_setup(&store, t0);
    let topic = theirs[0].topic().clone();
    let mut reports = Vec::new();
    for ms in (250..=25_000u64).step_by(250) {
        let now = t0 + Duration::from_millis(ms);
        let outs = m.tick(now, &store);
        for o in &outs {
            if let Output::Lagging { peer, behind, .. } = o {
                let hello_2 = sends_to(&outs, 2)
                    .iter()
                    .any(|msg| matches!(msg, Message::Hello { .. }));
                reports.push((ms, *peer, *behind, hello_2));
            }
        }
        if ms == 9_750 {
            assert_eq!(m.stalled(&1, &topic, now), None, "not yet");
        }
        if ms == 12_000 {
            let s = m.stalled(&1, &topic, now).expect("stalled, for status");
            assert!(s >= Duration::from_secs(10), "{s:?}");
        }
    }
    // Reported after 10 s without progress, with a round on the topic with peer 2, and
    // again 10 s later while still stuck.
    assert_eq!(reports, vec![(10_000, 1, 10, true), (20_000, 1, 10, true)]);
    // Once what it lacked has arrived, the watch ends.
    store.insert(&theirs, Durability::Buffered).unwrap();
    let now = t0 + Duration::from_secs(40);
    m.tick(now, &store);
    assert_eq!(m.stalled(&1, &topic, now), None);
}

#[test]
fn progress_restarts_the_lag_watch() {
    let store = MemoryStore::new();
    let t0 = Instant::now();
    let (mut m, theirs) = lagging_setup(&store, t0);
    let mut first = None;
    for ms in (250..=25_000u64).step_by(250) {
        if ms == 6_000 {
            // Some of it arrives (by gossip, say): what we lack shrank from 10 to 6.
            store.insert(&theirs[..4], Durability::Buffered).unwrap();
        }
        let outs = m.tick(t0 + Duration::from_millis(ms), &store);
        if first.is_none()
            && outs
                .iter()
                .any(|o| matches!(o, Output::Lagging { behind: 6, .. }))
        {
            first = Some(ms);
        }
    }
    assert_eq!(
        first,
        Some(16_000),
        "10 s after the last progress, not after the vector"
    );
}

#[test]
fn gossip_is_written_by_the_driver_and_its_verdict_waits_for_the_write() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    let evs = chain(&key(3), "a/t", 5, "x");
    let mut outs = m.gossiped(vec![gossip(7, 1, &evs)], &store);
    // Nothing stored and nothing forwarded yet: the machine only asked for a write.
    assert!(verdicts(&outs).is_empty(), "{outs:?}");
    let (ticket, events) = take_persist(&mut outs);
    assert_eq!(events.len(), 5);
    assert_eq!(store.next_offset().0, 0);
    assert_eq!(m.persisting(), 1);
    let written = store.insert(&events, Durability::Buffered).unwrap();
    let outs = m.persisted(ticket, Ok(written), t0, &store);
    assert_eq!(verdicts(&outs), vec![(1, Verdict::Accept)]);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Received { events } if events.len() == 5))
    );
    assert_eq!(m.persisting(), 0);
    // A write that fails: the run is not forwarded (anti-entropy brings it later).
    let more = chain(&key(4), "a/t", 2, "y");
    let mut outs = m.gossiped(vec![gossip(7, 2, &more)], &store);
    let (ticket, _) = take_persist(&mut outs);
    let outs = m.persisted(ticket, Err("disk full".into()), t0, &store);
    assert_eq!(verdicts(&outs), vec![(2, Verdict::Ignore)]);
    assert!(!outs.iter().any(|o| matches!(o, Output::Received { .. })));
    assert!(head(&store, &more[0]).is_none());
}

#[test]
fn an_event_past_a_gap_is_held_forwarded_and_stored_once_the_gap_fills() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    let evs = chain(&key(1), "a/t", 10, "x");
    let outs = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(7, 1, &evs[5..])], &store)
    });
    // Valid: forwarded while held; nothing stored yet.
    assert_eq!(verdicts(&outs), vec![(1, Verdict::Accept)]);
    assert_eq!(m.held(), 5);
    assert_eq!(head(&store, &evs[0]), None);
    let outs = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(8, 2, &evs[..5])], &store)
    });
    assert_eq!(verdicts(&outs), vec![(2, Verdict::Accept)]);
    assert_eq!(head(&store, &evs[0]), Some(Seq(9)));
    assert_eq!(m.held(), 0);
    let received: usize = outs
        .iter()
        .map(|o| match o {
            Output::Received { events } => events.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(received, 10);
}

#[test]
fn a_gap_still_open_after_gap_wait_is_pulled_from_the_sender() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    let evs = chain(&key(1), "a/t", 10, "x");
    go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(7, 1, &evs[5..])], &store)
    });
    let early = go(&mut m, t0 + Duration::from_millis(100), &store, |m| {
        m.tick(t0 + Duration::from_millis(100), &store)
    });
    assert!(sends_to(&early, 7).is_empty(), "{early:?}");
    let due = go(&mut m, t0 + Duration::from_millis(350), &store, |m| {
        m.tick(t0 + Duration::from_millis(350), &store)
    });
    let asks = sends_to(&due, 7);
    assert!(
        asks.iter().any(|msg| matches!(msg, Message::Want { .. })),
        "{due:?}"
    );
}

#[test]
fn invalid_gossip_is_rejected_and_the_sender_banned_after_three() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    let evs = chain(&key(1), "a/t", 3, "x");
    let mut all = Vec::new();
    for (i, ev) in evs.iter().enumerate() {
        let g = Gossip {
            from: 9,
            id: i as M,
            channel: "murmur:#".into(),
            data: forged(std::slice::from_ref(ev)),
        };
        all.extend(go(&mut m, t0, &store, |m| m.gossiped(vec![g], &store)));
    }
    assert!(
        verdicts(&all).iter().all(|(_, v)| *v == Verdict::Reject),
        "{all:?}"
    );
    let bans: Vec<_> = all
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Ban {
                    peer: 9,
                    reason: "bad_gossip"
                }
            )
        })
        .collect();
    assert_eq!(bans.len(), 1, "{all:?}");
    assert_eq!(head(&store, &evs[0]), None, "nothing forged is stored");

    // Malformed bytes, a run sent on a channel whose pattern it does not match, and a
    // gossipsub topic that is not a channel are rejected too.
    let outs = go(&mut m, t0, &store, |m| {
        m.gossiped(
            vec![
                Gossip {
                    from: 3,
                    id: 10,
                    channel: "murmur:#".into(),
                    data: vec![1, 2, 3],
                },
                Gossip {
                    from: 3,
                    id: 11,
                    channel: "murmur:b/#".into(),
                    data: run::encode(&evs).unwrap(),
                },
                Gossip {
                    from: 4,
                    id: 12,
                    channel: "a/t".into(),
                    data: run::encode(&evs).unwrap(),
                },
            ],
            &store,
        )
    });
    let reasons: Vec<&str> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec!["malformed", "wrong_channel", "wrong_channel"]);
}

#[test]
fn off_interest_and_duplicate_gossip_is_ignored_not_forwarded() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("a/#"), None);
    let t0 = Instant::now();
    let other = chain(&key(1), "b/t", 2, "x");
    let outs = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(1, 1, &other)], &store)
    });
    assert_eq!(verdicts(&outs), vec![(1, Verdict::Ignore)]);
    assert_eq!(head(&store, &other[0]), None);

    let evs = chain(&key(1), "a/t", 2, "x");
    go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(1, 2, &evs)], &store)
    });
    let again = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(2, 3, &evs)], &store)
    });
    assert_eq!(verdicts(&again), vec![(3, Verdict::Ignore)]);
    assert!(
        again.iter().any(|o| matches!(o, Output::Duplicates(2))),
        "{again:?}"
    );
}

#[test]
fn a_live_run_on_a_second_channel_we_are_on_is_forwarded_there_too() {
    let store = MemoryStore::new();
    let mut cfg = config("a/#");
    cfg.interest.push(Pattern::new("#").unwrap());
    let mut m: Replicator<usize, M> = Replicator::new(cfg, None);
    m.start(&store);
    let t0 = Instant::now();
    let evs = chain(&key(1), "a/t", 2, "x");
    let on = |channel: &str, id: M| Gossip {
        from: 1,
        id,
        channel: channel.into(),
        data: run::encode(&evs).unwrap(),
    };
    let first = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![on("murmur:#", 1)], &store)
    });
    assert_eq!(verdicts(&first), vec![(1, Verdict::Accept)]);
    // The same run on `a/#`: members of that mesh may depend on us for it. It is
    // forwarded without being decoded or written again.
    let second = m.gossiped(vec![on("murmur:a/#", 2)], &store);
    assert_eq!(verdicts(&second), vec![(2, Verdict::Accept)]);
    assert!(
        !second.iter().any(|o| matches!(o, Output::Persist { .. })),
        "{second:?}"
    );
    // Not on a channel whose pattern it does not match.
    let wrong = m.gossiped(vec![on("murmur:b/#", 3)], &store);
    assert_eq!(verdicts(&wrong), vec![(3, Verdict::Ignore)]);
}

#[test]
fn rounds_and_runs_go_to_the_peers_that_want_the_topic() {
    let store = MemoryStore::new();
    let a = chain(&key(1), "a/t", 1, "x");
    let b = chain(&key(2), "b/t", 1, "x");
    store.insert(&a, Durability::Buffered).unwrap();
    store.insert(&b, Durability::Buffered).unwrap();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    m.start(&store);
    m.peer_subscribed(1, "murmur:a/#");
    m.peer_subscribed(2, "murmur:#");
    // Not channels: ignored.
    m.peer_subscribed(2, "b/t");
    m.peer_subscribed(2, "/meshsub/other");
    let topics_with = |outs: &[Output<usize, M>], peer: usize| -> Vec<String> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Sync(sync::Output::Send { to, msg }) if *to == peer => {
                    msg.topic().map(ToString::to_string)
                }
                _ => None,
            })
            .collect()
    };
    let outs = m.connected(1, t0, &store);
    assert_eq!(topics_with(&outs, 1), vec!["a/t"]);
    let outs = m.connected(2, t0, &store);
    assert_eq!(topics_with(&outs, 2), vec!["a/t", "b/t"]);
    // A run on b/t: peer 2 wants it through `#`, our own channel; peer 1 not at all.
    let ev = chain(&key(1), "b/t", 2, "y");
    let channels = |outs: Vec<Output<usize, M>>| -> Vec<String> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Gossip { channel, .. } => Some(channel.to_string()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(channels(m.published(vec![ev[1].clone()])), vec!["#"]);
    // A neighbour that only wants b/t, on a channel we are not on, gets its own copy.
    m.peer_subscribed(3, "murmur:b/t");
    assert_eq!(channels(m.published(vec![ev[1].clone()])), vec!["#", "b/t"]);
}

#[test]
fn a_conflicting_event_at_our_head_starts_a_round_with_its_sender() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    let ours = chain(&key(1), "a/t", 3, "x");
    let theirs = chain(&key(1), "a/t", 4, "y");
    go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(1, 1, &ours)], &store)
    });
    // seq 3 of the other chain links to its own seq 2, not to ours.
    let outs = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(5, 2, &theirs[3..])], &store)
    });
    assert!(
        sends_to(&outs, 5)
            .iter()
            .any(|msg| matches!(msg, Message::Hello { .. })),
        "{outs:?}"
    );
}

#[test]
fn rounds_run_on_connect_and_then_with_each_peer_in_turn() {
    let store = MemoryStore::new();
    let evs = chain(&key(1), "a/t", 1, "x");
    store.insert(&evs, Durability::Buffered).unwrap();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    let t0 = Instant::now();
    let subs = m.start(&store);
    assert!(
        subs.iter()
            .any(|o| matches!(o, Output::Subscribe(p) if p.as_str() == "#")),
        "{subs:?}"
    );
    // Every peer holds the same: it answers each round with InSync, so rounds finish
    // (a round that fails is retried on its own schedule; not this test's subject).
    let in_sync = |m: &mut Replicator<usize, M>, p: usize, now: Instant| {
        let topic = evs[0].topic().clone();
        m.sync_message(p, Message::InSync { topic }, now, &store);
    };
    for p in [1, 2, 3] {
        let outs = go(&mut m, t0, &store, |m| m.connected(p, t0, &store));
        assert_eq!(sends_to(&outs, p).len(), 1, "a round with {p} on connect");
        in_sync(&mut m, p, t0);
    }
    // Then rounds come one peer per interval.
    let mut order = Vec::new();
    for k in 1..=6u64 {
        let now = t0 + Duration::from_secs(3 + 3 * k);
        let outs = go(&mut m, now, &store, |m| m.tick(now, &store));
        for p in [1, 2, 3] {
            if !sends_to(&outs, p).is_empty() {
                order.push(p);
                in_sync(&mut m, p, now);
            }
        }
    }
    assert_eq!(order.len(), 6, "one round per interval: {order:?}");
    let distinct: BTreeSet<usize> = order.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "every peer in turn: {order:?}");
}

// ---- Several machines together ----

struct Net {
    nodes: Vec<(MemoryStore, Replicator<usize, M>)>,
    /// Pending deliveries: (at ms, seq, to, from, what).
    queue: BinaryHeap<Reverse<Delivery>>,
    seq: u64,
    now: u64,
    base: Instant,
    rng: u64,
    loss: f64,
    /// Group of each node while partitioned; `None` when healed.
    groups: Option<Vec<u8>>,
    /// Message ids each node has seen (gossipsub's dedup).
    seen: Vec<BTreeSet<M>>,
    /// Gossip runs by id.
    runs: HashMap<M, (String, Vec<u8>)>,
    next_id: M,
    /// Highest head seq seen per node and author.
    heads: Vec<BTreeMap<[u8; 32], u64>>,
    forged_ids: BTreeSet<EventId>,
    violations: Vec<String>,
    banned: Vec<BTreeSet<usize>>,
    /// Writes the machines asked for, not yet done, by write id; and when each node's
    /// writer is free (it writes in order, 0–20 ms each, like the daemon's store writer
    /// behind a slow disk: the machines run meanwhile).
    writes: HashMap<u64, (murmur_core::replicate::Ticket, Vec<Event>)>,
    writer_free: Vec<u64>,
}

/// A message due: (at ms, sequence number, to, from, what).
type Delivery = (u64, u64, usize, usize, Wire);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Wire {
    Gossip(M),
    Sync(Vec<u8>),
    /// A node's own write is done (by write id).
    Written(u64),
}

impl Net {
    fn new(n: usize, seed: u64, loss: f64) -> Net {
        Net {
            nodes: (0..n)
                .map(|_| (MemoryStore::new(), Replicator::new(config("#"), None)))
                .collect(),
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            base: Instant::now(),
            rng: seed,
            loss,
            groups: None,
            seen: vec![BTreeSet::new(); n],
            runs: HashMap::new(),
            next_id: 0,
            heads: vec![BTreeMap::new(); n],
            forged_ids: BTreeSet::new(),
            violations: Vec::new(),
            banned: vec![BTreeSet::new(); n],
            writes: HashMap::new(),
            writer_free: vec![0; n],
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        a != b
            && self.groups.as_ref().is_none_or(|g| g[a] == g[b])
            && !self.banned[a].contains(&b)
            && !self.banned[b].contains(&a)
    }

    fn send(&mut self, from: usize, to: usize, what: Wire) {
        if !self.linked(from, to) {
            return;
        }
        if (self.rand() as f64 / u64::MAX as f64) < self.loss {
            return;
        }
        let at = self.now + 5 + self.rand() % 40; // 5–45 ms: reorders freely
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, to, from, what)));
    }

    /// Connections as the links allow: connect what is linked, disconnect the rest.
    fn reconnect(&mut self) {
        let now = self.instant();
        for i in 0..self.nodes.len() {
            for j in 0..self.nodes.len() {
                if i == j {
                    continue;
                }
                let linked = self.linked(i, j);
                let known = self.nodes[i].1.peers().contains(&j);
                let (store, m) = &mut self.nodes[i];
                let outs = match (linked, known) {
                    (true, false) => m.connected(j, now, store),
                    (false, true) => m.disconnected(&j, store),
                    _ => continue,
                };
                self.outputs(i, outs);
            }
        }
    }

    fn publish(&mut self, node: usize, events: Vec<Event>) {
        let (store, m) = &mut self.nodes[node];
        store.insert(&events, Durability::Buffered).unwrap();
        let outs = m.published(events);
        self.outputs(node, outs);
    }

    /// A forger's run: valid-looking, with a broken signature.
    fn publish_forged(&mut self, node: usize, events: &[Event]) {
        for ev in events {
            self.forged_ids.insert(ev.id());
        }
        let id = self.new_id("murmur:#".into(), forged(events));
        for to in 0..self.nodes.len() {
            self.send(node, to, Wire::Gossip(id));
        }
    }

    fn new_id(&mut self, topic: String, data: Vec<u8>) -> M {
        self.next_id += 1;
        self.runs.insert(self.next_id, (topic, data));
        self.next_id
    }

    fn outputs(&mut self, i: usize, outs: Vec<Output<usize, M>>) {
        for o in outs {
            match o {
                Output::Sync(sync::Output::Send { to, msg }) => {
                    let frame = msg.to_frame().unwrap();
                    self.send(i, to, Wire::Sync(frame));
                }
                Output::Sync(sync::Output::Stored { events, .. }) => {
                    let evs: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
                    self.check(i, &evs);
                }
                Output::Received { events } => self.check(i, &events),
                Output::Gossip { channel, data } => {
                    let id = self.new_id(murmur_core::channel::name(&channel), data);
                    self.seen[i].insert(id);
                    for to in 0..self.nodes.len() {
                        self.send(i, to, Wire::Gossip(id));
                    }
                }
                // gossipsub forwards an accepted message to its peers.
                Output::Verdict {
                    id,
                    from,
                    verdict: Verdict::Accept,
                } => {
                    for to in 0..self.nodes.len() {
                        if to != from && to != i {
                            self.send(i, to, Wire::Gossip(id));
                        }
                    }
                }
                Output::Ban { peer, .. } => {
                    self.banned[i].insert(peer);
                }
                // Written later, in order, by the node's writer.
                Output::Persist { ticket, events, .. } => {
                    self.seq += 1;
                    let id = self.seq;
                    let at = self.writer_free[i].max(self.now) + self.rand() % 20;
                    self.writer_free[i] = at;
                    self.writes.insert(id, (ticket, events));
                    self.queue.push(Reverse((at, id, i, i, Wire::Written(id))));
                }
                _ => {}
            }
        }
    }

    /// At every write: nothing forged, heads only grow.
    fn check(&mut self, i: usize, events: &[Event]) {
        for ev in events {
            if self.forged_ids.contains(&ev.id()) {
                self.violations
                    .push(format!("node {i} stored forged {:?}", ev.id()));
            }
            let h = head(&self.nodes[i].0, ev).map_or(0, |s| s.0);
            let prev = self.heads[i].insert(ev.author().0, h).unwrap_or(0);
            if h < prev {
                self.violations
                    .push(format!("node {i}: head went back {prev} -> {h}"));
            }
        }
    }

    fn deliver(&mut self, to: usize, from: usize, what: Wire) {
        if let Wire::Written(id) = what {
            return self.written(to, id);
        }
        if !self.linked(from, to) {
            return;
        }
        let now = self.instant();
        let outs = match what {
            Wire::Gossip(id) => {
                if !self.seen[to].insert(id) {
                    return;
                }
                let (channel, data) = self.runs[&id].clone();
                let (store, m) = &mut self.nodes[to];
                m.gossiped(
                    vec![Gossip {
                        from,
                        id,
                        channel,
                        data,
                    }],
                    store,
                )
            }
            Wire::Sync(frame) => {
                let Ok(msg) = Message::from_body(&frame[4..]) else {
                    return;
                };
                let (store, m) = &mut self.nodes[to];
                m.sync_message(from, msg, now, store)
            }
            Wire::Written(_) => unreachable!("writes are delivered by the node to itself"),
        };
        self.outputs(to, outs);
    }

    /// Node `i`'s writer finished write `id`: the store takes it, the machine hears.
    fn written(&mut self, i: usize, id: u64) {
        let Some((ticket, events)) = self.writes.remove(&id) else {
            return;
        };
        let now = self.instant();
        let (store, m) = &mut self.nodes[i];
        let outcomes = store.insert(&events, Durability::Buffered).unwrap();
        let outs = m.persisted(ticket, Ok(outcomes), now, store);
        self.outputs(i, outs);
    }

    /// Runs the network until `until` ms: deliveries, and every node's tick every 250 ms.
    fn run_until(&mut self, until: u64) {
        while self.now < until {
            let next_tick = (self.now / 250 + 1) * 250;
            match self.queue.peek() {
                Some(Reverse((at, ..))) if *at <= next_tick => {
                    let Some(Reverse((at, _, to, from, what))) = self.queue.pop() else {
                        break;
                    };
                    self.now = at;
                    self.deliver(to, from, what);
                }
                _ => {
                    self.now = next_tick;
                    self.reconnect();
                    let now = self.instant();
                    for i in 0..self.nodes.len() {
                        let (store, m) = &mut self.nodes[i];
                        let outs = m.tick(now, store);
                        self.outputs(i, outs);
                    }
                }
            }
        }
    }
}

/// An event by `key` at the seq after `last`, linking to it, with another payload than
/// the author's own: a cloned key's fork.
fn conflicting(key: &murmur_core::Keypair, last: &Event) -> Event {
    Event::sign(
        &murmur_core::Draft {
            topic: last.topic().clone(),
            seq: Seq(last.seq().0 + 1),
            prev: Some(last.id()),
            time: murmur_core::Timestamp::from_ms(1_800_000_000_000),
            body: murmur_core::Payload::data(Bytes::from_static(b"from the clone")),
        },
        key,
    )
    .unwrap()
}

fn topic() -> Topic {
    Topic::new("fleet/t").unwrap()
}

/// One scenario: `n` nodes; authors 0 and 1 publish `per` events each in bursts,
/// while the network loses `loss` of messages and is split in two for a while; node 2
/// holds a clone of author 0's key and publishes a conflicting event; the last node
/// also forges runs.
fn scenario(n: usize, seed: u64, loss: f64, per: usize, split_at: usize) {
    let mut net = Net::new(n, seed, loss);
    net.reconnect();
    let authors = [key(10), key(11)];
    let chains: Vec<Vec<Event>> = authors
        .iter()
        .map(|k| chain(k, "fleet/t", per, "x"))
        .collect();
    let forger = n - 1;
    let mut published = 0;
    let mut forked = false;
    while published < per {
        let burst = (1 + (net.rand() % 4) as usize).min(per - published);
        if published >= split_at && published < split_at + per / 3 {
            // Partitioned: nodes 0 and 2 on one side, the rest on the other.
            net.groups = Some((0..n).map(|i| u8::from(i == 0 || i == 2)).collect());
        } else {
            net.groups = None;
        }
        for (a, c) in chains.iter().enumerate() {
            net.publish(a, c[published..published + burst].to_vec());
        }
        if !forked && published >= per / 2 {
            forked = true;
            // The clone of author 0 signs another event after its newest one: a fork.
            // The clone holds the author's history (a copied device), so its event is
            // stored there and anti-entropy spreads it even if every push is lost.
            let last = &chains[0][published + burst - 1];
            let fork = conflicting(&authors[0], last);
            net.nodes[2]
                .0
                .insert(&chains[0][..published + burst], Durability::Buffered)
                .unwrap();
            net.publish(2, vec![fork]);
            let bogus = chain(&key(99), "fleet/t", 3, "evil");
            net.publish_forged(forger, &bogus);
        }
        published += burst;
        let t = net.now + 100 + net.rand() % 300;
        net.run_until(t);
    }
    // Heal, stop losing messages, and let anti-entropy finish.
    net.groups = None;
    net.loss = 0.0;
    let t = net.now + 30_000;
    net.run_until(t);

    assert!(net.violations.is_empty(), "{:?}", net.violations);
    // Author 1's log is whole everywhere.
    let vvs: Vec<_> = net
        .nodes
        .iter()
        .map(|(s, _)| s.version_vector(&topic()).unwrap())
        .collect();
    for (i, vv) in vvs.iter().enumerate() {
        let one = vv.get(&authors[1].author()).map(|e| e.seq.0);
        assert_eq!(
            one,
            Some(per as u64 - 1),
            "node {i} lacks author 1's events"
        );
    }
    // Author 0 forked: the fork is proven at one seq, every node holds the log up to
    // it, knows of the fork and froze the log there (a node that learned of it late may
    // hold events past it: they stay, nothing more is added). A node holding the same
    // side as its peers learns of it too: known forks are part of a round's digest.
    for i in 0..n {
        let forks = net.nodes[i].0.forks().unwrap();
        assert!(
            forks.iter().any(|f| f.author() == authors[0].author()),
            "node {i} does not know of the fork"
        );
    }
    let state = |i: usize| {
        let st = net.nodes[i]
            .0
            .log_state(&authors[0].author(), &topic())
            .unwrap();
        (st.head.map(|h| (h.seq.0, h.id)), st.frozen_at.map(|f| f.0))
    };
    let fork_seqs: BTreeSet<u64> = net
        .nodes
        .iter()
        .flat_map(|(s, _)| s.forks().unwrap())
        .filter(|f| f.author() == authors[0].author())
        .map(|f| f.seq().0)
        .collect();
    assert_eq!(fork_seqs.len(), 1, "one fork, proven: {fork_seqs:?}");
    let at = fork_seqs.into_iter().next().unwrap_or_default();
    for i in 0..n {
        let (head, frozen) = state(i);
        assert!(
            head.is_some_and(|(seq, _)| seq + 1 >= at),
            "node {i} lacks author 0's history before the fork: {head:?}"
        );
        assert!(
            frozen.is_none_or(|f| f == at),
            "node {i} frozen at {frozen:?}"
        );
        for j in 0..n {
            let (other, other_frozen) = state(j);
            if head != other {
                assert!(
                    frozen.is_some() && other_frozen.is_some(),
                    "nodes {i} and {j} hold different heads of a forked log, not both frozen: {:?} / {:?}",
                    (head, frozen),
                    (other, other_frozen)
                );
            }
        }
    }
    // The forger is banned by every node it reached, and nothing of it got in.
    for (i, (s, _)) in net.nodes.iter().enumerate().take(forger) {
        assert!(
            s.log_state(&key(99).author(), &topic())
                .unwrap()
                .head
                .is_none(),
            "node {i} stored forged events"
        );
    }
}

#[test]
fn four_machines_converge_through_push_gaps_a_partition_a_fork_and_a_forger() {
    scenario(4, 1, 0.2, 60, 20);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn machines_converge_whatever_the_loss_and_the_partition(
        n in 4usize..7,
        seed in any::<u64>(),
        loss in 0.0f64..0.4,
        per in 20usize..60,
        split in 0usize..20,
    ) {
        scenario(n, seed, loss, per, split);
    }
}

#[test]
fn bodies_the_application_refuses_are_rejected() {
    let store = MemoryStore::new();
    let mut cfg = config("#");
    cfg.sync.check = Some(sync::BodyCheck(std::sync::Arc::new(
        |ev: &Event| match ev.body() {
            murmur_core::Body::Data { data, .. } if data == b"x0" => Err("no x0".into()),
            _ => Ok(()),
        },
    )));
    let mut m: Replicator<usize, M> = Replicator::new(cfg, None);
    let evs = chain(&key(1), "a/t", 2, "x");
    let outs = go(&mut m, Instant::now(), &store, |m| {
        m.gossiped(vec![gossip(1, 1, &evs)], &store)
    });
    assert_eq!(verdicts(&outs), vec![(1, Verdict::Reject)]);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Rejected {
            reason: "bad_body",
            ..
        }
    )));
}

#[test]
fn own_logs_are_confirmed_once_a_round_has_finished_on_every_topic() {
    let (a_store, b_store) = (MemoryStore::new(), MemoryStore::new());
    let evs = chain(&key(1), "own/t", 20, "x");
    b_store.insert(&evs, Durability::Buffered).unwrap();
    a_store.insert(&evs[..5], Durability::Buffered).unwrap();
    let topics: BTreeSet<Topic> = [Topic::new("own/t").unwrap()].into();
    let mut a: Replicator<usize, M> = Replicator::new(config("#"), Some(topics));
    let mut b: Replicator<usize, M> = Replicator::new(config("#"), None);
    assert!(a.confirming());
    let now = Instant::now();
    // A connects to B (peer 1); messages go back and forth until nothing is left.
    let mut to_b: Vec<Message> = sends_to(
        &go(&mut a, now, &a_store, |m| m.connected(1, now, &a_store)),
        1,
    );
    let mut to_a: Vec<Message> = sends_to(
        &go(&mut b, now, &b_store, |m| m.connected(0, now, &b_store)),
        0,
    );
    let mut confirmed = false;
    for _ in 0..50 {
        let mut next_b = Vec::new();
        for msg in to_b.drain(..) {
            next_b.extend(sends_to(
                &go(&mut b, now, &b_store, |m| {
                    m.sync_message(0, msg, now, &b_store)
                }),
                0,
            ));
        }
        let mut next_a = Vec::new();
        for msg in to_a.drain(..) {
            let outs = go(&mut a, now, &a_store, |m| {
                m.sync_message(1, msg, now, &a_store)
            });
            confirmed |= outs.iter().any(|o| matches!(o, Output::OwnLogsConfirmed));
            next_a.extend(sends_to(&outs, 1));
        }
        to_a = next_b;
        to_b = next_a;
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
    }
    assert!(confirmed, "no confirmation");
    assert!(!a.confirming());
    assert_eq!(head(&a_store, &evs[0]), Some(Seq(19)));
}

#[test]
fn a_pattern_short_of_topic_links_asks_for_a_lookup_until_it_has_them() {
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("fleet/t"), None);
    let outs = m.start(&store);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Provide(k) if k == "murmur/rv/1/fleet")),
        "{outs:?}"
    );
    let t0 = Instant::now();
    let finds = |outs: &[Output<usize, M>]| -> Vec<(String, usize)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::FindPeers { key, want } => Some((key.clone(), *want)),
                _ => None,
            })
            .collect()
    };
    for (p, ch) in [(1, "murmur:other/#"), (2, "murmur:fleet/#")] {
        m.connected(p, t0, &store);
        m.peer_subscribed(p, ch);
    }
    assert!(finds(&m.tick(t0, &store)).is_empty(), "not before 2 s");
    let at = t0 + Duration::from_secs(2);
    assert_eq!(
        finds(&m.tick(at, &store)),
        vec![
            ("murmur/rv/1/*".to_string(), 2),
            ("murmur/rv/1/fleet".to_string(), 2)
        ]
    );
    assert_eq!(m.topic_links(&Pattern::new("fleet/t").unwrap()), 1);
    // Two more peers that replicate it: enough; nothing is looked up at the next count.
    for (p, ch) in [(3, "murmur:fleet/t"), (4, "murmur:#")] {
        m.connected(p, at, &store);
        m.peer_subscribed(p, ch);
    }
    assert!(
        finds(&m.tick(at + Duration::from_secs(5), &store)).is_empty(),
        "not due"
    );
    assert!(
        finds(&m.tick(at + Duration::from_secs(10), &store)).is_empty(),
        "3 links"
    );
    // One leaves: short again at the next count.
    m.disconnected(&3, &store);
    assert_eq!(
        finds(&m.tick(at + Duration::from_secs(20), &store)),
        vec![
            ("murmur/rv/1/*".to_string(), 1),
            ("murmur/rv/1/fleet".to_string(), 1)
        ]
    );
}

#[test]
fn a_round_on_more_topics_than_sessions_queues_the_rest_instead_of_failing_them() {
    let store = MemoryStore::new();
    for i in 0..10 {
        store
            .insert(
                &chain(&key(1), &format!("t/{i}"), 1, "x"),
                Durability::Buffered,
            )
            .unwrap();
    }
    let mut cfg = config("#");
    cfg.sync.max_sessions = 4;
    let mut m: Replicator<usize, M> = Replicator::new(cfg, None);
    m.start(&store);
    let t0 = Instant::now();
    let hellos = |outs: &[Output<usize, M>]| -> Vec<Topic> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Sync(sync::Output::Send {
                    msg: Message::Hello { topic, .. },
                    ..
                }) => Some(topic.clone()),
                _ => None,
            })
            .collect()
    };
    let outs = m.connected(1, t0, &store);
    assert_eq!(hellos(&outs).len(), 4, "{outs:?}");
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Sync(sync::Output::Failed { .. }))),
        "nothing fails as busy: {outs:?}"
    );
    assert_eq!(m.queued(), 6);
    // Each session that ends starts the next queued one.
    let mut started = hellos(&outs);
    let mut i = 0;
    while i < started.len() {
        let topic = started[i].clone();
        let outs = m.sync_message(1, Message::InSync { topic }, t0, &store);
        started.extend(hellos(&outs));
        i += 1;
    }
    started.sort();
    started.dedup();
    assert_eq!(started.len(), 10, "every topic had its session");
    assert_eq!(m.queued(), 0);
}

/// Delivers the sync messages among `outs` (sent by node `from`) and every answer, until
/// nothing is left; writes are carried out at once.
fn pump2(
    nodes: &mut [(MemoryStore, Replicator<usize, M>)],
    from: usize,
    outs: Vec<Output<usize, M>>,
    now: Instant,
) {
    pump_watching(nodes, from, outs, now, from);
}

/// Started machines, one per entry of `held`, each store holding those events.
fn machines(held: &[&[Event]]) -> Vec<(MemoryStore, Replicator<usize, M>)> {
    held.iter()
        .map(|evs| {
            let store = MemoryStore::new();
            store.insert(evs, Durability::Buffered).unwrap();
            let mut m = Replicator::new(config("#"), None);
            m.start(&store);
            (store, m)
        })
        .collect()
}

/// A node whose disk is full pulls nothing (no rounds of its own, none as the answering
/// side, gossip ignored rather than written) and still serves its peers; once the store
/// writes again, a round with every peer brings what it missed.
#[test]
fn a_full_store_pulls_nothing_serves_its_peers_and_catches_up_once_it_writes_again() {
    let t0 = Instant::now();
    let ours = chain(&key(1), "a/t", 5, "a");
    let theirs = chain(&key(2), "a/t", 5, "b");
    let mut nodes = machines(&[&ours, &theirs]);
    let (s, m) = &mut nodes[0];
    assert!(m.set_store_full(true, t0, &*s).is_empty());
    assert!(m.store_full());
    // No round on connect, none in turn.
    let outs = go(m, t0, &*s, |m| m.connected(1, t0, &*s));
    assert!(sends_to(&outs, 1).is_empty(), "{outs:?}");
    let later = t0 + Duration::from_secs(5);
    let outs = go(m, later, &*s, |m| m.tick(later, &*s));
    assert!(sends_to(&outs, 1).is_empty(), "{outs:?}");
    // Gossip is left to the peers: ignored, nothing to write.
    let outs = m.gossiped(vec![gossip(1, 9, &theirs[..1])], &*s);
    assert_eq!(verdicts(&outs), vec![(9, Verdict::Ignore)]);
    assert!(!outs.iter().any(|o| matches!(o, Output::Persist { .. })));
    // The peer's round: served, and nothing pulled.
    let (s1, m1) = &mut nodes[1];
    let outs = go(m1, t0, &*s1, |m| m.connected(0, t0, &*s1));
    pump2(&mut nodes, 1, outs, t0);
    assert_eq!(head(&nodes[1].0, &ours[0]), Some(Seq(4)), "served");
    assert_eq!(head(&nodes[0].0, &theirs[0]), None, "pulled nothing");
    // Writes again: a round with the peer catches up.
    let (s, m) = &mut nodes[0];
    let outs = go(m, later, &*s, |m| m.set_store_full(false, later, &*s));
    assert_eq!(
        sends_to(&outs, 1).len(),
        1,
        "a round with the peer: {outs:?}"
    );
    pump2(&mut nodes, 0, outs, later);
    assert_eq!(head(&nodes[0].0, &theirs[0]), Some(Seq(4)));
}

/// Pulls paused (a store over its disk budget): no rounds, but live gossip is still
/// written; resuming runs a round with every peer.
#[test]
fn paused_pulls_still_take_gossip_and_resume_with_a_round() {
    let t0 = Instant::now();
    let theirs = chain(&key(2), "a/t", 3, "b");
    let store = MemoryStore::new();
    let mut m: Replicator<usize, M> = Replicator::new(config("#"), None);
    m.start(&store);
    assert!(m.set_pulls_paused(true, t0, &store).is_empty());
    assert!(m.pulls_paused() && !m.store_full());
    let outs = go(&mut m, t0, &store, |m| m.connected(1, t0, &store));
    assert!(sends_to(&outs, 1).is_empty(), "{outs:?}");
    let outs = go(&mut m, t0, &store, |m| {
        m.gossiped(vec![gossip(1, 9, &theirs[..1])], &store)
    });
    assert_eq!(verdicts(&outs), vec![(9, Verdict::Accept)]);
    assert_eq!(
        head(&store, &theirs[0]),
        Some(Seq(0)),
        "gossip is still written"
    );
    let outs = go(&mut m, t0, &store, |m| {
        m.set_pulls_paused(false, t0, &store)
    });
    assert_eq!(sends_to(&outs, 1).len(), 1, "a round on resuming: {outs:?}");
}

/// The fleet's permissions in the machine: a revoked author's run is refused by gossip
/// (not forwarded, not held against the sender: it may not know yet), and a pull
/// from a peer that holds its whole log stores the prefix from before the revocation
/// and stops at the first refused event. A stranger's events are refused too.
#[test]
fn the_fleets_policy_refuses_gossip_and_ends_a_pull_at_the_first_refused_event() {
    use murmur_core::fleet::{Entry, Fleet, Rule};
    use murmur_core::testing::{grant, member_cert, root_rule};
    let root = key(200);
    let (member, thief, stranger) = (key(1), key(2), key(3));
    let t0_ms = 1_700_000_000_000u64;
    let mut fleet = Fleet::new(root.author(), 1_000);
    for k in [&member, &thief] {
        let cert = member_cert(&root, k.author(), &["s"], t0_ms - 1, t0_ms + 1_000_000);
        fleet.apply(Entry::Member(cert)).unwrap();
    }
    let rule = |r: Rule| root_rule(&root, r, t0_ms);
    fleet.apply(rule(grant("s", &["a/#"], false))).unwrap();
    // The thief's events at seq 3 and later (time t0 + seq) come after its revocation.
    fleet
        .apply(rule(Rule::Revoke {
            subject: thief.author(),
            reason: "stolen".into(),
            effective_ms: t0_ms + 3,
        }))
        .unwrap();
    let permit = sync::PermitCheck(std::sync::Arc::new(move |evs: &[Event]| {
        fleet.first_refused(evs)
    }));
    let mut cfg = config("#");
    cfg.sync.permit = Some(permit);
    let t0 = Instant::now();
    let stolen = chain(&thief, "a/t", 6, "x");
    let mut nodes: Vec<(MemoryStore, Replicator<usize, M>)> = vec![
        (MemoryStore::new(), Replicator::new(cfg, None)),
        (MemoryStore::new(), Replicator::new(config("#"), None)),
    ];
    nodes[1].0.insert(&stolen, Durability::Buffered).unwrap();

    // Gossip: refused, rejected, counted, never banned for.
    let (s, m) = &mut nodes[0];
    for id in 0..5 {
        let outs = go(m, t0, &*s, |m| {
            m.gossiped(vec![gossip(1, id, &stolen[3..])], &*s)
        });
        assert_eq!(verdicts(&outs), vec![(id, Verdict::Ignore)]);
        assert!(
            outs.iter().any(
                |o| matches!(o, Output::Refused { reason, .. } if reason.reason() == "revoked")
            )
        );
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Ban { .. } | Output::Persist { .. })),
            "{outs:?}"
        );
    }
    let strange = chain(&stranger, "a/t", 1, "s");
    let outs = go(m, t0, &*s, |m| {
        m.gossiped(vec![gossip(1, 9, &strange)], &*s)
    });
    assert!(
        outs.iter().any(
            |o| matches!(o, Output::Refused { reason, .. } if reason.reason() == "not_a_member")
        )
    );
    assert_eq!(head(s, &strange[0]), None);
    // A member's events pass.
    let fine = chain(&member, "a/t", 2, "m");
    go(m, t0, &*s, |m| m.gossiped(vec![gossip(1, 10, &fine)], &*s));
    assert_eq!(head(s, &fine[1]), Some(Seq(1)));

    // A round with the peer that holds the whole stolen log: the prefix only.
    let outs = {
        let (s, m) = &mut nodes[0];
        go(m, t0, &*s, |m| m.connected(1, t0, &*s))
    };
    let all = outs.clone();
    pump2(&mut nodes, 0, outs, t0);
    let s = &nodes[0].0;
    assert_eq!(
        head(s, &stolen[0]),
        Some(Seq(2)),
        "only what came before the revocation"
    );
    // (The gossip refused from seq 3 on already: the pull stopped before it.)
    assert!(!all.iter().any(|o| matches!(o, Output::Ban { .. })));
    // The next round asks for nothing past the refused point, and the lag watch does
    // not count it as lag.
    let refused = |outs: &[Output<usize, M>]| {
        outs.iter()
            .filter(|o| matches!(o, Output::Sync(sync::Output::Refused { .. })))
            .count()
    };
    let later = t0 + Duration::from_secs(3);
    let outs = {
        let (s, m) = &mut nodes[0];
        go(m, later, &*s, |m| m.sync_now(Some(1), later, &*s))
    };
    let mut again = outs.clone();
    pump2(&mut nodes, 0, outs, later);
    let (s, m) = &mut nodes[0];
    again.extend(go(m, later, &*s, |m| m.tick(later, &*s)));
    assert_eq!(head(s, &stolen[0]), Some(Seq(2)));
    // The peer's vector came with that round: had the refused events counted as lag,
    // the watch would report them once `lag_watch` (60 s) passed.
    let much_later = t0 + Duration::from_secs(120);
    let watch = m.stalled(&1, &topic_of(&stolen[0]), much_later);
    assert!(watch.is_none(), "refused events are not lag: {watch:?}");
    assert_eq!(refused(&again), 0, "nothing was pulled to be refused again");
}

fn topic_of(ev: &Event) -> Topic {
    ev.topic().clone()
}

/// Delivers the sync messages among `outs` (sent by node `from`) and every answer, until
/// nothing is left, and returns what node `watch` output on the way.
fn pump_watching(
    nodes: &mut [(MemoryStore, Replicator<usize, M>)],
    from: usize,
    outs: Vec<Output<usize, M>>,
    now: Instant,
    watch: usize,
) -> Vec<Output<usize, M>> {
    let mut seen = Vec::new();
    let mut queue: Vec<(usize, usize, Message)> = Vec::new();
    let sends = |from: usize, outs: &[Output<usize, M>], q: &mut Vec<(usize, usize, Message)>| {
        for o in outs {
            if let Output::Sync(sync::Output::Send { to, msg }) = o {
                q.push((*to, from, msg.clone()));
            }
        }
    };
    sends(from, &outs, &mut queue);
    if from == watch {
        seen.extend(outs);
    }
    for _ in 0..10_000 {
        let Some((to, from, msg)) = queue.pop() else {
            return seen;
        };
        let (store, m) = &mut nodes[to];
        let outs = go(m, now, &*store, |m| m.sync_message(from, msg, now, &*store));
        sends(to, &outs, &mut queue);
        if to == watch {
            seen.extend(outs);
        }
    }
    panic!("the exchange never ended");
}

fn push_lost(outs: &[Output<usize, M>]) -> Vec<(usize, u64, bool)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::PushLost {
                peer,
                events,
                reconnect,
            } => Some((*peer, *events, *reconnect)),
            _ => None,
        })
        .collect()
}

/// Live push is watched per peer: once a round with a peer has ended on a topic, that
/// peer's own later events there must come by its push. Ranges of them that come by
/// sync instead (another peer's rounds) report the push lost; three ranges in a row,
/// with no push from it between, ask for a reconnect. Events from before the first
/// round with it are not counted.
#[test]
fn a_peers_own_events_that_come_by_sync_after_a_round_report_its_push_lost() {
    let t0 = Instant::now();
    let publisher = key(1);
    let theirs = chain(&publisher, "a/t", 5, "p");
    // 0 watches; 1 publishes (its push to 0 is lost); 2 relays what 1 wrote.
    // Rounds run on the topics a node holds: 0 holds one event of its own there.
    let own = chain(&key(3), "a/t", 1, "w");
    let mut nodes = machines(&[&own, &theirs[..1], &theirs[..1]]);
    for (s, m) in &mut nodes[1..] {
        // Their own rounds with 0 are not run here.
        m.connected(0, t0, &*s);
    }
    // Node 0 meets 1 (whose author key it knows) and 2, both on the channel it is on.
    let (s, m) = &mut nodes[0];
    m.peer_author(1, publisher.author());
    let to_1 = go(m, t0, &*s, |m| m.connected(1, t0, &*s));
    m.peer_subscribed(1, "murmur:#");
    m.peer_subscribed(2, "murmur:#");
    // Its first round with 1: not a lost push (nothing was caught up before).
    let seen = pump_watching(&mut nodes, 0, to_1, t0, 0);
    assert!(push_lost(&seen).is_empty(), "{seen:?}");
    assert_eq!(head(&nodes[0].0, &theirs[0]), Some(Seq(0)));
    // 1 writes seq 1-4; its push to 0 is lost, 2 has them. 0's rounds with 2 pull
    // them, in three ranges: 1's own events after a round with it ended, by sync.
    let (s, m) = &mut nodes[0];
    let to_2 = go(m, t0, &*s, |m| m.connected(2, t0, &*s));
    nodes[2]
        .0
        .insert(&theirs[..2], Durability::Buffered)
        .unwrap();
    let seen = pump_watching(&mut nodes, 0, to_2, t0, 0);
    assert_eq!(head(&nodes[0].0, &theirs[0]), Some(Seq(1)));
    assert_eq!(push_lost(&seen), vec![(1, 1, false)], "{seen:?}");
    nodes[2]
        .0
        .insert(&theirs[2..4], Durability::Buffered)
        .unwrap();
    let (s, m) = &mut nodes[0];
    let again = go(m, t0, &*s, |m| m.sync_now(Some(2), t0, &*s));
    let seen = pump_watching(&mut nodes, 0, again, t0, 0);
    assert_eq!(push_lost(&seen), vec![(1, 2, false)], "{seen:?}");
    // A push from 1 between the ranges starts the count over.
    let (s, m) = &mut nodes[0];
    let direct = chain(&publisher, "a/t", 5, "p");
    let outs = go(m, t0, &*s, |m| {
        m.gossiped(vec![gossip(1, 7, &direct[4..])], &*s)
    });
    assert_eq!(verdicts(&outs), vec![(7, Verdict::Accept)]);
    assert!(push_lost(&outs).is_empty());
    nodes[2]
        .0
        .insert(&direct[4..], Durability::Buffered)
        .unwrap();
    let more = chain(&publisher, "a/t", 8, "p");
    for (i, range) in [&more[5..6], &more[6..7], &more[7..8]]
        .into_iter()
        .enumerate()
    {
        nodes[2].0.insert(range, Durability::Buffered).unwrap();
        let (s, m) = &mut nodes[0];
        let again = go(m, t0, &*s, |m| m.sync_now(Some(2), t0, &*s));
        let seen = pump_watching(&mut nodes, 0, again, t0, 0);
        assert_eq!(
            push_lost(&seen),
            vec![(1, 1, i == 2)],
            "range {i}: {seen:?}"
        );
    }
    assert_eq!(head(&nodes[0].0, &more[0]), Some(Seq(7)));
}

/// The same pulls are no lost push while the watcher ignores gossip (its store is
/// full) or after its pulls paused (rounds then end early), and a peer whose author
/// key is unknown is never watched.
#[test]
fn sync_deliveries_are_not_counted_against_a_push_that_could_not_be_taken() {
    let t0 = Instant::now();
    let publisher = key(1);
    let theirs = chain(&publisher, "a/t", 5, "p");
    for case in ["unknown author", "full store", "paused pulls"] {
        let own = chain(&key(3), "a/t", 1, "w");
        let mut nodes = machines(&[&own, &theirs[..1], &theirs]);
        for (s, m) in &mut nodes[1..] {
            m.connected(0, t0, &*s);
        }
        let (s, m) = &mut nodes[0];
        if case != "unknown author" {
            m.peer_author(1, publisher.author());
        }
        let to_1 = go(m, t0, &*s, |m| m.connected(1, t0, &*s));
        m.peer_subscribed(1, "murmur:#");
        m.peer_subscribed(2, "murmur:#");
        pump_watching(&mut nodes, 0, to_1, t0, 0);
        let (s, m) = &mut nodes[0];
        if case == "full store" {
            // Full for a while (gossip ignored), then writing again.
            m.set_store_full(true, t0, &*s);
            m.set_store_full(false, t0, &*s);
        }
        if case == "paused pulls" {
            // A pause ends rounds early ("done" without holding all the peer had).
            m.set_pulls_paused(true, t0, &*s);
            m.set_pulls_paused(false, t0, &*s);
        }
        let to_2 = go(m, t0, &*s, |m| m.connected(2, t0, &*s));
        let seen = pump_watching(&mut nodes, 0, to_2, t0, 0);
        assert_eq!(head(&nodes[0].0, &theirs[0]), Some(Seq(4)), "{case}");
        assert!(push_lost(&seen).is_empty(), "{case}: {seen:?}");
    }
}

/// A window that arrives after pulls were paused (a disk budget's hold, a full disk)
/// is not written: writing what was in flight when the pause began took a node past
/// its budget. A round after the pause asks for it again.
#[test]
fn a_window_that_arrives_after_a_pause_is_not_written() {
    let t0 = Instant::now();
    let theirs = chain(&key(2), "a/t", 5, "b");
    let own = chain(&key(3), "a/t", 1, "w");
    let mut nodes = machines(&[&own, &theirs]);
    let (s1, m1) = &mut nodes[1];
    m1.connected(0, t0, &*s1);
    // Node 0's round with 1, message by message, until 1 answers with a window.
    let (s0, m0) = &mut nodes[0];
    let mut to_1 = sends_to(&go(m0, t0, &*s0, |m| m.connected(1, t0, &*s0)), 1);
    let mut window = None;
    for _ in 0..20 {
        let Some(msg) = to_1.pop() else { break };
        let (s1, m1) = &mut nodes[1];
        for answer in sends_to(&go(m1, t0, &*s1, |m| m.sync_message(0, msg, t0, &*s1)), 0) {
            if matches!(answer, Message::Events { .. }) {
                window = Some(answer);
            } else {
                let (s0, m0) = &mut nodes[0];
                to_1.extend(sends_to(
                    &go(m0, t0, &*s0, |m| m.sync_message(1, answer, t0, &*s0)),
                    1,
                ));
            }
        }
        if window.is_some() {
            break;
        }
    }
    let window = window.expect("node 1 answered with a window");
    // Paused while the window was on its way: it arrives and is not written.
    let (s0, m0) = &mut nodes[0];
    m0.set_pulls_paused(true, t0, &*s0);
    let outs = m0.sync_message(1, window.clone(), t0, &*s0);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Persist { .. })),
        "{outs:?}"
    );
    assert_eq!(head(s0, &theirs[0]), None);
    // Resumed: a round brings it.
    let outs = go(m0, t0, &*s0, |m| m.set_pulls_paused(false, t0, &*s0));
    pump2(&mut nodes, 0, outs, t0);
    assert_eq!(head(&nodes[0].0, &theirs[0]), Some(Seq(4)));
}
