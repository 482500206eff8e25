//! Multi-host scenarios: real daemons in network namespaces joined by a bridge (see
//! `common/netns.rs`). Needs root; all traffic stays inside the namespaces.

mod common;

use std::time::{Duration, Instant};

use common::Node;
use common::netns::{Lab, root_or_skip};
use serde_json::{Value, json};

/// mDNS on, libp2p on the host's own interfaces (inside its namespace), quick rounds.
fn config(_: usize) -> String {
    "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"2s\"\n"
        .into()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn publish(n: &Node, topic: &str, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let evs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"topic": topic, "data": format!("{topic}#{i}")}))
            .collect();
        let r = n.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn heads(n: &Node) -> Value {
    n.get("/v1/topics")["topics"].clone()
}

fn all_equal(lab: &Lab, events: u64) -> bool {
    let first = heads(lab.node(0));
    (0..lab.hosts.len()).all(|i| lab.node(i).events() == events && heads(lab.node(i)) == first)
}

#[test]
fn three_hosts_find_each_other_by_mdns_and_replicate_both_ways() {
    if !root_or_skip("three_hosts_find_each_other_by_mdns_and_replicate_both_ways") {
        return;
    }
    let lab = Lab::new(3, config);
    wait_for("every host to see the other two by mDNS", 60, || {
        (0..3).all(|i| lab.node(i).get("/v1/status")["peers"] == 2)
    });
    for i in 0..3 {
        publish(lab.node(i), &format!("fleet/h{i}"), 100);
    }
    wait_for("all 300 events on every host, identical heads", 60, || {
        all_equal(&lab, 300)
    });
    let peers = lab.node(0).get("/v1/peers");
    assert!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["addr"].as_str().unwrap().contains("/ip4/10.77.0.")),
        "{peers}"
    );
}

#[test]
fn a_partition_heals_and_both_sides_converge() {
    if !root_or_skip("a_partition_heals_and_both_sides_converge") {
        return;
    }
    let lab = Lab::new(3, config);
    wait_for("a connected lab", 60, || {
        (0..3).all(|i| lab.node(i).get("/v1/status")["peers"] == 2)
    });
    lab.cut(2);
    // Both sides of the partition publish thousands of events.
    publish(lab.node(0), "fleet/left", 3000);
    publish(lab.node(1), "fleet/left2", 1000);
    publish(lab.node(2), "fleet/right", 3000);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lab.node(2).events() < 7000,
        "the cut host cannot have everything"
    );
    let t0 = Instant::now();
    lab.heal(2);
    wait_for("identical heads and event sets after healing", 120, || {
        all_equal(&lab, 7000)
    });
    eprintln!(
        "partition healed: 7,000 events converged in {:?}",
        t0.elapsed()
    );
}
