//! Multi-host scenarios: real daemons in network namespaces joined by a bridge (see
//! `common/netns.rs`). Needs root; all traffic stays inside the namespaces.
//!
//! The tests run one at a time ([`one_at_a_time`]): each starts up to thirty daemons,
//! and several measure what a host lives with (a disk budget sampled through a
//! million-event run, publish→follow latency) on a machine of two cores, which two
//! labs at once would share.

mod common;

use std::time::{Duration, Instant};

use common::netns::{Lab, root_or_skip};
use common::{Node, wait_for};
use serde_json::{Value, json};

/// Held by every test for its whole run: the labs do not share the machine.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LABS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it leaves nothing behind that the next needs.
    LABS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// mDNS on, libp2p on the host's own interfaces (inside its namespace), quick rounds.
fn config(_: usize) -> String {
    "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"2s\"\n"
        .into()
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
    let _lab = one_at_a_time();
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
    let _lab = one_at_a_time();
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

fn connected_to(n: &Node, peer_id: &str) -> bool {
    n.get("/v1/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["peer"] == peer_id)
}

#[test]
fn five_hosts_in_a_kademlia_chain_meet_through_discovery() {
    let _lab = one_at_a_time();
    if !root_or_skip("five_hosts_in_a_kademlia_chain_meet_through_discovery") {
        return;
    }
    // mDNS off: host i knows only host i-1's address.
    let mut lab = Lab::empty(5);
    for i in 0..5 {
        let boot = if i == 0 {
            String::new()
        } else {
            format!("\"{}\"", lab.multiaddr(i - 1))
        };
        let cfg = format!(
            "[p2p]\nmdns = false\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nbootstrap = [{boot}]\nanti_entropy_interval = \"2s\"\n"
        );
        lab.start(i, &cfg);
    }
    let first = lab.node(0).get("/v1/peers")["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The ends of the chain were never told about each other.
    wait_for("host 4 to meet host 0 through Kademlia", 60, || {
        connected_to(lab.node(4), &first)
    });
    for i in 0..5 {
        publish(lab.node(i), &format!("chain/h{i}"), 200);
    }
    wait_for("every host to hold all 1,000 events", 60, || {
        all_equal(&lab, 1000)
    });
}

#[test]
fn a_killed_host_catches_up_100k_events_after_restart() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_killed_host_catches_up_100k_events_after_restart") {
        return;
    }
    let mut lab = Lab::new(3, config);
    wait_for("a connected lab", 60, || {
        (0..3).all(|i| lab.node(i).get("/v1/status")["peers"] == 2)
    });
    publish(lab.node(0), "fleet/before", 500);
    wait_for("host 2 to have the first events", 30, || {
        lab.node(2).events() == 500
    });
    lab.node_mut(2).kill();
    publish(lab.node(0), "fleet/a", 50_000);
    publish(lab.node(1), "fleet/b", 50_000);
    wait_for("hosts 0 and 1 to agree", 60, || {
        lab.node(0).events() == 100_500 && lab.node(1).events() == 100_500
    });
    let t0 = Instant::now();
    lab.node_mut(2).spawn();
    wait_for("the restarted host to catch up 100,000 events", 120, || {
        lab.node(2).events() == 100_500
    });
    let took = t0.elapsed();
    assert_eq!(heads(lab.node(2)), heads(lab.node(0)));
    eprintln!(
        "restarted host caught up 100,000 events in {took:?} ({:.0} events/s)",
        100_000.0 / took.as_secs_f64()
    );
}

#[test]
fn a_lossy_slow_link_still_delivers_every_event_exactly_once() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_lossy_slow_link_still_delivers_every_event_exactly_once") {
        return;
    }
    let lab = Lab::new(3, config);
    wait_for("a connected lab", 60, || {
        (0..3).all(|i| lab.node(i).get("/v1/status")["peers"] == 2)
    });
    // Host 2's link: 10% loss each way, 1 Mbit/s each way.
    lab.impair(2, 10, "1mbit");
    let follower = std::process::Command::new(common::binary())
        .arg("--data-dir")
        .arg(&lab.node(2).dir)
        .args(["sub", "lossy/#", "-n", "400", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the follower", 10, || {
        lab.node(2).get("/v1/status")["followers"] == 1
    });
    // Continuous publishing on two hosts: 20 events/s each for 10 s.
    for k in 0..200 {
        for h in 0..2 {
            let r = lab.node(h).post(
                "/v1/events",
                &json!({"topic": format!("lossy/h{h}"), "data": format!("h{h}-{k}")}),
            );
            assert_eq!(r.status, 200);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = follower.wait_with_output().unwrap();
    let got: Vec<String> = common::payloads(&out.stdout);
    assert_eq!(got.len(), 400);
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 400, "every event exactly once");
    for h in 0..2 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|d| d.starts_with(&format!("h{h}-")))
            .collect();
        for (k, d) in mine.iter().enumerate() {
            assert_eq!(**d, format!("h{h}-{k}"), "each author's events in order");
        }
    }
}

#[test]
fn a_non_member_without_the_fleet_key_cannot_connect() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_non_member_without_the_fleet_key_cannot_connect") {
        return;
    }
    let key = common::psk_file();
    let path = key.path().display().to_string();
    let lab = Lab::new(3, |i| {
        let psk = if i < 2 {
            format!("psk_file = \"{path}\"\n")
        } else {
            String::new()
        };
        format!(
            "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"2s\"\n{psk}"
        )
    });
    wait_for("the two members to connect", 60, || {
        lab.node(0).get("/v1/status")["peers"] == 1
    });
    publish(lab.node(0), "fleet/private", 50);
    publish(lab.node(2), "fleet/outsider", 50);
    wait_for("the members to replicate", 30, || {
        lab.node(1).events() == 50
    });
    // The outsider finds them by mDNS and dials, but never gets through the handshake.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.node(2).get("/v1/status")["peers"], 0);
    assert_eq!(
        lab.node(2).events(),
        50,
        "the outsider holds only its own events"
    );
    assert_eq!(
        lab.node(0).events(),
        50,
        "the members hold none of the outsider's"
    );
    assert!(
        lab.node(0).log().contains("private fleet"),
        "the daemon says so"
    );
}

#[test]
fn a_shared_document_converges_after_conflicting_edits_across_a_partition() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_shared_document_converges_after_conflicting_edits_across_a_partition") {
        return;
    }
    let lab = Lab::new(3, config);
    wait_for("a connected lab", 60, || {
        (0..3).all(|i| lab.node(i).get("/v1/status")["peers"] == 2)
    });
    let edit = |i: usize, ops: Value| {
        let r = lab.node(i).post(
            "/v1/doc",
            &json!({"topic": "site/plan", "doc": "floor1", "ops": ops}),
        );
        assert_eq!(r.status, 200, "host {i}: {}", r.body);
    };
    let doc = |i: usize| {
        let r = lab
            .node(i)
            .req("GET", "/v1/doc?topic=site/plan&doc=floor1", None);
        (r.status == 200).then(|| r.json()["value"].clone())
    };
    let history = |i: usize| {
        lab.node(i)
            .get("/v1/doc/history?topic=site/plan&doc=floor1")["changes"]
            .as_array()
            .map_or(0, Vec::len)
    };
    edit(
        0,
        json!([
            {"op": "set", "path": "sensors", "value": {"t1": "north", "t2": "south"}},
            {"op": "set", "path": "order", "value": ["a", "b"]},
            {"op": "text", "path": "note", "value": "floor plan"},
            {"op": "counter", "path": "visits"}
        ]),
    );
    wait_for("the base document on every host", 60, || {
        (0..3).all(|i| doc(i) == doc(0))
    });
    lab.cut(2);
    // Both sides write the same keys, insert at the same list position, edit the same
    // text and count visits; 20 more changes each while apart.
    for i in 0..3 {
        edit(
            i,
            json!([
                {"op": "set", "path": "sensors/t1", "value": format!("moved by {i}")},
                {"op": "insert", "path": "order", "index": 1, "value": format!("h{i}")},
                {"op": "splice", "path": "note", "index": 5, "delete": 0, "insert": format!("[{i}]")},
                {"op": "increment", "path": "visits"}
            ]),
        );
        for k in 0..20 {
            edit(
                i,
                json!([{"op": "set", "path": format!("h{i}k{k}"), "value": k}]),
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(
        doc(2),
        doc(0),
        "the partitioned host has not seen the others' edits"
    );
    lab.heal(2);
    let total = 1 + 3 * 21;
    wait_for(
        "identical documents and full histories everywhere",
        120,
        || {
            let first = doc(0).map(|v| v.to_string());
            (0..3).all(|i| doc(i).map(|v| v.to_string()) == first && history(i) == total)
        },
    );
    let v = doc(0).unwrap();
    assert_eq!(v["visits"], 3, "concurrent increments add up: {v}");
    let order: Vec<&str> = v["order"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(order.len(), 5, "every insert kept: {order:?}");
    for i in 0..3 {
        assert!(order.contains(&format!("h{i}").as_str()), "{order:?}");
        assert!(
            v["note"].as_str().unwrap().contains(&format!("[{i}]")),
            "{v}"
        );
    }
    assert!(
        v["sensors"]["t1"].as_str().unwrap().starts_with("moved by"),
        "{v}"
    );
    assert_eq!(v["sensors"]["t2"], "south");
}

#[test]
fn a_host_whose_clock_runs_a_day_ahead_neither_stops_nor_drags_the_fleet() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_host_whose_clock_runs_a_day_ahead_neither_stops_nor_drags_the_fleet") {
        return;
    }
    let day_ms = 86_400_000u64;
    let lab = Lab::new(3, |i| {
        let mut c = config(i);
        if i == 0 {
            c.push_str("[clock]\noffset = \"24h\"\n");
        }
        c
    });
    wait_for("a connected lab", 60, || {
        (0..3).all(|i| lab.node(i).get("/v1/status")["peers"] == 2)
    });
    for i in 0..3 {
        publish(lab.node(i), &format!("fleet/h{i}"), 100);
    }
    // Its events replicate like anyone's: a wrong clock stops nobody.
    wait_for("all 300 events on every host", 60, || all_equal(&lab, 300));
    // The others publish after receiving them: their clocks stayed on their own walls.
    for i in 1..3 {
        publish(lab.node(i), &format!("fleet/h{i}"), 10);
    }
    wait_for("all 320 events on every host", 60, || all_equal(&lab, 320));
    let skewed = lab.node(0).get("/v1/status")["author"].clone();
    for i in 1..3 {
        let st = lab.node(i).get("/v1/status");
        let clock = &st["clock"];
        let wall = clock["wall_ms"].as_u64().unwrap();
        let last = clock["last_ms"].as_u64().unwrap();
        assert!(
            last <= wall + 60_000,
            "host {i}: clock dragged to {last}, wall {wall}"
        );
        assert!(clock["ahead_events"].as_u64().unwrap() >= 100, "{clock}");
        assert_eq!(clock["worst"]["author"], skewed, "{clock}");
        let ahead = clock["worst"]["ahead_ms"].as_u64().unwrap();
        assert!(
            ahead > day_ms - 120_000 && ahead < day_ms + 120_000,
            "{clock}"
        );
        let out = common::stdout(&lab.node(i).cli(&["status"]));
        assert!(out.contains("worst:"), "{out}");
        // Its newest own event carries a sane time.
        let log = lab
            .node(i)
            .get(&format!("/v1/log?topic=fleet/h{i}&from=100&limit=100"));
        let newest = log["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["time"]["ms"].as_u64())
            .unwrap_or_else(|| panic!("no events: {log}"));
        assert!(
            newest <= wall + 60_000,
            "host {i}: stamped {newest}, wall {wall}"
        );
    }
    // The metric says the same.
    let m = lab.node(1).req("GET", "/metrics", None).body;
    assert!(m.contains("murmur_clock_ahead_events_total"), "{m}");
}

/// The heads of the topics of `n` that start with `prefix`.
fn heads_of(n: &Node, prefix: &str) -> Vec<Value> {
    heads(n)
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["topic"].as_str().is_some_and(|t| t.starts_with(prefix)))
        .cloned()
        .collect()
}

/// Where a byte is flipped in the victim's database.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The middle of the largest WAL (events acknowledged but in no SST yet).
    Wal,
    /// The middle of the largest SST.
    Sst,
    /// A record of the MANIFEST that CURRENT names.
    Manifest,
    /// The first byte of CURRENT.
    Current,
}

fn db_file(db: &std::path::Path, wanted: impl Fn(&str) -> bool) -> std::path::PathBuf {
    std::fs::read_dir(db)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or_else(|| panic!("no such file in {}", db.display()))
}

/// Flips one byte of the database of `dir` and returns the damaged file.
fn damage(dir: &std::path::Path, what: Damage) -> std::path::PathBuf {
    let db = dir.join("db");
    let (file, at) = match what {
        Damage::Wal => {
            let f = db_file(&db, |n| n.ends_with(".log"));
            let len = std::fs::metadata(&f).unwrap().len() as usize;
            // Off the last bytes of a 32 KiB block (trailers RocksDB skips as padding).
            let at = (len / 2) & !0x7fff | 0x4000;
            (f, at.min(len - 1))
        }
        Damage::Sst => {
            let f = db_file(&db, |n| n.ends_with(".sst"));
            let len = std::fs::metadata(&f).unwrap().len() as usize;
            (f, len / 2)
        }
        Damage::Manifest => {
            let name = std::fs::read_to_string(db.join("CURRENT")).unwrap();
            let f = db.join(name.trim());
            let bytes = std::fs::read(&f).unwrap();
            let needle = b"BytewiseComparator";
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("the comparator's name in the MANIFEST");
            (f, at + 3)
        }
        Damage::Current => (db.join("CURRENT"), 0),
    };
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    file
}

/// A byte flipped in the WAL, an SST, the MANIFEST or CURRENT of a node, killed while
/// its acknowledged events sat in both SSTs and the WAL: the node never runs on with
/// fewer events without saying so, the message names the file and `murmur repair`,
/// and after the repair the node gets every acknowledged event back from its peer on
/// another host, then publishes after them without forking its own log.
#[test]
fn a_damaged_store_is_refused_repaired_and_refilled_from_a_peer() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_damaged_store_is_refused_repaired_and_refilled_from_a_peer") {
        return;
    }
    let mut lab = Lab::new(2, config);
    for what in [Damage::Wal, Damage::Sst, Damage::Manifest, Damage::Current] {
        let topic = format!("damage/{what:?}").to_lowercase();
        lab.start(0, &config(0));
        wait_for("the two hosts to meet", 60, || {
            lab.node(0).get("/v1/status")["peers"] == 1
        });
        // 1,000 events flushed to SSTs by a clean stop, 1,000 more only in the WAL.
        publish(lab.node(0), &topic, 1000);
        assert!(lab.node_mut(0).stop().success());
        lab.node_mut(0).spawn();
        publish(lab.node(0), &format!("{topic}/tail"), 1000);
        wait_for("the peer to hold all 2,000 events", 60, || {
            lab.node(1).topic_events(&topic) == 1000
                && lab.node(1).topic_events(&format!("{topic}/tail")) == 1000
        });
        let heads_before = heads_of(lab.node(0), &topic);
        assert_eq!(heads_before.len(), 2, "{heads_before:?}");
        lab.node_mut(0).kill();
        let dir = lab.node(0).dir.clone();
        let file = damage(&dir, what);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();

        // The daemon refuses to start, naming the file; or, for an SST block that no
        // startup check reads, it starts and its scan after start names the file (in
        // the status and the metric), and so does `murmur verify`.
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.hosts[0].ns])
            .arg(common::binary())
            .args(["daemon", "--data-dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let socket = dir.join("murmur.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut problem = None;
        let refused = loop {
            assert!(
                Instant::now() < deadline,
                "{what:?}: neither refused nor flagged"
            );
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if let Ok(r) = common::request(&socket, "GET", "/v1/status", None)
                && let Some(p) = r.json()["store_problem"].as_str()
            {
                problem = Some(p.to_owned());
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if refused {
            let out = child.wait_with_output().unwrap();
            let err = common::stderr(&out);
            assert!(!out.status.success(), "{what:?}: {err}");
            assert!(
                err.contains("damaged") && err.contains(&name) && err.contains("murmur repair"),
                "{what:?}: {err}"
            );
        } else {
            let problem = problem.unwrap();
            assert!(
                problem.contains(&name) && problem.contains("murmur repair"),
                "{what:?}: {problem}"
            );
            let m = common::request(&socket, "GET", "/metrics", None)
                .unwrap()
                .body;
            assert!(m.contains("murmur_store_damaged 1"), "{m}");
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
            let v = lab.node(0).cli(&["verify"]);
            let report = format!("{}{}", common::stdout(&v), common::stderr(&v));
            assert!(
                !v.status.success() && report.contains(&name),
                "{what:?}: verify did not name {name}: {report}"
            );
        }

        let r = lab.node(0).cli(&["repair"]);
        let report = format!("{}{}", common::stdout(&r), common::stderr(&r));
        assert!(r.status.success(), "{what:?}: {report}");
        let kept = report
            .lines()
            .find_map(|l| {
                l.strip_prefix("kept ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{what:?}: no kept count: {report}"));
        lab.node_mut(0).spawn();
        wait_for(
            "the repaired node to hold every acknowledged event again",
            60,
            || {
                heads_of(lab.node(0), &topic) == heads_before
                    && lab
                        .node(0)
                        .get("/v1/status")
                        .get("publishing_held")
                        .is_none()
            },
        );
        let r = lab
            .node(0)
            .post("/v1/events", &json!({"topic": topic, "data": "after"}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["seq"], 1000, "{}", r.body);
        wait_for("the peer to get the new event", 30, || {
            lab.node(1).topic_events(&topic) == 1001
        });
        assert_eq!(lab.node(1).get("/v1/status")["forks"], 0);
        assert_eq!(lab.node(0).get("/v1/status")["forks"], 0);
        eprintln!(
            "{what:?} ({name}): {}; repair kept {kept} events, the peer sent back the rest",
            if refused {
                "refused to start"
            } else {
                "started; its scan (status, metric) and verify named it"
            },
        );
    }
}

/// Held by the labs that start many daemons or measure live latency, so they do not
/// run at once on this 2-core machine: 30 daemons starting beside the many-topics lab
/// starved its watching host, whose live push then stalled for up to ~25 s (see the
/// closing note of issue 14; not yet explained).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Events a node stored from each path: (gossip, sync).
fn received_by_path(n: &Node) -> (u64, u64) {
    (
        n.metric("murmur_events_received_total{path=\"gossip\"}"),
        n.metric("murmur_events_received_total{path=\"sync\"}"),
    )
}

/// Publishes `count` events at `per_sec` from the hosts in turn, topic chosen by
/// `topic(k)` and published by the host that owns it (`owner(k)`), while a follower on
/// host `watch` (which publishes none) timestamps arrivals. Returns the publish→follow
/// latencies in ms, sorted, and how many arrived.
fn live_latencies(
    lab: &Lab,
    watch: usize,
    count: usize,
    per_sec: f64,
    topic: impl Fn(usize) -> String,
    owner: impl Fn(usize) -> usize,
) -> Vec<f64> {
    use std::io::BufRead;
    let mut follower = std::process::Command::new(common::binary())
        .arg("--data-dir")
        .arg(&lab.node(watch).dir)
        .args(["sub", "#", "-n", &count.to_string(), "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the follower", 10, || {
        lab.node(watch).get("/v1/status")["followers"] == 1
    });
    let out = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap();
            seen.push((v["data"].as_str().unwrap().to_owned(), Instant::now()));
        }
        seen
    });
    let start = Instant::now();
    let mut sent = std::collections::HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / per_sec);
    for k in 0..count {
        let due = start + gap * k as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let h = owner(k);
        assert_ne!(h, watch, "the watching host publishes nothing");
        let data = format!("live-{k}");
        sent.insert(data.clone(), Instant::now());
        let r = lab
            .node(h)
            .post("/v1/events", &json!({"topic": topic(k), "data": data}));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Everything has 60 s to arrive; the follower then ends (it stops after `count`).
    let deadline = Instant::now() + Duration::from_secs(60);
    while follower.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let seen = reader.join().unwrap();
    let mut lat: Vec<f64> = seen
        .iter()
        .filter_map(|(d, at)| {
            sent.get(d)
                .map(|t| at.duration_since(*t).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    lat
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// What each host of the many-topics lab saw, to tell a lost push from a slow sync.
fn many_topics_report(lab: &Lab) -> String {
    let mut why = String::new();
    for i in 0..5 {
        let n = lab.node(i);
        let m = n.req("GET", "/metrics", None).body;
        let st = n.get("/v1/status");
        why.push_str(&format!(
            "host {i}: {} events, {} topics\n",
            st["events"], st["topics"]
        ));
        for l in m.lines().filter(|l| {
            l.starts_with("murmur_api_refused_total")
                || l.starts_with("murmur_sync_rounds_total")
                || l.starts_with("murmur_sync_sessions")
                || l.starts_with("murmur_events_received_total")
                || l.starts_with("murmur_commit_seconds_sum")
                || l.starts_with("murmur_commits_total")
                || l.starts_with("murmur_duplicates_total")
                || l.starts_with("murmur_push_")
                || l.starts_with("murmur_p2p_gossipsub_failed_messages")
                || l.starts_with("murmur_p2p_gossipsub_mesh_peer_counts")
                || l.starts_with("murmur_p2p_gossipsub_topic_msg_recv_counts")
                || l.starts_with("murmur_p2p_gossipsub_topic_msg_published")
                || l.starts_with("murmur_p2p_gossipsub_topic_msg_sent_counts")
                || l.starts_with("murmur_p2p_gossipsub_removed_queued")
                || l.starts_with("murmur_p2p_gossipsub_queue_size_sum")
                || l.starts_with("murmur_p2p_gossipsub_queue_size_count")
                || l.starts_with("murmur_p2p_events_waiting")
                || l.starts_with("murmur_p2p_held_back")
        }) {
            why.push_str(&format!("  {l}\n"));
        }
        why.push_str(&format!("  peers {}\n", n.get("/v1/peers")["peers"]));
        for l in n.log().lines().filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("disconnected")
                || l.contains(" connected ")
        }) {
            why.push_str(&format!("  | {l}\n"));
        }
    }
    why
}

#[test]
fn two_thousand_topics_on_five_hosts_still_travel_by_live_push() {
    let _lab = one_at_a_time();
    if !root_or_skip("two_thousand_topics_on_five_hosts_still_travel_by_live_push") {
        return;
    }
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // Rounds every 30 s, as on a real fleet: anything sync delivers comes late and shows.
    let cfg = |_: usize| {
        "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"30s\"\n"
            .to_string()
    };
    let lab = Lab::new(5, cfg);
    wait_for("every host to see the other four", 60, || {
        (0..5).all(|i| lab.node(i).get("/v1/status")["peers"] == 4)
    });
    // 2,000 devices, one topic each; hosts 0-3 own 500 each, host 4 watches.
    const DEVICES: usize = 2000;
    let device_topic = |d: usize| format!("sensors/{d:04}/temp");
    let owner = |d: usize| d % 4;
    for h in 0..4 {
        let evs: Vec<Value> = (0..DEVICES)
            .filter(|d| owner(*d) == h)
            .map(|d| json!({"topic": device_topic(d), "data": "first"}))
            .collect();
        let r = lab
            .node(h)
            .post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let all_topics = || (0..5).all(|i| lab.node(i).get("/v1/status")["topics"] == DEVICES as u64);
    if !common::try_wait_for(120, all_topics) {
        panic!(
            "not every host holds the 2,000 topics\n{}",
            many_topics_report(&lab)
        );
    }
    for i in 0..5 {
        assert_eq!(
            lab.node(i).get("/v1/replication")["channels"],
            json!(["murmur:#", "murmur:$fleet/health"]),
            "one channel for 2,000 topics (and the fleet's heartbeats)"
        );
    }

    // The reference: one topic, 20 events/s for 30 s. As long as the run on 2,000
    // topics, so that both meet an anti-entropy round (every 30 s, over all 2,001
    // topics, which stalls a host of this lab for up to ~100 ms): a 10 s reference
    // often met none, and the comparison then measured the round, not the topics.
    let one = live_latencies(&lab, 4, 600, 20.0, |_| "one/topic".into(), |k| k % 4);
    assert_eq!(one.len(), 600, "every event on the one topic arrived");

    // 2,000 topics, 20 events/s for 30 s, each on the next device's topic.
    let before: Vec<(u64, u64)> = (0..5).map(|i| received_by_path(lab.node(i))).collect();
    let stride = 7; // co-prime with 2,000: visits devices all over the fleet
    let many = live_latencies(
        &lab,
        4,
        600,
        20.0,
        |k| device_topic(k * stride % DEVICES),
        |k| owner(k * stride % DEVICES),
    );
    if many.len() != 600 {
        panic!(
            "{} of 600 events on the 2,000 topics arrived\n{}",
            many.len(),
            many_topics_report(&lab)
        );
    }
    wait_for("every host to hold every event", 60, || {
        (0..5).all(|i| lab.node(i).events() == (DEVICES + 1200) as u64)
    });
    let (mut gossip, mut sync) = (0, 0);
    // Per host, so that a failure says where the push was lost.
    let mut by_host = String::new();
    for (i, (g0, s0)) in before.iter().enumerate() {
        let (g, s) = received_by_path(lab.node(i));
        gossip += g - g0;
        sync += s - s0;
        by_host.push_str(&format!(" host {i} {}/{};", g - g0, s - s0));
    }
    let share = gossip as f64 / (gossip + sync) as f64;
    if share < 0.99 {
        eprintln!("{}", many_topics_report(&lab));
    }
    let (p50_one, p99_one) = (pct(&one, 0.5), pct(&one, 0.99));
    let (p50_many, p99_many) = (pct(&many, 0.5), pct(&many, 0.99));
    eprintln!(
        "many topics: {gossip} deliveries by gossip, {sync} by sync ({:.2}% live); \
         publish→follow p50/p99: one topic {p50_one:.1}/{p99_one:.1} ms, \
         2,000 topics {p50_many:.1}/{p99_many:.1} ms",
        share * 100.0
    );
    // Each of the 600 events reaches the four hosts that did not publish it.
    assert_eq!(
        gossip + sync,
        600 * 4,
        "each event stored once per other host"
    );
    assert!(
        share >= 0.99,
        "only {:.2}% came by live push (gossip/sync by host:{by_host})",
        share * 100.0
    );
    assert!(
        p99_many <= 3.0 * p99_one + 50.0,
        "p99 with 2,000 topics {p99_many:.1} ms against {p99_one:.1} ms with one"
    );
}

#[test]
fn a_peer_that_freezes_mid_catch_up_is_noticed_and_another_peer_finishes_it() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_peer_that_freezes_mid_catch_up_is_noticed_and_another_peer_finishes_it") {
        return;
    }
    // Explicit dials only; periodic rounds far apart, so only the watchdog can rescue C.
    let cfg = |_: usize| {
        "[p2p]\nmdns = false\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\n\
         anti_entropy_interval = \"600s\"\nsync_timeout = \"3s\"\nlag_watch = \"5s\"\n"
            .to_string()
    };
    let mut lab = Lab::new(3, cfg);
    let (a, b, c) = (0, 1, 2);
    // C's link is slow (8 mbit/s) from the start: whichever way it meets A (our dial,
    // or Kademlia learning A through B), catching up takes seconds.
    lab.throttle(c, "8mbit");
    let dial = |from: usize, to: usize| {
        let addr = lab.multiaddr(to);
        let o = lab.node(from).cli(&["dial", &addr]);
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    // B and C meet while both are empty: their first rounds find nothing to do.
    dial(c, b);
    wait_for("C and B connected", 20, || {
        lab.node(c).get("/v1/status")["peers"] == 1
    });
    // A holds a backlog, and B takes all of it.
    const N: u64 = 30_000;
    publish(lab.node(a), "big/t", N as usize);
    dial(b, a);
    wait_for("B to hold A's backlog", 60, || {
        lab.node(b).topic_events("big/t") == N
    });
    // A freezes in the middle of C's catch-up (SIGSTOP: connections stay open, nothing
    // answers).
    dial(c, a);
    wait_for("C to be part way through", 30, || {
        lab.node(c).topic_events("big/t") > 0
    });
    let pid = lab.node(a).pid();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let frozen = Instant::now();
    let had = lab.node(c).topic_events("big/t");
    assert!(
        had < N,
        "C finished before A froze ({had}); slow its link more"
    );
    let rounds = |outcome: &str| {
        lab.node(c).metric(&format!(
            "murmur_sync_rounds_total{{outcome=\"{outcome}\"}}"
        ))
    };
    // The watchdog fires within lag_watch (5 s) of the last progress, plus its 1 s tick.
    wait_for("the lag watchdog to fire", 20, || rounds("lagging") >= 1);
    let fired = frozen.elapsed();
    // `murmur status` (GET /v1/replication) shows the stalled peer meanwhile.
    let repl = lab.node(c).get("/v1/replication");
    let stalled = repl["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["topic"] == "big/t")
        .flat_map(|t| t["peers"].as_array().unwrap().clone())
        .any(|p| p["stalled_secs"].as_u64().is_some());
    // …and C completes from B while A stays frozen.
    wait_for("C to complete from B", 120, || {
        lab.node(c).topic_events("big/t") == N
    });
    let completed = frozen.elapsed();
    let failed = rounds("failed");
    eprintln!(
        "stuck sync: C had {had} of {N} when A froze; watchdog fired after {:.1} s, \
         C complete from B after {:.1} s; rounds failed {failed}, lagging {}",
        fired.as_secs_f64(),
        completed.as_secs_f64(),
        rounds("lagging")
    );
    assert!(
        // 5 s of no progress, then the watchdog's once-a-second check; slack for a
        // loaded machine running the other labs at the same time.
        fired <= Duration::from_secs(5 + 5),
        "the watchdog fired after {fired:?}, configured 5 s"
    );
    assert!(stalled, "status shows the stalled peer: {repl}");
    assert!(
        failed >= 1,
        "the rounds with the frozen peer failed and count"
    );
    assert!(
        lab.node(c).log().contains("have not shrunk"),
        "the watchdog logs a warning"
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    lab.node_mut(a).kill();
}

#[test]
fn thirty_hosts_with_kademlia_only_find_the_few_that_want_a_topic() {
    let _lab = one_at_a_time();
    if !root_or_skip("thirty_hosts_with_kademlia_only_find_the_few_that_want_a_topic") {
        return;
    }
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // mDNS off; every host knows only host 0. Each dials at most 2 peers it learns from
    // the DHT, so the hosts that want fleet/t (6 of 30: hosts 1-6) rarely meet by
    // chance. Host 0, the bootstrap host, does not want it.
    const HOSTS: usize = 30;
    let wants = |i: usize| (1..=6).contains(&i);
    let cfg = |i: usize, boot: &str| {
        let topics = if wants(i) { "fleet/t" } else { "other/#" };
        format!(
            "[p2p]\nmdns = false\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nbootstrap = [{boot}]\n\
             topics = [\"{topics}\"]\nlinks = 2\ntopic_links = 3\nanti_entropy_interval = \"5s\"\n"
        )
    };
    let mut lab = Lab::empty(HOSTS);
    lab.start(0, &cfg(0, ""));
    let boot = format!("\"{}\"", lab.multiaddr(0));
    for i in 1..HOSTS {
        lab.start(i, &cfg(i, &boot));
    }
    let started = Instant::now();
    let ids: Vec<String> = (0..HOSTS)
        .map(|i| {
            lab.node(i).get("/v1/peers")["peer_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let interested_peers = |i: usize| -> usize {
        lab.node(i).get("/v1/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| (1..=6).any(|j| p["peer"] == ids[j]))
            .count()
    };
    // Topic-aware discovery: each interested host gets 3 connected peers that want it.
    wait_for(
        "each interested host to have 3 interested peers",
        90,
        || (1..=6).all(|i| interested_peers(i) >= 3),
    );
    let linked = started.elapsed();
    // Two of them publish 100 events each.
    let t0 = Instant::now();
    for k in 0..100 {
        for h in [1, 2] {
            let r = lab.node(h).post(
                "/v1/events",
                &json!({"topic": "fleet/t", "data": format!("h{h}-{k}")}),
            );
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    wait_for("every interested host to hold all 200 events", 60, || {
        (1..=6).all(|i| lab.node(i).topic_events("fleet/t") == 200)
    });
    let delivered = t0.elapsed();
    // Uninterested hosts store none, though they carried the DHT and the bootstrap.
    for i in (0..HOSTS).filter(|i| !wants(*i)) {
        assert_eq!(
            lab.node(i).topic_events("fleet/t"),
            0,
            "host {i} stored fleet/t"
        );
    }
    let lookups: u64 = (1..=6)
        .map(|i| lab.node(i).metric("murmur_topic_lookups_total"))
        .sum();
    let by_topic: usize = (1..=6)
        .map(|i| {
            lab.node(i).get("/v1/peers")["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["how"] == "topic")
                .count()
        })
        .sum();
    eprintln!(
        "partial interest, 30 hosts: 3 interested peers each after {:.1} s, {lookups} lookups, \
         {by_topic} connections made by topic lookups; 200 events at all 6 after {:.1} s",
        linked.as_secs_f64(),
        delivered.as_secs_f64()
    );
    // In a lab this small, Kademlia's own queries connect most hosts (a bootstrap query
    // asks the ~20 closest), so lookups are often not needed here: the simulator shows
    // them at 1,000 and 10,000 nodes, and p2p/tests/rendezvous.rs shows a lookup dialing
    // a provider that nothing else connected to.
}

/// Runs the NAT lab: a relay, and one host in each of two NATed sites that know only the
/// relay (as bootstrap and as the relay to reserve at). They find each other through
/// the relay's Kademlia, connect through a circuit, and dcutr tries a hole punch.
/// Returns the time from B's start to the first of A's events at B, and the path each
/// site host reports for the other once both hold everything.
fn nat_lab(symmetric: bool) -> (Duration, String, String) {
    use common::netns::NatLab;
    let mut lab = NatLab::new(symmetric);
    let base = "[p2p]\nmdns = false\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"5s\"\n";
    // The relay replicates none of the sites' topics: what they get, they get from each
    // other (through its circuits, or directly), not from a replica in the middle.
    lab.start(
        0,
        &format!("{base}relay_server = true\ntopics = [\"relay/#\"]\n"),
    );
    let relay = lab.multiaddr(0);
    let site = format!("{base}bootstrap = [\"{relay}\"]\nrelays = [\"{relay}\"]\n");
    lab.start(1, &site);
    publish(lab.node(1), "site/a", 100);
    let t0 = Instant::now();
    lab.start(2, &site);
    if !common::try_wait_for(60, || lab.node(2).topic_events("site/a") > 0) {
        panic!(
            "B never got A's events through the NATs\n--- relay\n{}\n--- A\n{}\n--- B\n{}",
            lab.node(0).log(),
            lab.node(1).log(),
            lab.node(2).log()
        );
    }
    let first = t0.elapsed();
    publish(lab.node(2), "site/b", 100);
    wait_for("both sites to hold both sites' events", 60, || {
        lab.node(1).topic_events("site/b") == 100 && lab.node(2).topic_events("site/a") == 100
    });
    let path = |from: usize, to: usize| -> String {
        let id = lab.node(to).get("/v1/peers")["peer_id"].clone();
        lab.node(from).get("/v1/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == id)
            .map_or("not connected".into(), |p| {
                p["path"].as_str().unwrap().to_owned()
            })
    };
    // Give a hole punch its chance (dcutr runs right after the relayed connection).
    if !symmetric {
        let _ = common::try_wait_for(15, || path(1, 2) == "punched" || path(2, 1) == "punched");
    }
    // The metrics say the same as `murmur peers`.
    let want = if symmetric { "relayed" } else { "punched" };
    let series = format!("murmur_p2p_peers_by_path{{path=\"{want}\"}}");
    assert!(lab.node(1).metric(&series) >= 1, "{series} on A");
    if !symmetric {
        assert!(
            lab.node(1)
                .metric("murmur_p2p_hole_punches_total{result=\"ok\"}")
                + lab
                    .node(2)
                    .metric("murmur_p2p_hole_punches_total{result=\"ok\"}")
                >= 1
        );
    }
    if std::env::var_os("MURMUR_NAT_LOGS").is_some() {
        for i in 0..3 {
            eprintln!("--- host {i}\n{}", lab.node(i).log());
        }
    }
    (first, path(1, 2), path(2, 1))
}

#[test]
fn two_sites_behind_nat_meet_through_a_relay_and_replicate_both_ways() {
    let _lab = one_at_a_time();
    if !root_or_skip("two_sites_behind_nat_meet_through_a_relay_and_replicate_both_ways") {
        return;
    }
    let (first, ab, ba) = nat_lab(false);
    eprintln!(
        "NAT lab (port-preserving masquerade): first event through after {:.1} s; A sees B {ab}, B sees A {ba}",
        first.as_secs_f64()
    );
    assert_eq!(
        (ab.as_str(), ba.as_str()),
        ("punched", "punched"),
        "a port-preserving NAT lets the hole punch through"
    );
    let (first, ab, ba) = nat_lab(true);
    eprintln!(
        "NAT lab (symmetric, fully-random ports): first event through after {:.1} s; A sees B {ab}, B sees A {ba}",
        first.as_secs_f64()
    );
    assert_eq!(
        (ab.as_str(), ba.as_str()),
        ("relayed", "relayed"),
        "no hole through a symmetric NAT"
    );
}

/// Retention on a small disk: a host whose data dir is a 64 MiB tmpfs, with
/// `store.max_disk_mb = 32`, receives 1,000,000 events of 256 bytes (about 570 MB
/// stored whole) from a publisher on another host. Its database, sampled every 100 ms
/// through the run, stays under the budget; it keeps replicating to the end (it holds
/// the publisher's newest events, and every log's head); and `murmur verify` passes.
#[test]
fn a_host_on_a_64_mib_disk_with_a_32_mib_budget_takes_a_million_events() {
    let _lab = one_at_a_time();
    if !root_or_skip("a_host_on_a_64_mib_disk_with_a_32_mib_budget_takes_a_million_events") {
        return;
    }
    let tmp = common::Tmpfs::mount("64m");
    let data = tmp.path().join("node");
    std::fs::create_dir(&data).unwrap();
    let mut lab = Lab::empty(2);
    lab.start(0, &config(0));
    lab.start_at(
        1,
        &data,
        &format!(
            "{}[store]\nmax_disk_mb = 32\nwrite_buffer_mb = 4\n",
            config(1)
        ),
    );
    wait_for("the hosts to meet", 30, || {
        lab.node(1).get("/v1/status")["peers"] == 1
    });

    // Sample the small host's database through the run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, db) = (stop.clone(), data.join("db"));
        std::thread::spawn(move || {
            let mut most = 0u64;
            let mut samples = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(common::dir_bytes(&db));
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (most, samples)
        })
    };
    let payload = "x".repeat(240);
    let t0 = Instant::now();
    const BATCHES: usize = 200;
    const PER: usize = 5000;
    for b in 0..BATCHES {
        let evs: Vec<Value> = (0..PER)
            .map(|i| json!({"topic": format!("sensors/{}", i % 50), "data": format!("{b:03}{i:05}{payload}")}))
            .collect();
        let r = lab
            .node(0)
            .post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "publishing took too long"
        );
    }
    let published = t0.elapsed();
    // It keeps replicating to the end: every log's head is the publisher's.
    let tops = |n: &Node| -> Vec<(String, String)> {
        heads_of(n, "sensors/")
            .iter()
            .flat_map(|t| {
                t["logs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| (t["topic"].to_string(), l["head_id"].to_string()))
            })
            .collect()
    };
    let want = tops(lab.node(0));
    wait_for("the small host to hold every log's head", 300, || {
        tops(lab.node(1)) == want
    });
    let caught_up = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most, samples) = sampler.join().unwrap();
    let n = lab.node(1);
    let st = n.get("/v1/status");
    let pruned = n.metric("murmur_pruned_events_total{rule=\"store.max_disk_mb\"}");
    eprintln!(
        "1,000,000 events published in {published:?}, small host caught up after {caught_up:?}; \
         its database peaked at {:.1} MiB of a 32 MiB budget ({samples} samples); stored {}, held {}, pruned {pruned}; gossip/sync {:?}",
        most as f64 / (1 << 20) as f64,
        st["events"],
        st["held"],
        received_by_path(n),
    );
    if most > 32 << 20 {
        // What the budget did: passes that pruned nothing, and every warning.
        let log = n.log();
        let passes = log.matches("pruned the oldest events").count();
        eprintln!("{passes} budget passes");
        for l in log
            .lines()
            .filter(|l| {
                l.contains(" events=0 ")
                    || l.contains("nothing left")
                    || l.contains(" WARN ")
                    || l.contains(" ERROR ")
            })
            .take(60)
        {
            eprintln!("  | {l}");
        }
    }
    assert!(most <= 32 << 20, "{most} bytes on disk");
    assert!(pruned > 500_000, "{pruned}");
    assert_eq!(st["disk_full"], Value::Null, "{st}");
    lab.node_mut(1).stop();
    let v = lab.node(1).cli(&["verify"]);
    assert!(
        v.status.success(),
        "{}\n{}",
        common::stdout(&v),
        common::stderr(&v)
    );
}

/// Host `i` drops every packet to and from `addrs` (nftables), or takes the rule away.
fn split(lab: &Lab, i: usize, addrs: &[&str]) {
    let ns = &lab.hosts[i].ns;
    let nft = |args: &[&str]| {
        let mut a = vec!["netns", "exec", ns.as_str(), "nft"];
        a.extend_from_slice(args);
        common::netns::run("ip", &a);
    };
    nft(&["add", "table", "inet", "split"]);
    let set = format!("{{ {} }}", addrs.join(", "));
    for (hook, dir) in [("input", "saddr"), ("output", "daddr")] {
        let chain = format!("{{ type filter hook {hook} priority 0; }}");
        nft(&["add", "chain", "inet", "split", hook, &chain]);
        let rule = format!("ip {dir} {set} drop");
        let mut a = vec!["add", "rule", "inet", "split", hook];
        a.extend(rule.split_whitespace());
        nft(&a);
    }
}

fn unsplit(lab: &Lab, i: usize) {
    let ns = &lab.hosts[i].ns;
    common::netns::run(
        "ip",
        &[
            "netns", "exec", ns, "nft", "delete", "table", "inet", "split",
        ],
    );
}

/// A host's config in a closed fleet's lab: mDNS, rounds every 2 s, the pre-shared key
/// at `psk`, the fleet's `root`, and `extra` sections.
fn closed_fleet(psk: &std::path::Path, root: &murmur_core::Keypair, extra: &str) -> String {
    format!(
        "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"2s\"\npsk_file = \"{}\"\n[fleet]\nroot = \"{}\"\n{extra}",
        psk.display(),
        root.author()
    )
}

/// A closed fleet with the pre-shared key, on five hosts: the fifth has the key and the
/// fleet's root but no certificate, and never gets in. Host 2 is revoked while the
/// fleet is split in two by nftables (hosts 0, 1 | 2, 3) and keeps publishing to host
/// 3, which does not know. After the heal every host refuses its new events and has
/// dropped its connections; host 3 takes back what it stored of the thief's after the
/// revocation, and says so; what the thief wrote before its revocation stays.
#[test]
fn a_device_revoked_while_the_fleet_is_split_is_shut_out_everywhere_after_the_heal() {
    use murmur_core::fleet::Rule;
    use murmur_core::testing::{grant, member_cert, root_rule};
    let _lab = one_at_a_time();
    if !root_or_skip(
        "a_device_revoked_while_the_fleet_is_split_is_shut_out_everywhere_after_the_heal",
    ) {
        return;
    }
    let key = common::psk_file();
    let root = murmur_core::Keypair::from_seed(&[0xC4; 32]);
    let lab = Lab::new(5, |_| closed_fleet(key.path(), &root, ""));
    let now = common::now_ms;
    let ids: Vec<String> = (0..5).map(|i| lab.node(i).id()).collect();
    for (i, id) in ids.iter().enumerate().take(4) {
        let cert = member_cert(
            &root,
            id.parse().unwrap(),
            &["sensor"],
            now() - 1000,
            now() + 3_600_000,
        );
        lab.node(i).fleet_join(&cert);
    }
    lab.node(0).fleet_entry(&root_rule(
        &root,
        grant("sensor", &["sensors/#"], false),
        now(),
    ));
    // The members find each other by mDNS (those that met before joining were kept
    // out for 10 s) and learn the grant.
    wait_for(
        "the four members to be fully connected and granted",
        120,
        || {
            (0..4).all(|i| {
                lab.node(i).get("/v1/status")["peers"] == 3
                    && !lab.node(i).get("/v1/fleet")["grants"]
                        .as_array()
                        .unwrap()
                        .is_empty()
            })
        },
    );
    // The fifth, with the key and the root but no certificate, is refused.
    assert_eq!(lab.node(4).get("/v1/status")["peers"], 0);
    assert!(
        (0..4).any(|i| lab
            .node(i)
            .metric("murmur_fleet_peers_refused_total{reason=\"no_credentials\"}")
            >= 1),
        "a member refused the fifth host"
    );

    let thief = ids[2].as_str();
    for i in 0..5 {
        let r = lab.node(2).post(
            "/v1/events",
            &json!({"topic": "sensors/c", "data": format!("before{i}")}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    wait_for("the thief's first readings on every member", 30, || {
        (0..4).all(|i| lab.node(i).log_len("sensors/c", thief) == 5)
    });
    assert_eq!(lab.node(4).log_len("sensors/c", thief), 0);

    // Split: hosts 0 and 1 hear nothing of 2 and 3. Revoked on 0's side.
    let other_side = ["10.77.0.3", "10.77.0.4"];
    split(&lab, 0, &other_side);
    split(&lab, 1, &other_side);
    lab.node(0).fleet_entry(&root_rule(
        &root,
        Rule::Revoke {
            subject: thief.parse().unwrap(),
            reason: "stolen".into(),
            effective_ms: now(),
        },
        now(),
    ));
    wait_for("host 1 to know of the revocation", 30, || {
        lab.node(1).get("/v1/fleet")["revocations"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..5 {
        let r = lab.node(2).post(
            "/v1/events",
            &json!({"topic": "sensors/c", "data": format!("after{i}")}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    wait_for(
        "host 3 to take the new readings (it does not know)",
        30,
        || lab.node(3).log_len("sensors/c", thief) == 10,
    );
    assert_eq!(
        lab.node(3).get("/v1/fleet")["revocations"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Heal.
    unsplit(&lab, 0);
    unsplit(&lab, 1);
    wait_for("host 3 to learn of the revocation", 60, || {
        lab.node(3).get("/v1/fleet")["revocations"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let thief_peer = lab.node(2).get("/v1/status")["peer_id"].clone();
    wait_for("every member to have dropped the thief", 60, || {
        [0, 1, 3].iter().all(|&i| {
            !lab.node(i).get("/v1/peers")["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["peer"] == thief_peer)
        })
    });
    // Host 3 takes back what it took before it knew.
    wait_for("host 3 to take back the thief's later readings", 60, || {
        lab.node(3).log_len("sensors/c", thief) == 5
    });
    assert_eq!(
        lab.node(3).metric("murmur_fleet_events_taken_back_total"),
        5
    );
    assert_eq!(
        lab.node(3).get("/v1/fleet")["revocations"][0]["taken_back"],
        5
    );
    let status = lab.node(3).cli(&["fleet", "status"]);
    assert!(
        common::stdout(&status).contains("(5 events taken back here)"),
        "{}",
        common::stdout(&status)
    );
    // The thief's new events after the heal go nowhere.
    for i in 0..3 {
        let _ = lab.node(2).post(
            "/v1/events",
            &json!({"topic": "sensors/c", "data": format!("later{i}")}),
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lab.node(0).log_len("sensors/c", thief), 5);
    assert_eq!(lab.node(1).log_len("sensors/c", thief), 5);
    assert_eq!(
        lab.node(3).log_len("sensors/c", thief),
        5,
        "host 3 took back what it took before it knew, and took nothing after"
    );
    for i in [0, 1, 3] {
        assert_eq!(
            lab.node(i).metric("murmur_fleet_events_taken_back_total") > 0,
            i == 3
        );
    }
    assert_eq!(
        lab.node(2).get("/v1/status")["peers"],
        0,
        "the thief has no peer left"
    );
}

/// A closed fleet with the pre-shared key, on three hosts and a fourth namespace:
/// - host 2 has the `sensor` role only: its own `cmd/reboot` gets a local 403 naming
///   the missing grant;
/// - a forger in the fourth namespace, built from murmur-p2p with a real sensor
///   certificate and the PSK, gets past admission and forges what a daemon would have
///   refused: its validly signed events on `cmd/reboot`, by gossip and in answer to
///   each host's sync rounds. Every host it reaches refuses both, stores nothing of
///   them and does not ban it;
/// - host 2 is then given a new certificate (it replaces the first everywhere, by the
///   policy log) that expires 8 s later: afterwards the other hosts have dropped it
///   and refuse it again when it dials, and its publishes get 403.
#[test]
fn a_sensor_is_refused_commands_by_every_host_and_shut_out_when_its_certificate_expires() {
    use murmur_core::sync::Message;
    use murmur_core::testing::{chain, grant, member_cert, root_rule};
    use murmur_core::{Seq, VersionVector, vv};
    use murmur_p2p::{Command as Net, Event as NetEvent};
    let _lab = one_at_a_time();
    if !root_or_skip(
        "a_sensor_is_refused_commands_by_every_host_and_shut_out_when_its_certificate_expires",
    ) {
        return;
    }
    let key = common::psk_file();
    let psk_text = std::fs::read_to_string(key.path()).unwrap();
    let psk = murmur_p2p::psk::parse(&psk_text).unwrap();
    let root = murmur_core::Keypair::from_seed(&[0xC6; 32]);
    let cfg = closed_fleet(key.path(), &root, "[clock]\nmax_drift = \"1s\"\n");
    let mut lab = Lab::empty(4);
    for i in 0..3 {
        lab.start(i, &cfg);
    }
    let now = common::now_ms();
    let issued = now - 1000;
    for i in 0..3 {
        let roles: &[&str] = if i == 2 {
            &["sensor"]
        } else {
            &["sensor", "ops"]
        };
        let id = lab.node(i).id().parse().unwrap();
        lab.node(i)
            .fleet_join(&member_cert(&root, id, roles, issued, now + 3_600_000));
    }
    for (role, topic) in [("sensor", "sensors/#"), ("ops", "cmd/#")] {
        lab.node(0)
            .fleet_entry(&root_rule(&root, grant(role, &[topic], false), now));
    }
    wait_for("the three hosts to be connected and granted", 60, || {
        (0..3).all(|i| {
            lab.node(i).get("/v1/status")["peers"] == 2
                && lab.node(i).get("/v1/fleet")["grants"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 2
        })
    });

    // The sensor's own command: a local 403 that names the missing grant.
    let r = lab.node(2).post(
        "/v1/events",
        &json!({"topic": "cmd/reboot", "data": "by a sensor"}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("no grant to publish on cmd/reboot"),
        "{}",
        r.body
    );
    // A command from ops: hosts 0 and 1 hold cmd/reboot, so their rounds ask peers.
    let r = lab.node(0).post(
        "/v1/events",
        &json!({"topic": "cmd/reboot", "data": "by ops"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("the command on host 1", 30, || {
        lab.node(1).topic_events("cmd/reboot") == 1
    });

    // The forger: seed 78 is its network identity and its event key.
    let seed = [78u8; 32];
    let forger = murmur_core::Keypair::from_seed(&seed);
    let cert = member_cert(&root, forger.author(), &["sensor"], issued, now + 3_600_000);
    let targets: Vec<String> = (0..2).map(|i| lab.multiaddr(i)).collect();
    let (admitted_by, hung_up) = common::netns::in_netns(&lab.hosts[3].ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = murmur_p2p::Config {
                listen: vec!["/ip4/0.0.0.0/tcp/7470".parse().unwrap()],
                bootstrap: targets.iter().map(|a| a.parse().unwrap()).collect(),
                mdns: false,
                psk: Some(psk),
                admission: Some(cert.encode()),
                ..murmur_p2p::Config::default()
            };
            let (net, mut events, lp) =
                murmur_p2p::spawn(seed, &cfg, &mut murmur_p2p::Registry::default()).unwrap();
            tokio::spawn(lp.run());
            let mut admitted_by = std::collections::BTreeSet::new();
            let mut hung_up = false;
            // Forged runs gossiped so far.
            let mut runs = 0u32;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
                let cmds = match ev {
                    NetEvent::Credentials { peer, .. } => vec![Net::Admit(peer)],
                    NetEvent::Connected(peer) => {
                        admitted_by.insert(peer);
                        vec![Net::Subscribe("murmur:#".into())]
                    }
                    NetEvent::Disconnected(peer) if admitted_by.contains(&peer) => {
                        hung_up = true;
                        Vec::new()
                    }
                    NetEvent::Sync {
                        peer,
                        msg: Message::Hello { topic, .. },
                    } if topic.as_str() == "cmd/reboot" => {
                        let forged = chain(&forger, "cmd/reboot", 3, "w");
                        let mut theirs = VersionVector::new();
                        theirs.insert(
                            forger.author(),
                            vv::Entry {
                                seq: Seq(2),
                                id: forged[2].id(),
                            },
                        );
                        vec![Net::Sync {
                            peer,
                            msg: Message::Vector { topic, vv: theirs },
                        }]
                    }
                    // Asked for it: the forged log by sync, and then by gossip (after
                    // the pull, so that the host's refusal by sync comes first: once
                    // refused, a log is not pulled again until the policy changes).
                    NetEvent::Sync {
                        peer,
                        msg:
                            Message::Want {
                                req, topic, author, ..
                            },
                    } if author == forger.author() => {
                        let mut cmds = vec![Net::Sync {
                            peer,
                            msg: Message::Events {
                                req,
                                topic,
                                author,
                                run: bytes::Bytes::from(
                                    murmur_core::run::encode(&chain(&forger, "cmd/reboot", 3, "w"))
                                        .unwrap(),
                                ),
                            },
                        }];
                        if runs <= 6 {
                            runs += 1;
                            // A different run each time: gossipsub drops a repeat.
                            let forged = chain(&forger, "cmd/reboot", 3, &format!("g{runs}"));
                            cmds.push(Net::Publish {
                                topic: "murmur:#".into(),
                                data: murmur_core::run::encode(&forged).unwrap(),
                            });
                        }
                        cmds
                    }
                    _ => Vec::new(),
                };
                for c in cmds {
                    net.send(c).await;
                }
            }
            let admitted_by: Vec<String> = admitted_by.iter().map(ToString::to_string).collect();
            (admitted_by, hung_up)
        })
    });
    assert!(!hung_up, "a host banned a member for writes it refused");
    // Hosts 0 and 1 (which it dialed) refuse by both paths; host 2, if it found the
    // forger through them, refuses what it was offered. None stores any of it.
    for i in 0..3 {
        let n = lab.node(i);
        let peer_id = n.get("/v1/status")["peer_id"].as_str().unwrap().to_owned();
        let reached = admitted_by.contains(&peer_id);
        assert!(
            reached || i == 2,
            "host {i} admitted the forger's real certificate"
        );
        assert_eq!(
            n.topic_events("cmd/reboot"),
            1,
            "host {i}: only the ops command"
        );
        let refused: Vec<u64> = ["gossip", "sync"]
            .iter()
            .map(|path| {
                n.metric(&format!(
                    "murmur_fleet_events_refused_total{{reason=\"no_grant\",path=\"{path}\"}}"
                ))
            })
            .collect();
        if i < 2 {
            assert!(
                refused.iter().all(|r| *r >= 1),
                "host {i} refused by gossip and sync: {refused:?}\n{}",
                n.log()
            );
        } else if reached {
            assert!(refused.iter().any(|r| *r >= 1), "host 2: {refused:?}");
        }
    }

    // Host 2's new certificate, good for 8 s more: past its expiry (and the drift
    // limit) it is dropped, refused when it dials, and answered 403.
    let renewed = common::now_ms();
    let id2 = lab.node(2).id().parse().unwrap();
    lab.node(2).fleet_join(&member_cert(
        &root,
        id2,
        &["sensor"],
        renewed,
        renewed + 8_000,
    ));
    wait_for("hosts 0 and 1 to drop host 2", 60, || {
        (0..2).all(|i| lab.node(i).get("/v1/status")["peers"] == 1)
            && lab.node(2).get("/v1/status")["peers"] == 0
    });
    let r = lab
        .node(2)
        .post("/v1/events", &json!({"topic": "sensors/t", "data": "late"}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
    let _ = lab.node(2).cli(&["dial", &lab.multiaddr(0)]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.node(2).get("/v1/status")["peers"],
        0,
        "an expired node must not get back in"
    );
    assert!(
        (0..2).any(|i| lab
            .node(i)
            .metric("murmur_fleet_peers_refused_total{reason=\"expired\"}")
            >= 1),
        "a host counted the expired certificate"
    );
}

/// Host `i`'s fleet view: node id → state.
fn fleet_view(n: &Node) -> std::collections::BTreeMap<String, String> {
    n.get("/v1/fleet/nodes")["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|v| {
            (
                v["node"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every host's view, printed for a failure.
fn fleet_views(lab: &Lab, ids: &[String]) -> String {
    let short = |id: &str| {
        ids.iter()
            .position(|x| x == id)
            .map_or("?".into(), |i| format!("h{i}"))
    };
    (0..lab.hosts.len())
        .map(|i| {
            let v = fleet_view(lab.node(i));
            let states: Vec<String> = v
                .iter()
                .map(|(id, s)| format!("{}={s}", short(id)))
                .collect();
            format!("h{i} sees {}: {}", v.len(), states.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn ten_hosts_see_the_whole_fleet_and_two_partitioned_away_go_stale_then_come_back() {
    let _lab = one_at_a_time();
    if !root_or_skip(
        "ten_hosts_see_the_whole_fleet_and_two_partitioned_away_go_stale_then_come_back",
    ) {
        return;
    }
    const N: usize = 10;
    const INTERVAL: Duration = Duration::from_secs(2);
    let lab = Lab::new(N, |i| {
        format!(
            "{}[fleet]\nopen = true\nheartbeat_interval = \"{}s\"\n",
            config(i),
            INTERVAL.as_secs()
        )
    });
    let ids: Vec<String> = (0..N).map(|i| lab.node(i).id()).collect();
    wait_for("every host connected to at least 3 others", 60, || {
        (0..N).all(|i| lab.node(i).get("/v1/status")["peers"].as_u64() >= Some(3))
    });
    // Within 3 heartbeat intervals of a connected lab, every host lists all 10, up.
    let t0 = Instant::now();
    let all_up = |lab: &Lab| {
        (0..N).all(|i| {
            let v = fleet_view(lab.node(i));
            v.len() == N && ids.iter().all(|id| v.get(id).is_some_and(|s| s == "up"))
        })
    };
    while !all_up(&lab) {
        assert!(
            t0.elapsed() < INTERVAL * 3,
            "not every host lists all {N} up within 3 heartbeat intervals:\n{}",
            fleet_views(&lab, &ids)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "fleet view: all {N} hosts list all {N} up {:?} after the lab connected",
        t0.elapsed()
    );
    // A node's own row carries its heartbeat: the next one counts its peers.
    let me = || {
        lab.node(0).get("/v1/fleet/nodes")["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["this_node"] == true)
            .cloned()
            .unwrap_or_default()
    };
    wait_for("host 0's heartbeat to count its peers", 10, || {
        me()["heartbeat"]["peer_count"].as_u64() >= Some(3)
    });
    let me = me();
    assert_eq!(me["node"], ids[0].as_str(), "{me}");
    assert_eq!(me["heartbeat"]["interval_ms"], 2000, "{me}");

    // Two hosts partitioned away: the other eight mark them stale, and they mark
    // everyone but themselves stale. A node is stale after 3 of its intervals without
    // a heartbeat, so this takes between 3 and 4 intervals (and a poll).
    let away = [N - 2, N - 1];
    for &i in &away {
        lab.cut(i);
    }
    let t1 = Instant::now();
    let split_seen = |lab: &Lab| {
        (0..N).all(|i| {
            let v = fleet_view(lab.node(i));
            v.len() == N
                && ids.iter().enumerate().all(|(j, id)| {
                    let apart =
                        away.contains(&i) != away.contains(&j) || (away.contains(&i) && i != j);
                    v.get(id).map(String::as_str) == Some(if apart { "stale" } else { "up" })
                })
        })
    };
    while !split_seen(&lab) {
        assert!(
            t1.elapsed() < INTERVAL * 6,
            "the partition is not seen everywhere within 6 heartbeat intervals:\n{}",
            fleet_views(&lab, &ids)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "fleet view: the partition was seen on every host {:?} after the cut",
        t1.elapsed()
    );
    // The gauge and the CLI say the same.
    wait_for(
        "murmur_fleet_nodes{state=\"stale\"} 2 on host 0",
        10,
        || lab.node(0).metric("murmur_fleet_nodes{state=\"stale\"}") == 2,
    );
    // The CLI reads the same view (a heartbeat late on two busy cores may flip one
    // row for a moment: a few tries).
    let mut text = String::new();
    let shows_split = common::try_wait_for(10, || {
        let out = lab.node(0).cli(&["fleet", "nodes", "--problems"]);
        text = common::stdout(&out);
        out.status.code() == Some(1)
            && text.contains("10 nodes: 8 up, 2 stale")
            && away.iter().all(|&i| text.contains(&ids[i][..16]))
    });
    eprintln!("host 0, `murmur fleet nodes --problems` during the split:\n{text}");
    assert!(shows_split, "{text}");

    let t2 = Instant::now();
    for &i in &away {
        lab.heal(i);
    }
    wait_for("all 10 up on every host after the heal", 90, || {
        all_up(&lab)
    });
    eprintln!(
        "fleet view: all {N} up on every host {:?} after the heal",
        t2.elapsed()
    );
    let mut text = String::new();
    let clear = common::try_wait_for(10, || {
        let out = lab.node(N - 1).cli(&["fleet", "nodes", "--problems"]);
        text = common::stdout(&out);
        out.status.code() == Some(0)
    });
    assert!(clear, "{text}");
}

/// The `points` of the polyline in the chart `<svg … data-series="{series}">` of a DOM.
fn chart_points(dom: &str, series: &str) -> Vec<(f64, f64)> {
    let Some(at) = dom.find(&format!("data-series=\"{series}\"")) else {
        return Vec::new();
    };
    let svg = &dom[at..dom[at..].find("</svg>").map_or(dom.len(), |e| at + e)];
    let Some(p) = svg.find("<polyline") else {
        return Vec::new();
    };
    let poly = &svg[p..];
    let Some(a) = poly.find("points=\"") else {
        return Vec::new();
    };
    let rest = &poly[a + 8..];
    rest[..rest.find('"').unwrap_or(0)]
        .split_whitespace()
        .filter_map(|xy| {
            let (x, y) = xy.split_once(',')?;
            Some((x.parse().ok()?, y.parse().ok()?))
        })
        .collect()
}

/// Headless Chromium in namespace `ns`, loading `url` for `virtual_ms` of page time:
/// `--dump-dom` (the DOM on stdout), or `--screenshot=FILE`.
fn chromium(ns: &str, url: &str, virtual_ms: u64, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .arg(what)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium (scripts/deps installs it): {e}"));
    assert!(
        out.status.success(),
        "chromium {what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dashboard in a real browser, against a 3-host lab under load: the fleet table
/// lists the three nodes and the publish chart has points of real data. With
/// `MURMUR_SCREENSHOTS=DIR`, it also saves screenshots there (docs/ has the ones the
/// README shows).
#[test]
fn the_dashboard_shows_the_fleet_and_live_charts_in_headless_chromium() {
    let _lab = one_at_a_time();
    if !root_or_skip("the_dashboard_shows_the_fleet_and_live_charts_in_headless_chromium") {
        return;
    }
    let lab = Lab::new(3, |i| {
        let api = if i == 0 {
            "[api]\nhttp_listen = \"127.0.0.1:7480\"\n"
        } else {
            ""
        };
        format!(
            "{}{api}[fleet]\nopen = true\nheartbeat_interval = \"2s\"\n",
            config(i)
        )
    });
    let ids: Vec<String> = (0..3).map(|i| lab.node(i).id()).collect();
    wait_for("host 0's fleet view lists all three", 60, || {
        let v = fleet_view(lab.node(0));
        ids.iter().all(|id| v.get(id).is_some_and(|s| s == "up"))
    });
    let token = std::fs::read_to_string(lab.node(0).dir.join("api.token")).unwrap();
    let url = format!("http://127.0.0.1:7480/#token={}", token.trim());
    // Load, bounded: batches on every host while the browser looks (at most 120 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| lab.node(i).socket()).collect();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t.elapsed() < Duration::from_secs(120)
            {
                for (i, s) in dirs.iter().enumerate() {
                    let evs: Vec<Value> = (0..50)
                        .map(|j| json!({"topic": format!("sensors/h{i}/temp"), "data": format!("{}", k * 50 + j)}))
                        .collect();
                    let body = json!({ "events": evs }).to_string();
                    let _ = common::request(s, "POST", "/v1/events/batch", Some(&body));
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            k
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let dom = chromium(&lab.hosts[0].ns, &url, 20_000, "--dump-dom");
    // Screenshots in real time (virtual time would squeeze the charts' rates):
    // playwright-core drives the same Chromium for 75 s (docs/screenshots/).
    if let Some(dir) = std::env::var_os("MURMUR_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shot = dir.join("dashboard.png");
        let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        let npm = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&tool)
            .status()
            .unwrap();
        assert!(npm.success(), "npm install in {}", tool.display());
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.hosts[0].ns, "node"])
            .arg(tool.join("shoot.mjs"))
            .arg(&url)
            .arg(&shot)
            .arg("75")
            .status()
            .unwrap();
        assert!(st.success(), "docs/screenshots/shoot.mjs failed");
        eprintln!("screenshot: {}", shot.display());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = load.join().unwrap();
    for id in &ids {
        assert!(
            dom.contains(&format!("data-node=\"{id}\"")),
            "the fleet table has no row for {id}:\n{}",
            &dom[..dom.len().min(4000)]
        );
    }
    assert!(
        !dom.contains("token missing or wrong")
            || dom
                .contains("id=\"auth-banner\" class=\"banner banner-auth\" role=\"alert\" hidden"),
        "the page was refused its token"
    );
    let publish = chart_points(&dom, "publish");
    // The chart's zero line is at y = 138 (app.js: top 10 + plot height 128): a point
    // above it is a rate above zero.
    assert!(
        publish.len() >= 2 && publish.iter().any(|p| p.1 < 137.0),
        "the publish chart has no points of real data ({batches} batches published): {publish:?}"
    );
    let peers = chart_points(&dom, "peers");
    assert!(peers.len() >= 2, "the peers chart has no points: {peers:?}");
    eprintln!(
        "dashboard: 3 node rows, publish chart {} points, peers chart {} points",
        publish.len(),
        peers.len()
    );
}
