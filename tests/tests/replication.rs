//! Two real daemons on loopback (mDNS off, explicit dial): backlog catch-up on connect,
//! live delivery both ways, exactly once, and catch-up after a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Node, wait_for};
use serde_json::{Value, json};

fn publish_batch(n: &Node, topic: &str, from: usize, count: usize) {
    let evs: Vec<Value> = (from..from + count)
        .map(|i| json!({"topic": topic, "data": format!("e{i}")}))
        .collect();
    let r = n.post("/v1/events/batch", &json!({ "events": evs }));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn two_nodes_replicate_both_ways_and_catch_up() {
    let a = Node::start("");
    let mut b = Node::start("");
    // A backlog on A before B knows A.
    for k in 0..5 {
        publish_batch(&a, "fleet/a", k * 1000, 1000);
    }
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("B to catch up 5,000 events", 30, || {
        b.topic_events("fleet/a") == 5000
    });

    // Live, both ways; a follower on B sees each of A's new events exactly once.
    let follower = std::process::Command::new(common::binary())
        .arg("--data-dir")
        .arg(&b.dir)
        .args(["sub", "fleet/#", "-n", "300", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the follower", 10, || b.get("/v1/status")["followers"] == 1);
    for i in 0..200 {
        let r = a.post(
            "/v1/events",
            &json!({"topic": "fleet/a", "data": format!("live{i}")}),
        );
        assert_eq!(r.status, 200);
    }
    let t0 = Instant::now();
    publish_batch(&b, "fleet/b", 0, 100);
    // A has never heard of fleet/b: its events come on the `#` channel both are on,
    // well before the periodic round (10 s) would bring them.
    wait_for("A to receive B's events", 20, || {
        a.topic_events("fleet/b") == 100
    });
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "new topic took {:?}",
        t0.elapsed()
    );
    let out = follower.wait_with_output().unwrap();
    let got: Vec<String> = common::payloads(&out.stdout);
    let live: Vec<&String> = got.iter().filter(|d| d.starts_with("live")).collect();
    assert_eq!(
        live.len(),
        200,
        "each live event once: {:?}",
        &got[..got.len().min(20)]
    );
    for (i, d) in live.iter().enumerate() {
        assert_eq!(**d, format!("live{i}"), "A's log order is kept");
    }
    assert_eq!(
        got.iter().filter(|d| d.starts_with('e')).count(),
        100,
        "B's own events once"
    );

    // B goes away; A publishes; B comes back and reconnects by itself: it remembers
    // where A listens (no bootstrap in its config, mDNS off).
    // B received A's live events by gossip: counted per protocol.
    let mb = b.req("GET", "/metrics", None).body;
    assert!(
        mb.contains("murmur_p2p_gossip_bytes_total{direction=\"in\"}"),
        "{mb}"
    );
    b.stop();
    let known = std::fs::read_to_string(b.dir.join("peers")).expect("B saved its known peers");
    let a_id = a.get("/v1/peers")["peer_id"].as_str().unwrap().to_owned();
    assert!(known.contains(&a_id), "{known}");
    publish_batch(&a, "fleet/a", 10_000, 1000);
    b.spawn();
    wait_for("B to catch up after restart", 30, || {
        b.topic_events("fleet/a") == 6200
    });
    // Identical logs: same heads on both nodes.
    let heads = |n: &Node| n.get("/v1/topics")["topics"].clone();
    wait_for("identical heads", 20, || heads(&a) == heads(&b));
    // Operators see the replication state per topic and peer.
    b.cli(&["sync"]);
    wait_for("a round for fleet/a in the replication view", 20, || {
        let r = b.get("/v1/replication");
        r["topics"].as_array().unwrap().iter().any(|t| {
            t["topic"] == "fleet/a"
                && t["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["behind"] == 0 && p["connected"] == true)
        })
    });
    let status = String::from_utf8_lossy(&b.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("BEHIND") && status.contains("fleet/a"),
        "{status}"
    );
    let m = b.req("GET", "/metrics", None).body;
    assert!(
        m.contains("murmur_events_received_total{path=\"sync\"}"),
        "{m}"
    );
    // Bytes per protocol: sync frames, gossip payloads, and wire bytes by transport.
    for name in [
        "murmur_p2p_sync_bytes_total{direction=\"in\"}",
        "murmur_p2p_libp2p_bandwidth_bytes_total",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    let peers = b.get("/v1/peers");
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1, "{peers}");
}

#[test]
fn connection_limits_are_enforced() {
    let limited = Node::start(
        "[p2p]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmax_connections = 1\n",
    );
    let first = Node::start("");
    let second = Node::start("");
    let addr = limited.tcp_addr();
    assert!(first.cli(&["dial", &addr]).status.success());
    wait_for("the first peer", 20, || {
        limited.get("/v1/status")["peers"] == 1
    });
    // The second dial reaches the socket but the connection is refused by the limit.
    assert!(second.cli(&["dial", &addr]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(limited.get("/v1/status")["peers"], 1);
    assert_eq!(second.get("/v1/status")["peers"], 0);
    assert_eq!(first.get("/v1/status")["peers"], 1);
}

#[test]
fn interest_can_be_changed_at_runtime_and_is_kept() {
    let a = Node::start("");
    let mut b = Node::start(
        "[p2p]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\ntopics = [\"other/#\"]\n",
    );
    publish_batch(&a, "fleet/x", 0, 100);
    assert!(b.cli(&["dial", &a.tcp_addr()]).status.success());
    wait_for("a connection", 20, || b.get("/v1/status")["peers"] == 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.topic_events("fleet/x"), 0, "not replicated: no interest");

    let add = b.cli(&["topics", "add", "fleet/#"]);
    assert!(add.status.success(), "{}", common::stderr(&add));
    assert!(common::stdout(&add).contains("fleet/#"));
    wait_for("B to pull fleet/x after adding interest", 20, || {
        b.topic_events("fleet/x") == 100
    });
    publish_batch(&a, "fleet/x", 100, 10);
    wait_for("live events too", 20, || b.topic_events("fleet/x") == 110);

    let rm = b.cli(&["topics", "remove", "fleet/#"]);
    assert!(rm.status.success(), "{}", common::stderr(&rm));
    publish_batch(&a, "fleet/x", 110, 10);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        b.topic_events("fleet/x"),
        110,
        "no longer replicated; stored events stay"
    );

    b.stop();
    b.spawn();
    let listing = common::stdout(&b.cli(&["topics"]));
    assert!(
        listing.contains("replicating: other/#") && !listing.contains("fleet/#"),
        "{listing}"
    );
}

#[test]
fn reading_the_interest_changes_nothing() {
    let cfg = |topic: &str| {
        format!(
            "[p2p]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\ntopics = [\"{topic}\"]\n"
        )
    };
    let mut n = Node::start(&cfg("first/#"));
    let listing = common::stdout(&n.cli(&["topics"]));
    assert!(listing.contains("replicating: first/#"), "{listing}");
    let _ = n.get("/v1/interest");
    assert!(
        !n.dir.join("interest").exists(),
        "a read wrote the interest file, which would pin it over the config"
    );
    assert!(!n.log().contains("interest changed"), "{}", n.log());

    // The operator edits the config; the next start must use it.
    n.stop();
    std::fs::write(n.dir.join("murmur.toml"), cfg("second/#")).unwrap();
    n.spawn();
    let listing = common::stdout(&n.cli(&["topics"]));
    assert!(
        listing.contains("replicating: second/#") && !listing.contains("first/#"),
        "{listing}"
    );
}

#[test]
fn a_repaired_node_fetches_its_own_logs_back_and_never_forks_itself() {
    let mut a = Node::start("");
    let mut b = Node::start("");
    publish_batch(&a, "own/x", 0, 1000);
    publish_batch(&a, "own/x", 1000, 1000);
    assert!(b.cli(&["dial", &a.tcp_addr()]).status.success());
    wait_for("B to hold A's 2,000 events", 30, || {
        b.topic_events("own/x") == 2000
    });

    // SIGKILL: the events are acknowledged but only in A's WAL. Flip one byte in it.
    a.kill();
    let wal = std::fs::read_dir(a.dir.join("db"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a WAL file");
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&wal, bytes).unwrap();

    // A refuses to start, naming the damaged file, rather than dropping events quietly.
    let out = std::process::Command::new(common::binary())
        .arg("daemon")
        .arg("--data-dir")
        .arg(&a.dir)
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(
        !out.status.success(),
        "a damaged store must not start: {err}"
    );
    let name = wal.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains("damaged") && err.contains(&name) && err.contains("murmur repair"),
        "{err}"
    );

    // Repair salvages what verifies; A then holds less than it acknowledged.
    let r = a.cli(&["repair"]);
    assert!(r.status.success(), "{}", common::stderr(&r));
    b.stop();
    a.spawn();
    assert!(a.topic_events("own/x") < 2000);
    // With no peer to bring its own log back, A must not sign at a seq it published.
    assert_eq!(a.get("/v1/status")["publishing_held"], true);
    let r = a.post(
        "/v1/events",
        &json!({"topic": "own/x", "data": "too early"}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("own_logs_unconfirmed"), "{}", r.body);

    // B comes back: A fetches its own 2,000 events from B, then publishes after them.
    b.spawn();
    assert!(b.cli(&["dial", &a.tcp_addr()]).status.success());
    wait_for(
        "A to hold its own 2,000 events again, and publish again",
        30,
        || a.topic_events("own/x") == 2000 && a.get("/v1/status").get("publishing_held").is_none(),
    );
    let r = a.post("/v1/events", &json!({"topic": "own/x", "data": "after"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["seq"], 2000, "{}", r.body);
    wait_for("B to get the new event", 20, || {
        b.topic_events("own/x") == 2001
    });
    assert_eq!(b.get("/v1/status")["forks"], 0);
    assert_eq!(a.get("/v1/status")["forks"], 0);
}
