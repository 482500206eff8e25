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
prune_interval = "1s"

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
    publish_batch(&a, "status/d1", 40);
    publish_batch(&a, "sensors/d1/t", 200);
    publish_batch(&a, "config/site", 20);
    publish_batch(&a, "other/x", 30);
    // B (no retention) gets everything before A prunes much: it dials A at once.
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
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
        line.contains(" 50 ") && line.contains("(150 pruned)"),
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

    // Rounds both ways with B, which holds everything: nothing comes back.
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
        "no pruned event was pulled back"
    );
    assert_eq!(b.events(), 290, "B keeps what it holds");

    // Live events still flow into the pruned logs' topics, and are pruned in turn.
    publish_batch(&b, "status/d2", 5);
    wait_for("A to receive B's status and keep the latest", 20, || {
        held(&a, "status/d2") == vec!["status/d2-4".to_string()]
    });

    // The pruned store verifies clean.
    a.stop();
    let v = a.cli(&["verify"]);
    assert!(
        v.status.success(),
        "{}\n{}",
        common::stdout(&v),
        common::stderr(&v)
    );
}
