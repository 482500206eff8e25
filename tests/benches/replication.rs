//! Replication benchmark, on real daemons in network namespaces (needs root; all traffic
//! stays inside the namespaces). Prints, in one run: live latency publish → follower on
//! another host (2 and 5 hosts), sustained throughput from one publisher to 4 followers,
//! catch-up of 100,000 and 1,000,000 events beside this machine's one-by-one verification
//! rate, and bytes on the wire per delivered event (received, and received + forwarded).
//!
//! Beside catch-up it measures, in the same run, the raw pipeline a catch-up cannot beat
//! (decode + range verification + one RocksDB write per window, one thread, in this
//! process) and, when `scripts/bench-peers` has installed it, Hypercore 11's catch-up.
//!
//! Run: `scripts/bench` (or `cargo bench -p murmur-tests --bench replication` after
//! `cargo build --release --bins`). `MURMUR_BENCH_QUICK=1` skips the 1,000,000 runs;
//! `MURMUR_BENCH_ONLY=catch-up` runs only the catch-up rows, `MURMUR_BENCH_ONLY=retention`
//! only retention's (publishing and catching up with pruning running, beside the same
//! without it), `MURMUR_BENCH_ONLY=fleet` only the closed fleet's (the same fan-out and
//! catch-up with every event checked against the fleet's policy, beside an open one).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Node;
use common::netns::Lab;
use serde_json::{Value, json};

const PAYLOAD: usize = 256;

fn config(_: usize) -> String {
    "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"2s\"\n[store]\nsync = \"fsync\"\n".into()
}

fn payload(tag: &str, i: usize) -> String {
    let mut s = format!("{tag}#{i}#");
    while s.len() < PAYLOAD {
        s.push(char::from(b'a' + ((s.len() * 7 + i) % 26) as u8));
    }
    s
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish_batches(n: &Node, topic: &str, count: usize) {
    for start in (0..count).step_by(1000) {
        let evs: Vec<Value> = (start..(start + 1000).min(count))
            .map(|i| json!({"topic": topic, "data": payload(topic, i)}))
            .collect();
        let r = n.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn connected(lab: &Lab, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..n).all(|i| lab.node(i).get("/v1/status")["peers"] == (n - 1) as u64) {
        if Instant::now() > deadline {
            for i in 0..n {
                let log = lab.node(i).log();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                eprintln!(
                    "host {i}: {}\n{}",
                    lab.node(i).get("/v1/peers"),
                    tail.join("\n")
                );
            }
            panic!("timed out waiting for a fully connected lab");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follows `pattern` on `node`, recording when each event (by data) arrived.
fn follower(node: &Node, pattern: &str) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut s = UnixStream::connect(node.socket()).expect("socket");
    write!(
        s,
        "GET /v1/follow?pattern={pattern} HTTP/1.1\r\nHost: m\r\n\r\n"
    )
    .expect("request");
    let out = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            if let Some(start) = line.find("{\"offset\"")
                && let Ok(v) = serde_json::from_str::<Value>(&line[start..])
                && let Some(d) = v["data"].as_str()
            {
                out.lock()
                    .expect("lock")
                    .insert(d.to_owned(), Instant::now());
            }
        }
    });
    seen
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Live latency: single events published on host 0, seen by a follower on the last host.
/// Returns p50, p99 (ms) and the bytes that host received per event (everything on its
/// link while the events trickled in: gossip, heartbeats, pings, anti-entropy).
fn live_latency(hosts: usize, count: usize) -> (f64, f64, f64) {
    let lab = Lab::new(hosts, config);
    connected(&lab, hosts);
    let topic = format!("live/{hosts}");
    // Warm up the mesh for this topic.
    publish_batches(lab.node(0), &topic, 10);
    wait_for("warm-up", 30, || lab.node(hosts - 1).events() == 10);
    let seen = follower(lab.node(hosts - 1), &format!("live/{hosts}"));
    std::thread::sleep(Duration::from_millis(300));
    let rx0 = net_bytes(&lab.hosts[hosts - 1].ns).0;
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let data = payload(&format!("lat{hosts}"), i);
        let t = Instant::now();
        let r = lab
            .node(0)
            .post("/v1/events", &json!({"topic": topic, "data": data}));
        assert_eq!(r.status, 200);
        sent.push((data, t));
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for("all live events at the follower", 30, || {
        seen.lock().expect("lock").len() >= count
    });
    let rx = net_bytes(&lab.hosts[hosts - 1].ns).0 - rx0;
    let seen = seen.lock().expect("lock");
    let mut lat: Vec<f64> = sent
        .iter()
        .map(|(d, t)| {
            seen.get(d)
                .map_or(f64::MAX, |r| r.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    (
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        rx as f64 / count as f64,
    )
}

/// The model check (see `simulations/scenarios/model-check.toml`): `hosts` daemons all
/// connected, one event every 5 ms from host 0, followed on every other host. Returns,
/// over events, the p50 of the time until 50%, 99% and 100% of the followers hold it,
/// the p99 of the last, and the bytes each follower received per event.
fn fleet_trickle(hosts: usize, count: usize) -> (f64, f64, f64, f64, f64) {
    let lab = Lab::new(hosts, config);
    connected(&lab, hosts);
    let topic = "model/check";
    publish_batches(lab.node(0), topic, 10);
    wait_for("warm-up", 30, || {
        (1..hosts).all(|i| lab.node(i).events() == 10)
    });
    let seen: Vec<_> = (1..hosts).map(|i| follower(lab.node(i), topic)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let rx0: Vec<u64> = (1..hosts).map(|i| net_bytes(&lab.hosts[i].ns).0).collect();
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let data = payload("model", i);
        let t = Instant::now();
        let r = lab
            .node(0)
            .post("/v1/events", &json!({"topic": topic, "data": data}));
        assert_eq!(r.status, 200);
        sent.push((data, t));
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for("every follower holds every event", 60, || {
        seen.iter().all(|s| s.lock().expect("lock").len() >= count)
    });
    let rx: u64 = (1..hosts)
        .zip(&rx0)
        .map(|(i, r0)| net_bytes(&lab.hosts[i].ns).0 - r0)
        .sum();
    let seen: Vec<_> = seen
        .iter()
        .map(|s| s.lock().expect("lock").clone())
        .collect();
    let (mut t50, mut t99, mut t100) = (Vec::new(), Vec::new(), Vec::new());
    for (d, t) in &sent {
        let mut lat: Vec<f64> = seen
            .iter()
            .map(|s| {
                s.get(d)
                    .map_or(f64::MAX, |r| r.duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect();
        t50.push(pct(&mut lat, 0.5));
        t99.push(pct(&mut lat, 0.99));
        t100.push(pct(&mut lat, 1.0));
    }
    let p100 = pct(&mut t100.clone(), 0.99);
    (
        pct(&mut t50, 0.5),
        pct(&mut t99, 0.5),
        pct(&mut t100, 0.5),
        p100,
        rx as f64 / (hosts - 1) as f64 / count as f64,
    )
}

/// (rx, tx) bytes of host `ns`'s link.
fn net_bytes(ns: &str) -> (u64, u64) {
    let read = |what: &str| {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "cat",
                &format!("/sys/class/net/eth0/statistics/{what}"),
            ])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    (read("rx_bytes"), read("tx_bytes"))
}

/// One publisher, 4 followers: events/s until every follower holds everything, and
/// bytes per event per follower: received, and received + sent (forwarding).
fn fan_out(count: usize) -> (f64, f64, f64) {
    fan_out_in(Lab::new(5, config), count)
}

/// [`fan_out`] on a lab made by the caller (a closed fleet, say).
fn fan_out_in(lab: Lab, count: usize) -> (f64, f64, f64) {
    connected(&lab, 5);
    let before: Vec<(u64, u64)> = (1..5).map(|i| net_bytes(&lab.hosts[i].ns)).collect();
    // What the hosts hold already (a closed fleet's policy log).
    let held: Vec<u64> = (0..5).map(|i| lab.node(i).events()).collect();
    let t0 = Instant::now();
    publish_batches(lab.node(0), "fan/out", count);
    wait_for("every follower to hold every event", 300, || {
        (1..5).all(|i| lab.node(i).events() == held[i] + count as u64)
    });
    let rate = count as f64 / t0.elapsed().as_secs_f64();
    let after: Vec<(u64, u64)> = (1..5).map(|i| net_bytes(&lab.hosts[i].ns)).collect();
    let rx: u64 = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum();
    let tx: u64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
    let m = lab.node(4).req("GET", "/metrics", None).body;
    // Sum of every series of a metric (all label sets).
    let metric = |name: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "(fan-out, one follower: {} events by gossip, {} by sync, {} sync rounds; gossip messages received {} with duplicates, {} without)",
        metric("murmur_events_received_total{path=\"gossip\"}"),
        metric("murmur_events_received_total{path=\"sync\"}"),
        metric("murmur_sync_rounds_total{outcome=\"done\"}"),
        metric("murmur_p2p_gossipsub_topic_msg_recv_counts_unfiltered_total"),
        metric("murmur_p2p_gossipsub_topic_msg_recv_counts_total"),
    );
    let per = |b: u64| b as f64 / 4.0 / count as f64;
    (rate, per(rx), per(rx + tx))
}

/// A node that was away pulls `count` events: (events/s, MB/s of encoded events).
fn catch_up(count: usize) -> (f64, f64) {
    let (rate, mb, _) = catch_up_with("", count);
    (rate, mb)
}

/// [`catch_up`] with `extra` added to the receiving node's `[store]` settings (and any
/// sections after it): (events/s, MB/s, the most bytes its database took on disk,
/// sampled every 50 ms).
fn catch_up_with(extra: &str, count: usize) -> (f64, f64, u64) {
    let lab = Lab::new(2, |i| {
        if i == 1 {
            format!("{}{extra}", config(i))
        } else {
            config(i)
        }
    });
    catch_up_in(lab, count)
}

/// [`catch_up_with`] on a two-host lab made by the caller.
fn catch_up_in(mut lab: Lab, count: usize) -> (f64, f64, u64) {
    connected(&lab, 2);
    let held = lab.node(1).events();
    lab.node_mut(1).kill();
    publish_batches(lab.node(0), "catch/up", count);
    let db = lab.node(1).dir.join("db");
    let t0 = Instant::now();
    lab.node_mut(1).spawn();
    let mut most = 0u64;
    let deadline = t0 + Duration::from_secs(300);
    while lab.node(1).events() != held + count as u64 {
        most = most.max(common::dir_bytes(&db));
        if Instant::now() > deadline {
            let n = lab.node(1);
            let metrics = n.req("GET", "/metrics", None).body;
            let log = n.log();
            panic!(
                "catch-up timed out: {}\n{}\n{}",
                n.get("/v1/status"),
                metrics
                    .lines()
                    .filter(|l| l.starts_with("murmur_pull")
                        || l.starts_with("murmur_pruned")
                        || l.starts_with("murmur_store_disk")
                        || l.starts_with("murmur_sync"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    // Encoded size of one event of this benchmark (signed encoding on the wire).
    let one = murmur_core::testing::chain_with(&murmur_core::testing::key(1), "catch/up", 1, |_| {
        bytes::Bytes::from(payload("catch/up", 0))
    })[0]
        .bytes()
        .len() as f64;
    (count as f64 / secs, count as f64 * one / secs / 1e6, most)
}

/// One node publishing `count` events on 50 topics in batches of 1,000 (one client):
/// events/s until the last is acknowledged, and the events retention pruned meanwhile.
fn publish_rate(config: &str, count: usize) -> (f64, u64) {
    let n = Node::start(&format!("[store]\nsync = \"fsync\"\n{config}"));
    let t0 = Instant::now();
    for start in (0..count).step_by(1000) {
        let evs: Vec<Value> = (start..(start + 1000).min(count))
            .map(|i| json!({"topic": format!("sensors/{}", i % 50), "data": payload("p", i)}))
            .collect();
        let r = n.post("/v1/events/batch", &json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let rate = count as f64 / t0.elapsed().as_secs_f64();
    let pruned = n
        .req("GET", "/metrics", None)
        .body
        .lines()
        .filter(|l| l.starts_with("murmur_pruned_events_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    (rate, pruned)
}

/// Retention's cost, in one run: publishing with a rule pruning every second and with
/// a disk budget, against publishing with neither; and a catch-up into a node with a
/// disk budget against one without.
fn retention_rows(quick: bool) {
    let count = if quick { 200_000 } else { 500_000 };
    let rule = "prune_interval = \"1s\"\n\n[[retention]]\npattern = \"sensors/#\"\nmax_events_per_log = 1000\n";
    let budget = "max_disk_mb = 32\n";
    let (plain, _) = publish_rate("", count);
    let (ruled, by_rule) = publish_rate(rule, count);
    let (budgeted, by_budget) = publish_rate(budget, count);
    println!(
        "| publish, {count} events on 50 topics, 1 node, batches of 1,000 (events/s): no retention | {plain:.0} |"
    );
    println!(
        "| the same, a rule keeping 1,000 per log pruning every 1 s ({by_rule} pruned) | {ruled:.0} ({:.0}%) |",
        ruled / plain * 100.0
    );
    println!(
        "| the same, a 32 MiB disk budget ({by_budget} pruned) | {budgeted:.0} ({:.0}%) |",
        budgeted / plain * 100.0
    );
    let n = if quick { 200_000 } else { 1_000_000 };
    let (free, _, free_disk) = catch_up_with("", n);
    let (tight, _, tight_disk) = catch_up_with(budget, n);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "| catch-up of {n} events (events/s; most disk): no retention | {free:.0}; {:.0} MiB |",
        mib(free_disk)
    );
    println!(
        "| the same into a 32 MiB disk budget | {tight:.0} ({:.0}%); {:.1} MiB |",
        tight / free * 100.0,
        mib(tight_disk)
    );
}

/// A lab of `n` hosts in a closed fleet: every host admitted with a certificate from a
/// root made here (role `bench`), and the role granted `#`; returns once every host
/// holds the grant.
fn closed_lab(n: usize) -> Lab {
    use murmur_core::testing::{grant, member_cert, root_rule};
    let root = murmur_core::Keypair::from_seed(&[0xB0; 32]);
    let lab = Lab::new(n, |i| {
        format!("{}[fleet]\nroot = \"{}\"\n", config(i), root.author())
    });
    let now = common::now_ms();
    for i in 0..n {
        let node = lab.node(i);
        let cert = member_cert(
            &root,
            node.id().parse().unwrap(),
            &["bench"],
            now - 1000,
            now + 86_400_000,
        );
        node.fleet_join(&cert);
    }
    lab.node(0)
        .fleet_entry(&root_rule(&root, grant("bench", &["#"], true), now));
    connected(&lab, n);
    wait_for("every host to hold the grant", 60, || {
        (0..n).all(|i| {
            !lab.node(i).get("/v1/fleet")["grants"]
                .as_array()
                .unwrap()
                .is_empty()
        })
    });
    lab
}

/// The same replication, open and closed (every event checked against the fleet's
/// policy on arrival), in one run, alternating, the best of 3 each: sustained gossip to
/// 4 followers and a catch-up; and the check alone, in this process.
fn fleet_rows(quick: bool) {
    let count = if quick { 100_000 } else { 300_000 };
    let (mut open_fan, mut closed_fan, mut open_cu, mut closed_cu) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..3 {
        open_fan = open_fan.max(fan_out(count).0);
        closed_fan = closed_fan.max(fan_out_in(closed_lab(5), count).0);
        open_cu = open_cu.max(catch_up_with("", count).0);
        closed_cu = closed_cu.max(catch_up_in(closed_lab(2), count).0);
    }
    println!(
        "| sustained replication 1 → 4 followers, {count} events, best of 3 (events/s): open / closed fleet | {open_fan:.0} / {closed_fan:.0} (**{:.1}%**) |",
        closed_fan / open_fan * 100.0
    );
    println!(
        "| catch-up of {count} events, best of 3 (events/s): open / closed fleet | {open_cu:.0} / {closed_cu:.0} (**{:.1}%**) |",
        closed_cu / open_cu * 100.0
    );
    let ns = permit_ns();
    println!(
        "| the permission check alone, per event (ns); share of a catch-up's time per event | {ns:.0}; {:.2}% |",
        ns * open_cu / 1e9 * 100.0
    );
}

/// `Fleet::first_refused` on 100,000 events of a member granted by a role, a window of
/// 1,024 at a time as a catch-up asks it, in this process: ns per event.
fn permit_ns() -> f64 {
    use murmur_core::fleet::{Entry, Fleet};
    use murmur_core::testing::{grant, member_cert, root_rule};
    let root = murmur_core::Keypair::from_seed(&[0xB1; 32]);
    let author = murmur_core::testing::key(5);
    let events = murmur_core::testing::chain_with(&author, "catch/up", 100_000, |i| {
        bytes::Bytes::from(payload("catch/up", i as usize))
    });
    let t = events[0].time().ms;
    let mut fleet = Fleet::new(root.author(), 60_000);
    let cert = member_cert(
        &root,
        author.author(),
        &["a", "bench"],
        t - 1,
        t + 86_400_000,
    );
    fleet.apply(Entry::Member(cert)).unwrap();
    for role in ["a", "bench"] {
        fleet
            .apply(root_rule(
                &root,
                grant(role, &["other/#", "catch/#"], false),
                t,
            ))
            .unwrap();
    }
    let lock = std::sync::RwLock::new(fleet);
    // As the sync machine asks it: one window (1,024 events of one log) at a time,
    // just decoded and verified (in cache), so each window is asked 10 times in a row.
    let t0 = Instant::now();
    for w in events.chunks(1024) {
        for _ in 0..10 {
            assert!(lock.read().unwrap().first_refused(w).is_none());
        }
    }
    t0.elapsed().as_nanos() as f64 / events.len() as f64 / 10.0
}

/// The raw catch-up pipeline, in this process on one thread: decode + verify_range +
/// one RocksDB write (the daemon's store settings) per window of the sync machine's
/// size, over the same events a catch-up pulls. What catch-up would reach if the
/// network, the protocol and the daemon cost nothing (and if it used one core).
fn raw_pipeline(count: usize) -> f64 {
    use murmur_core::Store;
    let evs =
        murmur_core::testing::chain_with(&murmur_core::testing::key(3), "catch/up", count, |i| {
            bytes::Bytes::from(payload("catch/up", i as usize))
        });
    let window = murmur_core::sync::Config::default().window as usize;
    let runs: Vec<Vec<u8>> = evs
        .chunks(window)
        .map(|w| murmur_core::run::encode(w).expect("a chain encodes as runs"))
        .collect();
    drop(evs);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = murmur_daemon::node::open_store(dir.path(), &murmur_daemon::Config::default())
        .expect("store opens");
    let t0 = Instant::now();
    let mut anchor = None;
    for r in &runs {
        let w = murmur_core::run::decode(r, murmur_core::sync::MAX_FRAME_BYTES).expect("decodes");
        murmur_core::verify::verify_range(&w, anchor).expect("verifies");
        anchor = w.last().map(|e| murmur_core::verify::Anchor {
            seq: e.seq(),
            id: e.id(),
        });
        store
            .insert(&w, murmur_core::Durability::Buffered)
            .expect("writes");
    }
    count as f64 / t0.elapsed().as_secs_f64()
}

/// Hypercore 11's catch-up of `count` entries of the same size in this run
/// (tests/peers/hypercore.mjs), if `scripts/bench-peers` has installed it.
fn hypercore(count: usize) -> Result<f64, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    if !dir.join("node_modules/hypercore").exists() {
        return Err("not installed: run scripts/bench-peers once".into());
    }
    let out = std::process::Command::new("node")
        .arg(dir.join("hypercore.mjs"))
        .arg(count.to_string())
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["per_s"]
        .as_f64()
        .ok_or_else(|| "no rate in its output".into())
}

/// This machine's one-by-one signature verification rate, for comparison.
fn verify_one_by_one() -> f64 {
    let evs = murmur_core::testing::chain_with(&murmur_core::testing::key(2), "v/v", 5000, |i| {
        bytes::Bytes::from(payload("v", i as usize))
    });
    let t0 = Instant::now();
    for e in &evs {
        e.verify().expect("valid");
    }
    evs.len() as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the replication benchmark needs root (network namespaces); skipped");
        return;
    }
    let quick = std::env::var_os("MURMUR_BENCH_QUICK").is_some();
    let only = std::env::var("MURMUR_BENCH_ONLY").unwrap_or_default();
    let only_catch_up = only == "catch-up";
    let started = Instant::now();
    println!(
        "murmur replication benchmark: {PAYLOAD}-byte payloads, real daemons in network namespaces, fsync"
    );
    println!();
    let rows: Option<fn(bool)> = match only.as_str() {
        "retention" => Some(retention_rows),
        "fleet" => Some(fleet_rows),
        _ => None,
    };
    if let Some(rows) = rows {
        println!("| measurement | value |");
        println!("|---|---:|");
        rows(quick);
        println!();
        println!("finished in {:.0} s", started.elapsed().as_secs_f64());
        return;
    }
    if only_catch_up {
        catch_up_rows(quick);
        println!();
        println!("finished in {:.0} s", started.elapsed().as_secs_f64());
        return;
    }
    let (p50_2, p99_2, _) = live_latency(2, 400);
    let (p50_5, p99_5, trickle) = live_latency(5, 400);
    let (fan_rate, wire, wire_both) = fan_out(100_000);
    let model = fleet_trickle(10, 200);
    let verify = verify_one_by_one();
    println!("| measurement | value |");
    println!("|---|---:|");
    println!(
        "| live latency publish→follower, 2 hosts, p50 / p99 (ms) | {p50_2:.2} / {p99_2:.2} |"
    );
    println!(
        "| live latency publish→follower, 5 hosts, p50 / p99 (ms) | {p50_5:.2} / {p99_5:.2} |"
    );
    println!("| sustained replication, 1 publisher → 4 followers (events/s) | {fan_rate:.0} |");
    println!(
        "| bytes received per event per follower (payload {PAYLOAD} B) | {wire:.0} ({:.2}× payload) |",
        wire / PAYLOAD as f64
    );
    println!(
        "| bytes received + sent (forwarding) per event per follower | {wire_both:.0} ({:.2}× payload) |",
        wire_both / PAYLOAD as f64
    );
    println!(
        "| bytes received per event, one event every 5 ms, 5 hosts (last host) | {trickle:.0} ({:.2}× payload) |",
        trickle / PAYLOAD as f64
    );
    println!(
        "| 10 hosts, one event every 5 ms: time until 50% / 99% / 100% of followers hold it, p50 over events (ms) | {:.2} / {:.2} / {:.2} |",
        model.0, model.1, model.2
    );
    println!(
        "| 10 hosts: time until every follower holds it, p99 over events (ms); bytes per event per follower | {:.2}; {:.0} ({:.2}× payload) |",
        model.3,
        model.4,
        model.4 / PAYLOAD as f64
    );
    println!(
        "| one-by-one signature verification, same machine, 1 core (events/s) | {verify:.0} |"
    );
    catch_up_rows(quick);
    retention_rows(quick);
    fleet_rows(quick);
    println!();
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
}

/// Catch-up of 100,000 and 1,000,000 events, the raw pipeline and Hypercore, with the
/// ratios (the table's last rows).
fn catch_up_rows(quick: bool) {
    let count = if quick { 100_000 } else { 1_000_000 };
    let (cu100k, mb100k) = catch_up(100_000);
    let big = (!quick).then(|| catch_up(1_000_000));
    let raw = raw_pipeline(count);
    // Hypercore at its pace would take minutes for 1,000,000: its rate over 100,000.
    let hyper = hypercore(100_000);
    println!("| catch-up of 100,000 events (events/s, MB/s) | {cu100k:.0}, {mb100k:.1} |");
    let rate = match big {
        Some((r, mb)) => {
            println!("| catch-up of 1,000,000 events (events/s, MB/s) | {r:.0}, {mb:.1} |");
            r
        }
        None => cu100k,
    };
    println!(
        "| raw pipeline, {count} events: decode + verify_range + write per window, 1 thread (events/s) | {raw:.0} |"
    );
    println!(
        "| **catch-up of {count} ÷ raw pipeline** | **{:.0}%** |",
        rate / raw * 100.0
    );
    match hyper {
        Ok(h) => {
            println!(
                "| Hypercore 11 catch-up, 100,000 entries of {PAYLOAD} B, same run (entries/s) | {h:.0} |"
            );
            println!(
                "| **catch-up of {count} ÷ Hypercore** | **{:.1}×** |",
                rate / h
            );
        }
        Err(e) => println!("| Hypercore 11 catch-up | not measured: {e} |"),
    }
}
