//! Retention policy against a real (in-memory) store: see `murmur_core::retention`.

use std::time::Duration;

use murmur_core::retention::{Policy, Rule};
use murmur_core::testing::{chain, key};
use murmur_core::{Durability, Pattern, ReadStore, Seq, Store};
use murmur_store::MemoryStore;

fn rule(p: &str) -> Rule {
    Rule {
        pattern: Pattern::new(p).unwrap(),
        max_age: None,
        max_events_per_log: None,
        max_bytes: None,
        keep: false,
    }
}

/// The first matching rule decides: `status/#` latest only, `sensors/#` by age,
/// `config/#` kept, the rest untouched.
#[test]
fn a_pass_cuts_by_count_and_by_age_and_keeps_the_rest() {
    let store = MemoryStore::new();
    let k = key(1);
    // testing::chain times are 1_700_000_000_000 + seq ms.
    for t in ["status/d1", "sensors/d1/t", "config/x", "other/y"] {
        store
            .insert(&chain(&k, t, 100, "v"), Durability::Sync)
            .unwrap();
    }
    let policy = Policy::new(vec![
        Rule {
            max_events_per_log: Some(1),
            ..rule("status/#")
        },
        Rule {
            max_age: Some(Duration::from_millis(30)),
            ..rule("sensors/#")
        },
        Rule {
            keep: true,
            ..rule("config/#")
        },
        // Never reached for config/x: the first match wins.
        Rule {
            max_events_per_log: Some(5),
            ..rule("#")
        },
    ])
    .unwrap();
    let logs = store.logs().unwrap();
    let now = 1_700_000_000_000 + 99 + 10;
    let plan = policy.plan(&logs, now, &store).unwrap();
    let below = |t: &str| {
        plan.iter()
            .find(|p| p.cut.topic.as_str() == t)
            .map(|p| (p.cut.below.0, p.rule))
    };
    assert_eq!(below("status/d1"), Some((99, Some(0))));
    // Cutoff = now - 30 ms = seq 79's time: 79 and later stay.
    assert_eq!(below("sensors/d1/t"), Some((79, Some(1))));
    assert_eq!(below("config/x"), None);
    assert_eq!(below("other/y"), Some((95, Some(3))));
    // Carried out, the next pass finds nothing more to cut.
    store
        .prune(&plan.iter().map(|p| p.cut.clone()).collect::<Vec<_>>())
        .unwrap();
    let again = policy.plan(&store.logs().unwrap(), now, &store).unwrap();
    assert!(again.is_empty(), "{again:?}");
    // Much later, max_age leaves only the head of the quiet sensor log.
    let later = policy
        .plan(&store.logs().unwrap(), now + 3_600_000, &store)
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].cut.below, Seq(99));
}

/// `max_bytes` counts a topic's logs together and cuts its oldest events first, by
/// event time across the logs, down to the limit (never below it by more than one
/// event), and never a log's head.
#[test]
fn max_bytes_cuts_the_topics_oldest_events_across_its_logs() {
    let store = MemoryStore::new();
    let (a, b, c) = (key(1), key(2), key(3));
    // testing::chain times are 1_700_000_000_000 + seq ms, for every author.
    let ea = chain(&a, "m/x", 100, "v");
    let eb = chain(&b, "m/x", 50, "v");
    let ec = chain(&c, "m/x", 1, "v");
    let other = chain(&a, "n/y", 100, "v");
    for evs in [&ea, &eb, &ec, &other] {
        store.insert(evs, Durability::Sync).unwrap();
    }
    let size = |e: &murmur_core::Event| e.bytes().len() as u64;
    let total: u64 = ea.iter().chain(&eb).chain(&ec).map(size).sum();
    let max = total * 2 / 5;
    let policy = Policy::new(vec![Rule {
        max_bytes: Some(max),
        ..rule("m/#")
    }])
    .unwrap();
    let plan = policy.plan(&store.logs().unwrap(), 0, &store).unwrap();
    assert!(
        plan.iter().all(|p| p.cut.topic.as_str() == "m/x"),
        "{plan:?}"
    );
    store
        .prune(&plan.iter().map(|p| p.cut.clone()).collect::<Vec<_>>())
        .unwrap();
    let logs = store.logs().unwrap();
    let held: u64 = logs
        .iter()
        .filter(|l| l.topic.as_str() == "m/x")
        .map(|l| l.bytes)
        .sum();
    let largest = ea.iter().chain(&eb).map(size).max().unwrap();
    assert!(held <= max && held + largest > max, "held {held} of {max}");
    // Oldest first across the logs: nothing kept is older than anything cut.
    let base = |k: &murmur_core::Keypair| {
        logs.iter()
            .find(|l| l.topic.as_str() == "m/x" && l.author == k.author())
            .unwrap()
            .base
            .0 as usize
    };
    let (ba, bb) = (base(&a), base(&b));
    assert!(ba > 0 && bb > 0, "both logs were cut: {ba}, {bb}");
    let newest_cut = ea[..ba].iter().chain(&eb[..bb]).map(|e| e.time()).max();
    let oldest_kept = ea[ba..].iter().chain(&eb[bb..]).map(|e| e.time()).min();
    assert!(
        newest_cut <= oldest_kept,
        "{newest_cut:?} > {oldest_kept:?}"
    );
    // The single-event log is its own head: it stays, old as it is.
    assert_eq!(base(&c), 0);
    // Another topic is untouched, and the next pass has nothing to do.
    assert!(
        logs.iter()
            .any(|l| l.topic.as_str() == "n/y" && l.base == Seq(0))
    );
    assert!(
        policy
            .plan(&store.logs().unwrap(), 0, &store)
            .unwrap()
            .is_empty()
    );
    // A limit of 0 is refused with the reason.
    let err = Policy::new(vec![Rule {
        max_bytes: Some(0),
        ..rule("m/#")
    }])
    .unwrap_err();
    assert!(err.contains("max_bytes"), "{err}");
}

/// A pass cuts at most `CUT_BUDGET` events (the writer deletes them in one batch); a
/// backlog goes over several passes.
#[test]
fn a_large_backlog_is_cut_over_several_bounded_passes() {
    use murmur_core::retention::CUT_BUDGET;
    let store = MemoryStore::new();
    let k = key(1);
    for t in ["big/a", "big/b"] {
        store
            .insert(&chain(&k, t, 30_000, "v"), Durability::Buffered)
            .unwrap();
    }
    let policy = Policy::new(vec![Rule {
        max_events_per_log: Some(1),
        ..rule("big/#")
    }])
    .unwrap();
    let mut passes = 0;
    loop {
        let plan = policy.plan(&store.logs().unwrap(), 0, &store).unwrap();
        if plan.is_empty() {
            break;
        }
        passes += 1;
        let cuts: Vec<_> = plan.iter().map(|p| p.cut.clone()).collect();
        let done = store.prune(&cuts).unwrap();
        assert!(done.events <= CUT_BUDGET, "{} in one pass", done.events);
    }
    assert_eq!(passes, 2);
    for l in store.logs().unwrap() {
        assert_eq!((l.base, l.head.seq), (Seq(29_999), Seq(29_999)));
    }
}

/// Over the disk budget, the oldest arrivals of topics not marked keep go first; a
/// log's head and kept topics never do.
#[test]
fn the_disk_budget_takes_the_oldest_events_of_topics_not_kept() {
    let store = MemoryStore::new();
    let k = key(1);
    let old = chain(&k, "logs/old", 10, "o");
    let kept = chain(&k, "config/x", 10, "c");
    let new = chain(&k, "logs/new", 10, "n");
    // Arrival order: config/x, logs/old, logs/new.
    for c in [&kept, &old, &new] {
        store.insert(c, Durability::Sync).unwrap();
    }
    let policy = Policy::new(vec![Rule {
        keep: true,
        ..rule("config/#")
    }])
    .unwrap();
    let logs = store.logs().unwrap();
    let cut_of = |plan: &[murmur_core::retention::Planned], t: &str| {
        plan.iter()
            .find(|p| p.cut.topic.as_str() == t)
            .map(|p| p.cut.below.0)
    };
    // 12 events: all of logs/old but its head (9), then 3 of logs/new.
    let plan = policy.plan_budget(&logs, 12, &store).unwrap();
    assert_eq!(cut_of(&plan, "config/x"), None, "kept");
    assert_eq!(cut_of(&plan, "logs/old"), Some(9), "the head stays");
    assert_eq!(cut_of(&plan, "logs/new"), Some(3));
    assert!(plan.iter().all(|p| p.rule.is_none()));
    // Asked for more than there is: everything but heads and kept topics.
    let all = policy.plan_budget(&logs, 1_000, &store).unwrap();
    assert_eq!(cut_of(&all, "logs/new"), Some(9));
    assert_eq!(cut_of(&all, "config/x"), None);
}
