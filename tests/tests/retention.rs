//! Retention on a real daemon (loopback, mDNS off): rules prune by count, a kept topic
//! and an unmatched one stay whole, the store verifies afterwards, and nothing pruned
//! comes back from a peer that still holds it, by gossip or by sync.

mod common;

use std::time::Duration;

use common::{Node, wait_for};
use serde_json::{Value, json};

fn publish_batch(n: &Node, topic: &str, count: usize) {
    let evs: Vec<Value> = (0..count)
        .map(|i| json!({"topic": topic, "data": format!("{topic}-{i}")}))
        .collect();
    let r = n.post("/v1/events/batch", &json!({ "events": evs }));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Stops `n` and checks its store with `murmur verify`.
fn stop_and_verify(n: &mut Node) {
    n.stop();
    let v = n.cli(&["verify"]);
    assert!(
        v.status.success(),
        "{}\n{}",
        common::stdout(&v),
        common::stderr(&v)
    );
}

/// The events of `topic` that `n` serves from offset 0.
fn held(n: &Node, topic: &str) -> Vec<String> {
    let page = n.get(&format!("/v1/events?pattern={topic}&from=0&limit=10000"));
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

const RULES: &str = r#"
[store]
prune_interval = "2s"

[[retention]]
pattern = "status/#"
max_events_per_log = 1

[[retention]]
pattern = "sensors/#"
max_events_per_log = 50

[[retention]]
pattern = "config/#"
keep = true
"#;

#[test]
fn retention_prunes_by_rule_and_nothing_pruned_comes_back_from_a_peer() {
    let mut a = Node::start(RULES);
    let b = Node::start("");
    // B (no retention) is connected before A publishes: it gets everything live, well
    // before A's first pass (2 s after start). B has no rule, so it could not take a
    // log from A's base later.
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("A and B connected", 10, || {
        a.get("/v1/status")["peers"] == 1
    });
    publish_batch(&a, "status/d1", 40);
    publish_batch(&a, "sensors/d1/t", 200);
    publish_batch(&a, "config/site", 20);
    publish_batch(&a, "other/x", 30);
    wait_for("B to hold all 290 events", 30, || b.events() == 290);

    wait_for("A to prune status and sensors", 20, || {
        a.metric("murmur_pruned_events_total{rule=\"status/#\"}") == 39
            && a.metric("murmur_pruned_events_total{rule=\"sensors/#\"}") == 150
    });
    assert_eq!(held(&a, "status/d1"), vec!["status/d1-39".to_string()]);
    let sensors = held(&a, "sensors/d1/t");
    assert_eq!(sensors.len(), 50);
    assert_eq!(sensors[0], "sensors/d1/t-150", "the newest 50, in order");
    assert_eq!(held(&a, "config/site").len(), 20, "keep = true");
    assert_eq!(held(&a, "other/x").len(), 30, "no rule: kept whole");
    assert_eq!(a.topic_events("sensors/d1/t"), 50);
    let listing = common::stdout(&a.cli(&["topics"]));
    let line = listing
        .lines()
        .find(|l| l.starts_with("sensors/d1/t"))
        .unwrap_or_default();
    assert!(
        line.contains(" 50 ") && line.contains("(150 pruned, ") && line.contains("; oldest held "),
        "{listing}"
    );
    assert!(a.metric("murmur_pruned_bytes_total{rule=\"sensors/#\"}") > 150 * 100);
    let topics = a.get("/v1/topics");
    let log = &topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "sensors/d1/t")
        .unwrap()["logs"][0];
    assert_eq!(
        (log["base"].as_u64(), log["head_seq"].as_u64()),
        (Some(150), Some(199))
    );
    // The oldest event held is the one at the base: its time is the topic's oldest.
    let page = a.get("/v1/events?pattern=sensors/d1/t&from=0&limit=1");
    let first = &page["events"][0];
    assert_eq!(first["seq"], 150, "{page}");
    assert_eq!(log["oldest_time"], first["time"], "{topics}");
    let topic = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "sensors/d1/t")
        .unwrap();
    assert_eq!(topic["oldest_time"], first["time"]);
    assert_eq!(topic["pruned"], 150);
    // The bytes pruned, per topic (and per log), as the metric counts them by rule.
    assert_eq!(
        topic["pruned_bytes"].as_u64(),
        Some(a.metric("murmur_pruned_bytes_total{rule=\"sensors/#\"}")),
        "{topic}"
    );

    // A follower resuming from an offset retention pruned past is told, not moved on:
    // 410 `pruned` naming where to resume; skipping is its choice.
    let r = a.req("GET", "/v1/follow?pattern=sensors/%23&from=0", None);
    assert_eq!(r.status, 410, "{}", r.body);
    assert_eq!(r.json()["code"], "pruned", "{}", r.body);
    assert!(r.body.contains("skip_pruned=true"), "{}", r.body);
    let sub = a.cli(&["sub", "sensors/#", "--from", "0", "-n", "1"]);
    assert!(!sub.status.success());
    assert!(
        common::stderr(&sub).contains("pruned"),
        "{}",
        common::stderr(&sub)
    );
    let sub = a.cli(&[
        "sub",
        "sensors/#",
        "--from",
        "0",
        "--skip-pruned",
        "-n",
        "50",
        "--json",
    ]);
    assert!(sub.status.success(), "{}", common::stderr(&sub));
    assert_eq!(common::payloads(&sub.stdout).len(), 50);
    let sub = a.cli(&["sub", "sensors/#", "--from-start", "-n", "50"]);
    assert!(sub.status.success(), "{}", common::stderr(&sub));
    // Reads say so in the page; a pattern retention did not touch is not told.
    let page = a.get("/v1/events?pattern=sensors/%23&from=0&limit=10");
    assert!(page["pruned_to"].as_u64().is_some(), "{page}");
    let page = a.get("/v1/events?pattern=config/%23&from=0&limit=10");
    assert!(page.get("pruned_to").is_none(), "{page}");
    let sub = a.cli(&["sub", "config/#", "--from", "0", "-n", "20"]);
    assert!(sub.status.success(), "{}", common::stderr(&sub));

    // Rounds both ways with B, which holds everything, leave A's logs as they are (the
    // heads are equal, so neither asks the other for anything; old events offered
    // again are refused as pruned: the store's conformance suite).
    let by_sync = a.metric("murmur_events_received_total{path=\"sync\"}");
    for n in [&a, &b] {
        let r = n.post("/v1/sync", &json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(held(&a, "sensors/d1/t").len(), 50);
    assert_eq!(held(&a, "status/d1").len(), 1);
    assert_eq!(
        a.metric("murmur_events_received_total{path=\"sync\"}"),
        by_sync,
        "nothing was pulled"
    );
    assert_eq!(b.events(), 290, "B keeps what it holds");

    // Live events still flow into the pruned logs' topics, and are pruned in turn.
    publish_batch(&b, "status/d2", 5);
    wait_for("A to receive B's status and keep the latest", 20, || {
        held(&a, "status/d2") == vec!["status/d2-4".to_string()]
    });

    // The pruned store verifies clean.
    stop_and_verify(&mut a);
}

/// Pruning gives the disk back: 100,000 events of 256 bytes on 10 topics, then a
/// restart with "keep 1,000 per log": once pruned and compacted, the database is a
/// small fraction of what it was, and the store verifies clean.
#[test]
fn pruned_space_returns_to_the_disk() {
    let mut n = Node::start("");
    let payload = "x".repeat(256);
    for b in 0..100 {
        let evs: Vec<Value> = (0..1000)
            .map(|i| json!({"topic": format!("sensors/{}", (b * 1000 + i) % 10), "data": payload}))
            .collect();
        let r = n.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    n.stop();
    let db = n.dir.join("db");
    let before = common::dir_bytes(&db);
    let config = "[store]\nprune_interval = \"1s\"\n\n[[retention]]\npattern = \"sensors/#\"\nmax_events_per_log = 1000\n";
    std::fs::write(
        n.dir.join("murmur.toml"),
        format!("{config}{}", common::LOOPBACK_P2P),
    )
    .unwrap();
    n.spawn();
    wait_for("90,000 events pruned", 60, || {
        n.metric("murmur_pruned_events_total{rule=\"sensors/#\"}") == 90_000
    });
    wait_for("the compaction after pruning", 60, || {
        n.log().contains("compacted after pruning")
    });
    let st = n.get("/v1/status");
    assert_eq!(
        (
            st["events"].as_u64(),
            st["held"].as_u64(),
            st["pruned"].as_u64()
        ),
        (Some(100_000), Some(10_000), Some(90_000))
    );
    let status = common::stdout(&n.cli(&["status"]));
    assert!(
        status.contains("100000 (10000 held, 90000 pruned by retention)"),
        "{status}"
    );
    n.stop();
    let after = common::dir_bytes(&db);
    eprintln!(
        "disk: {before} bytes for 100,000 events, {after} bytes after pruning to 10,000 ({:.1}%)",
        after as f64 * 100.0 / before as f64
    );
    assert!(after * 4 < before, "{after} of {before} bytes left");
    let v = n.cli(&["verify"]);
    assert!(v.status.success(), "{}", common::stdout(&v));
}

/// A disk budget holds while events keep coming: 160,000 events of 256 bytes (about
/// 90 MB stored whole) at 8,000 events/s into a node with `store.max_disk_mb = 16`.
/// The database, sampled every 100 ms, stays within the budget; the kept topic is
/// untouched; the newest events are all there; the store verifies clean.
#[test]
fn a_disk_budget_holds_while_events_keep_coming() {
    let config = "[store]\nmax_disk_mb = 16\nwrite_buffer_mb = 4\n\n[[retention]]\npattern = \"config/#\"\nkeep = true\n";
    let mut n = Node::start(config);
    publish_batch(&n, "config/site", 100);
    let db = n.dir.join("db");
    let payload = "x".repeat(256);
    let budget = 16u64 << 20;
    let mut most = 0u64;
    let start = std::time::Instant::now();
    for b in 0..40u32 {
        let evs: Vec<Value> = (0..4000)
            .map(|i| json!({"topic": format!("sensors/{}", i % 50), "data": format!("{b}-{i}-{payload}")}))
            .collect();
        let r = n.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
        let due = start + Duration::from_millis(500) * (b + 1);
        while std::time::Instant::now() < due {
            most = most.max(common::dir_bytes(&db));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for _ in 0..20 {
        most = most.max(common::dir_bytes(&db));
        std::thread::sleep(Duration::from_millis(100));
    }
    let pruned = n.metric("murmur_pruned_events_total{rule=\"store.max_disk_mb\"}");
    eprintln!(
        "disk budget 16 MiB: at most {:.1} MiB sampled; {pruned} of 160,000 events pruned",
        most as f64 / (1 << 20) as f64
    );
    if most > budget {
        for l in n
            .log()
            .lines()
            .filter(|l| l.contains("compacted") || l.contains("budget"))
        {
            eprintln!("{l}");
        }
    }
    assert!(most <= budget, "{most} bytes on disk, budget {budget}");
    assert!(pruned > 100_000, "{pruned}");
    assert_eq!(held(&n, "config/site").len(), 100, "keep = true");
    assert_eq!(n.metric("murmur_store_disk_budget_bytes"), budget);
    // The newest batch is whole: the oldest events went first.
    let last = n.get("/v1/status")["held"].as_u64().unwrap();
    assert!(last >= 4000, "{last}");
    stop_and_verify(&mut n);
}

/// A device that was off while its fleet pruned past what it held comes back and gets
/// the window: its log starts over at the peer's base (its own rule lets those events
/// go too), it is not stuck behind, and nobody is banned.
#[test]
fn a_device_back_after_the_window_gets_the_window() {
    let rules = "[store]\nprune_interval = \"1s\"\n\n[[retention]]\npattern = \"sensors/#\"\nmax_events_per_log = 20\n";
    let a = Node::start(rules);
    let mut b = Node::start(rules);
    publish_batch(&a, "sensors/d1", 10);
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("B to hold the first 10", 20, || {
        b.topic_events("sensors/d1") == 10
    });
    // B goes away; A publishes 200 more and keeps its last 20 (seq 190..=209).
    b.stop();
    for _ in 0..4 {
        publish_batch(&a, "sensors/d1", 50);
    }
    wait_for("A to prune to 20", 20, || {
        a.topic_events("sensors/d1") == 20
    });
    b.spawn();
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("B to catch up to A's head", 30, || {
        let t = b.get("/v1/topics");
        t["topics"][0]["logs"][0]["head_seq"] == 209
    });
    let t = b.get("/v1/topics");
    assert_eq!(t["topics"][0]["logs"][0]["base"], 190, "{t}");
    assert_eq!(b.topic_events("sensors/d1"), 20);
    let held_b = held(&b, "sensors/d1");
    assert_eq!(
        held_b.first().map(String::as_str),
        Some("sensors/d1-30"),
        "seq 190: the last batch's 31st"
    );
    assert_eq!(
        a.metric("murmur_peer_bans_total{reason=\"sync_violation\"}")
            + b.metric("murmur_peer_bans_total{reason=\"sync_violation\"}"),
        0
    );
}

/// A follower that falls behind past what retention prunes is not moved on silently:
/// its stream ends where the pruned events were, and resuming from there answers
/// `410 pruned`.
#[test]
fn a_follower_that_falls_behind_past_pruning_is_stopped_and_told() {
    use std::io::{Read, Write};
    let n = Node::start(
        "[store]\nprune_interval = \"5s\"\n\n[[retention]]\npattern = \"sensors/#\"\nmax_events_per_log = 100\n",
    );
    // 20,000 events of 1 KiB (far more than the socket buffers hold), published well
    // before the first pass, 5 s after start.
    let payload = "y".repeat(1024);
    for b in 0..20 {
        let evs: Vec<Value> = (0..1000)
            .map(|i| json!({"topic": "sensors/s1", "data": format!("{b}-{i}-{payload}")}))
            .collect();
        let r = n.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The follower starts before the first pass prunes (it is told nothing yet), reads
    // a little, and stops reading.
    let mut s = std::os::unix::net::UnixStream::connect(n.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        b"GET /v1/follow?pattern=sensors/%23&from=0&format=ndjson HTTP/1.1\r\nHost: murmur\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut first = vec![0u8; 4096];
    let got = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..got]).contains("200 OK"));
    wait_for("the pass that keeps the newest 100", 30, || {
        n.metric("murmur_pruned_events_total{rule=\"sensors/#\"}") == 19_900
    });
    // Reading on: what was buffered, then the end of the stream, well before the
    // 20,000th event.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&rest);
    let offsets: Vec<u64> = text
        .split("\"offset\":")
        .skip(1)
        .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    let last = offsets.iter().copied().max().unwrap_or(0);
    assert!(last < 19_899, "the stream went on to offset {last}");
    let r = n.req(
        "GET",
        &format!("/v1/follow?pattern=sensors/%23&from={}", last + 1),
        None,
    );
    assert_eq!(r.status, 410, "{}", r.body);
    assert_eq!(r.json()["code"], "pruned");
}

/// A node catching up into a disk budget stays within it: 200,000 events (about
/// 110 MB stored whole) pulled by a node with `store.max_disk_mb = 16`. Its pulls pause
/// past 50% of the budget while pruning makes room, and resume; the database, sampled
/// every 20 ms, never passes the budget, and the node ends holding the log's head.
#[test]
fn a_node_catching_up_into_a_disk_budget_stays_within_it() {
    let a = Node::start("");
    let payload = "x".repeat(256);
    for b in 0..200 {
        let evs: Vec<Value> = (0..1000)
            .map(|i| json!({"topic": "backlog/t", "data": format!("{b}-{i}-{payload}")}))
            .collect();
        let r = a.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let b = Node::start("[store]\nmax_disk_mb = 16\n");
    let db = b.dir.join("db");
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    let head = |n: &Node| n.get("/v1/topics")["topics"][0]["logs"][0]["head_seq"].as_u64();
    let t0 = std::time::Instant::now();
    let mut most = 0u64;
    while head(&b) != Some(199_999) {
        most = most.max(common::dir_bytes(&db));
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "catch-up stalled: {}\n{}",
            b.get("/v1/status"),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pauses = b.metric("murmur_pull_pauses_total");
    eprintln!(
        "caught up 200,000 events into a 16 MiB budget in {:?}: at most {:.1} MiB sampled, pulls paused {pauses} times",
        t0.elapsed(),
        most as f64 / (1 << 20) as f64
    );
    assert!(most <= 16 << 20, "{most} bytes on disk");
    assert!(pauses > 0, "the budget never paused the pulls");
    // The last windows may leave it paused until the next pruning makes room.
    wait_for("pulls to resume", 20, || {
        b.metric("murmur_pulls_paused") == 0
    });
}

/// Rules set at runtime (`murmur retention`): they apply at the next pass, survive a
/// restart, refuse a bad rule with a clear message, and a reset goes back to the
/// config's.
#[test]
fn retention_rules_set_at_runtime_apply_and_survive_a_restart() {
    let mut n = Node::start("[store]\nprune_interval = \"1s\"\n");
    publish_batch(&n, "sensors/a", 100);
    publish_batch(&n, "logs/a", 100);
    let shown = n.cli(&["retention"]);
    assert!(
        common::stdout(&shown).contains("no retention rules (from the config file)"),
        "{}",
        common::stdout(&shown)
    );
    let set = n.cli(&["retention", "set", "sensors/#", "--max-events", "10"]);
    assert!(set.status.success(), "{}", common::stderr(&set));
    assert!(
        common::stdout(&set).contains("sensors/#") && common::stdout(&set).contains("newest 10"),
        "{}",
        common::stdout(&set)
    );
    let set = n.cli(&["retention", "set", "logs/#", "--max-age", "1h"]);
    assert!(set.status.success(), "{}", common::stderr(&set));
    wait_for("the runtime rule to prune", 20, || {
        n.metric("murmur_pruned_events_total{rule=\"sensors/#\"}") == 90
    });
    assert_eq!(n.topic_events("logs/a"), 100, "events younger than 1h stay");
    // A rule without a limit, a bad age: refused, saying why; nothing changes.
    let bad = n.cli(&["retention", "set", "x/#"]);
    assert!(!bad.status.success());
    assert!(
        common::stderr(&bad).contains("no limit"),
        "{}",
        common::stderr(&bad)
    );
    let r = n.post(
        "/v1/retention",
        &json!({"rules": [{"pattern": "x/#", "max_age": "soon"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["code"], "bad_rule", "{}", r.body);
    // Kept across a restart, in order (the newest rule first).
    n.stop();
    n.spawn();
    let now = n.get("/v1/retention");
    assert_eq!(now["source"], "runtime", "{now}");
    let patterns: Vec<&str> = now["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["pattern"].as_str())
        .collect();
    assert_eq!(patterns, vec!["logs/#", "sensors/#"]);
    let rm = n.cli(&["retention", "rm", "logs/#"]);
    assert!(rm.status.success(), "{}", common::stderr(&rm));
    assert_eq!(n.get("/v1/retention")["rules"].as_array().unwrap().len(), 1);
    // Reset: the config's rules (none), and the file is gone.
    let reset = n.cli(&["retention", "reset"]);
    assert!(reset.status.success(), "{}", common::stderr(&reset));
    let now = n.get("/v1/retention");
    assert_eq!(
        (
            now["source"].as_str(),
            now["rules"].as_array().map(Vec::len)
        ),
        (Some("config"), Some(0))
    );
    assert!(!n.dir.join("retention.json").exists());
}

/// A budget with nothing it may prune (every topic kept) does not hold pulls back for
/// room that never comes: the node catches up, past the budget (the disk fills instead;
/// a full disk then stops the pulls by itself).
#[test]
fn a_budget_with_nothing_to_prune_does_not_stall_a_catch_up() {
    let a = Node::start("");
    // Payloads that do not compress: the database must really outgrow the budget.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        (0..32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:08x}", x as u32)
            })
            .collect::<String>()
    };
    for _ in 0..60 {
        let evs: Vec<Value> = (0..1000)
            .map(|_| json!({"topic": "kept/t", "data": noise()}))
            .collect();
        let r = a.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let b =
        Node::start("[store]\nmax_disk_mb = 16\n\n[[retention]]\npattern = \"#\"\nkeep = true\n");
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("the catch-up past the budget", 90, || b.events() == 60_000);
    assert_eq!(b.metric("murmur_pulls_paused"), 0);
    assert!(b.get("/v1/status")["disk_bytes"].as_u64().unwrap() > 16 << 20);
}

/// `max_bytes` holds a topic to its newest bytes, counting every author's log together
/// and cutting the oldest events first; `murmur topics` and `/v1/topics` show the bytes
/// held; a tighter limit set at runtime applies; the store verifies clean.
#[test]
fn max_bytes_keeps_the_newest_bytes_of_a_topic_across_its_authors() {
    const MAX: u64 = 20 * 1024;
    let mut a = Node::start(
        "[store]\nprune_interval = \"1s\"\n\n[[retention]]\npattern = \"logs/#\"\nmax_bytes = \"20 KiB\"\n",
    );
    let b = Node::start("");
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("A and B connected", 10, || {
        a.get("/v1/status")["peers"] == 1
    });
    // Two authors in one topic, 300 events each (about 200 bytes encoded), which A
    // holds about 60 KiB of before pruning; another topic that no rule covers.
    let pad = "x".repeat(100);
    for round in 0..3 {
        for n in [&a, &b] {
            let evs: Vec<Value> = (0..100)
                .map(|i| json!({"topic": "logs/app", "data": format!("{round}-{i}-{pad}")}))
                .collect();
            let r = n.post("/v1/events/batch", &json!({ "events": evs }));
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    publish_batch(&a, "other/x", 50);
    let logs_app = |n: &Node| {
        let topics = n.get("/v1/topics");
        topics["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["topic"] == "logs/app").cloned())
            .unwrap_or_default()
    };
    wait_for("A to receive B's events and prune to 20 KiB", 30, || {
        let t = logs_app(&a);
        t["bytes"].as_u64().is_some_and(|b| b <= MAX)
            && t["logs"].as_array().map(Vec::len) == Some(2)
            && t["logs"]
                .as_array()
                .is_some_and(|l| l.iter().all(|l| l["head_seq"] == 299))
    });
    let t = logs_app(&a);
    let bytes = t["bytes"].as_u64().unwrap_or_default();
    let per_event = 250;
    assert!(
        bytes + per_event > MAX,
        "cut to {bytes}: no more than needed"
    );
    // Oldest first across the logs, by event time: the authors published in turns
    // (A's round, then B's, three times), and what stays is the newest rounds only:
    // both logs are cut into their last round (A's may be down to its head).
    let bases: Vec<u64> = t["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["base"].as_u64().unwrap_or_default())
        .collect();
    assert!(
        bases.iter().all(|b| (200..=299).contains(b)),
        "bases {bases:?}: {t}"
    );
    let held_logs: u64 = t["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["bytes"].as_u64().unwrap_or_default())
        .sum();
    assert_eq!(held_logs, bytes);
    let other = a.get("/v1/topics")["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "other/x")
        .cloned()
        .unwrap();
    assert_eq!(other["events"], 50, "no rule: kept whole");
    let listing = common::stdout(&a.cli(&["topics"]));
    assert!(
        listing.contains("SIZE") && listing.contains("KiB"),
        "{listing}"
    );
    assert_eq!(b.events(), 650, "B keeps everything");

    // Tighter at runtime, through the CLI with a unit.
    let set = a.cli(&["retention", "set", "logs/#", "--max-bytes", "4KiB"]);
    assert!(set.status.success(), "{}", common::stderr(&set));
    assert!(
        common::stdout(&set).contains("newest 4.0 KiB per topic"),
        "{}",
        common::stdout(&set)
    );
    wait_for("A to prune to 4 KiB", 20, || {
        logs_app(&a)["bytes"].as_u64().is_some_and(|b| b <= 4096)
    });
    let bad = a.cli(&["retention", "set", "logs/#", "--max-bytes", "lots"]);
    assert!(!bad.status.success());
    assert!(
        common::stderr(&bad).contains("64MiB"),
        "{}",
        common::stderr(&bad)
    );
    stop_and_verify(&mut a);
}

/// A document topic under a rule is compacted behind snapshot events its node
/// publishes: its logs are cut, its documents read the same (also after a restart), a
/// node that joins afterwards gets the documents from the snapshots and only the
/// window of history, a node that holds the whole history never takes a snapshot's
/// word for it, and changes made after the compaction apply everywhere.
#[test]
fn a_document_topic_is_compacted_behind_snapshots_and_a_late_joiner_gets_the_documents() {
    const T: &str = "site/7";
    let change = |n: &Node, doc: &str, ops: Value| {
        let r = n.post("/v1/doc", &json!({"topic": T, "doc": doc, "ops": ops}));
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // The document's value (null while the node has none).
    let doc = |n: &Node, doc: &str| {
        let r = n.req("GET", &format!("/v1/doc?topic={T}&doc={doc}"), None);
        if r.status == 200 {
            r.json()["value"].clone()
        } else {
            Value::Null
        }
    };
    let logs = |n: &Node| -> Vec<(u64, u64)> {
        n.get("/v1/topics")["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["topic"] == T).cloned())
            .and_then(|t| t["logs"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|l| {
                (
                    l["base"].as_u64().unwrap_or_default(),
                    l["head_seq"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    let mut a = Node::start(
        "[store]\nprune_interval = \"1s\"\n\n[docs]\ncompaction_interval = \"1s\"\n\n\
         [[retention]]\npattern = \"site/#\"\nmax_events_per_log = 5\n",
    );
    // B's three changes to cfg, made before it meets A: concurrent with all of A's, so
    // they depend on none of them, and B's log (shorter than the window) stays whole.
    let mut b = Node::start("");
    for i in 0..3 {
        change(
            &b,
            "cfg",
            json!([{"op": "set", "path": format!("b{i}"), "value": i}]),
        );
    }
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("A and B connected", 10, || {
        a.get("/v1/status")["peers"] == 1
    });
    // Two documents: 100 + 40 changes by A.
    for i in 0..100 {
        change(
            &a,
            "cfg",
            json!([{"op": "set", "path": format!("k{}", i % 10), "value": i}]),
        );
    }
    for i in 0..40 {
        change(
            &a,
            "inv",
            json!([{"op": "set", "path": format!("item{i}"), "value": i}]),
        );
    }
    wait_for("A to compact the topic behind its snapshots", 30, || {
        let l = logs(&a);
        l.len() == 2 && l.iter().any(|(base, head)| *base > 100 && head - base < 10)
    });
    assert!(a.metric("murmur_doc_snapshots_published_total") >= 2);
    // B holds the whole history (no rule) and everything A published, snapshots too.
    wait_for("B to hold A's snapshots", 20, || {
        b.get("/v1/topics")["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["topic"] == T).cloned())
            .is_some_and(|t| t["events"].as_u64().unwrap_or_default() >= 145)
    });
    let (cfg, inv) = (doc(&b, "cfg"), doc(&b, "inv"));
    assert_eq!(cfg["k9"], 99, "{cfg}");
    assert_eq!(cfg["b2"], 2, "{cfg}");
    assert_eq!(inv["item39"], 39, "{inv}");
    assert_eq!(doc(&a, "cfg"), cfg, "A reads the same after compacting");
    assert_eq!(doc(&a, "inv"), inv);
    // A point in time cannot be rebuilt from a compacted history: said, not wrong.
    let r = a.req(
        "GET",
        &format!("/v1/doc?topic={T}&doc=cfg&at_offset=3"),
        None,
    );
    assert!(
        r.status >= 400 && r.body.contains("compacted"),
        "{} {}",
        r.status,
        r.body
    );
    // B applied A's snapshots as events but never took their content: it holds the
    // whole history. It leaves, so that the node joining next can only learn from A.
    assert_eq!(
        b.metric("murmur_doc_snapshots_applied_total"),
        0,
        "a node with the whole history never takes a snapshot's word"
    );
    assert_eq!(
        b.metric("murmur_doc_snapshots_refused_total"),
        0,
        "true snapshots pass"
    );
    b.stop();
    // After a crash (no snapshot written at shutdown), from A's own store: the round
    // wrote its documents' local snapshots before the changes they cover went. (A's
    // cfg changes are all pruned, and what is left of cfg, B's, depends on none of
    // them: nothing here would say that anything is missing.)
    a.kill();
    a.spawn();
    assert_eq!(doc(&a, "cfg"), cfg);
    assert_eq!(doc(&a, "inv"), inv);

    // C joins after the compaction, knowing only A, with no rules of its own.
    let c = Node::start("");
    let dial = c.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    let got = common::try_wait_for(60, || {
        let _ = c.post("/v1/sync", &json!({}));
        std::thread::sleep(Duration::from_millis(300));
        // (B's log starts over at C only once A's snapshots are held there: the
        // round after the one that brought them.)
        doc(&c, "cfg") == cfg && doc(&c, "inv") == inv && logs(&c).len() == 2
    });
    assert!(
        got,
        "C did not get the documents: cfg {} inv {}\ntopics {}\nA's topics {}\n{}",
        doc(&c, "cfg"),
        doc(&c, "inv"),
        c.get("/v1/topics"),
        a.get("/v1/topics"),
        c.log()
    );
    // Only the window of history came: A's log starts past seq 0, no log holds more
    // than the window and the snapshots.
    let held = logs(&c);
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().any(|(base, _)| *base > 100), "{held:?}");
    assert!(held.iter().all(|(base, head)| head - base < 10), "{held:?}");
    assert!(c.metric("murmur_doc_snapshots_applied_total") >= 1);
    assert_eq!(c.metric("murmur_doc_snapshots_refused_total"), 0);
    // Changes after the compaction build on what the snapshots hold, both ways.
    change(
        &a,
        "cfg",
        json!([{"op": "set", "path": "after", "value": "yes"}]),
    );
    change(
        &c,
        "inv",
        json!([{"op": "set", "path": "from_c", "value": 1}]),
    );
    wait_for("A to apply C's change", 30, || {
        let _ = a.post("/v1/sync", &json!({}));
        std::thread::sleep(Duration::from_millis(300));
        doc(&a, "inv")["from_c"] == 1
    });
    wait_for(
        "C to apply A's new change on top of the snapshot",
        30,
        || {
            let _ = c.post("/v1/sync", &json!({}));
            std::thread::sleep(Duration::from_millis(300));
            doc(&c, "cfg")["after"] == "yes"
        },
    );
    let now = doc(&c, "cfg");
    assert_eq!(now["k9"], 99, "{now}");
    assert_eq!(doc(&c, "cfg")["missing"], Value::Null);
    // Publishing a snapshot by hand is refused.
    let r = a.post(
        "/v1/events",
        &json!({"topic": T, "data": "x", "content_type": "application/vnd.murmur.doc-snapshot"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    for mut n in [a, c] {
        stop_and_verify(&mut n);
    }
}

/// Two nodes compacting the same document topic do not make each other publish rounds
/// forever: each other's snapshots are not news. Once both compacted, an idle topic
/// gets no more snapshots.
#[test]
fn compacting_nodes_go_quiet_on_an_idle_document_topic() {
    const CONFIG: &str = "[store]\nprune_interval = \"1s\"\n\n[docs]\ncompaction_interval = \"1s\"\n\n\
         [[retention]]\npattern = \"site/#\"\nmax_events_per_log = 1\n";
    let a = Node::start(CONFIG);
    let b = Node::start(CONFIG);
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("A and B connected", 10, || {
        a.get("/v1/status")["peers"] == 1
    });
    // Two documents: a round is two snapshot events, so a rule keeping the newest
    // event of each log always wants to cut past the first of the other's.
    for (n, who) in [(&a, "a"), (&b, "b")] {
        for doc in ["cfg", "inv"] {
            for i in 0..5 {
                let r = n.post(
                    "/v1/doc",
                    &json!({"topic": "site/1", "doc": doc, "ops": [{"op": "set", "path": who, "value": i}]}),
                );
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }
    }
    let published = |n: &Node| n.metric("murmur_doc_snapshots_published_total");
    wait_for("both nodes to compact", 30, || {
        published(&a) > 0 && published(&b) > 0
    });
    // Settled: a few intervals with no new snapshot on either.
    let mut last = (published(&a), published(&b));
    let settled = common::try_wait_for(30, || {
        std::thread::sleep(Duration::from_secs(4));
        let now = (published(&a), published(&b));
        let quiet = now == last;
        last = now;
        quiet
    });
    assert!(settled, "still publishing snapshots: {last:?}");
    for n in [&a, &b] {
        let d = n.get("/v1/doc?topic=site/1&doc=cfg");
        assert_eq!(
            (d["value"]["a"].as_u64(), d["value"]["b"].as_u64()),
            (Some(4), Some(4)),
            "{d}"
        );
    }
}
