//! Document benchmark, on a real daemon over its socket (no root needed). Prints, in one
//! run: local change rate, remote change apply rate, snapshot save and load time and
//! on-disk size for a document of 100,000 changes, and the daemon's resident memory
//! holding it; then compaction: what the node holds of the topic, and how long a new
//! device takes to get the document, from the whole history and from snapshots.
//!
//! Run: `scripts/bench` (or `cargo bench -p murmur-tests --bench docs` after
//! `cargo build --release --bins`). `MURMUR_BENCH_QUICK=1` uses 20,000 changes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

// The daemon's allocator, so the in-process figures compare with the daemon's.
#[global_allocator]
static ALLOC: murmur_daemon::alloc::Jemalloc = murmur_daemon::alloc::Jemalloc;

use automerge::{Automerge, Change};
use common::Node;
use murmur_core::{Body, DocId, Offset, ReadStore, Topic};
use murmur_store::{RocksConfig, RocksStore};
use serde_json::{Value, json};

/// Concurrent API clients (the local change rate is bound by per-request latency:
/// socket, HTTP, the document thread, the writer's group commit).
const CLIENTS: usize = 8;
const TOPIC: &str = "bench/docs";
const DOC: &str = "inventory";

/// One change of a realistic mix: set one of 100 inventory items (a record with a
/// distinct serial number), bump a counter, append to a text.
fn op(i: usize) -> Value {
    let serial = format!(
        "{:016x}",
        (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    );
    match i % 4 {
        0 | 1 => {
            json!([{"op": "set", "path": format!("items/k{}", i % 100), "value": {"n": i, "serial": serial}}])
        }
        2 => json!([{"op": "increment", "path": "count", "by": 1}]),
        _ => json!([{"op": "splice", "path": "log", "index": 0, "delete": 0, "insert": "x"}]),
    }
}

fn change(n: &Node, ops: Value) {
    let r = n.post("/v1/doc", &json!({"topic": TOPIC, "doc": DOC, "ops": ops}));
    assert_eq!(r.status, 200, "{}", r.body);
}

fn rss_mib(n: &Node) -> f64 {
    n.get("/v1/status")["resident_bytes"]
        .as_f64()
        .unwrap_or(0.0)
        / (1 << 20) as f64
}

/// This process's resident memory, bytes.
fn own_rss() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

fn main() {
    let quick = std::env::var_os("MURMUR_BENCH_QUICK").is_some();
    let total: usize = if quick { 20_000 } else { 100_000 };
    let started = Instant::now();
    println!("murmur document benchmark: one document, {total} changes, {CLIENTS} clients, fsync");
    println!();
    // Snapshot often enough that a restart replays little, rarely enough to be cheap.
    let mut n = Node::start("[docs]\nsnapshot_every = 5000\n");
    let rss_empty = rss_mib(&n);
    change(
        &n,
        json!([{"op": "set", "path": "items", "value": {}}, {"op": "counter", "path": "count"}, {"op": "text", "path": "log"}]),
    );

    // Local changes: CLIENTS concurrent clients, one change per request.
    // automerge 0.12 extracts a new change by walking the whole document, so the rate
    // falls as the document grows: measured for the first 20,000 changes and overall.
    let first = 20_000.min(total - 1);
    let run = |range: std::ops::Range<usize>| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for c in 0..CLIENTS {
                let n = &n;
                let range = range.clone();
                s.spawn(move || {
                    for i in range.skip(c).step_by(CLIENTS) {
                        change(n, op(i));
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    let t_first = run(0..first);
    let t_rest = run(first..total - 1);
    let early_rate = first as f64 / t_first;
    let local_rate = (total - 1) as f64 / (t_first + t_rest);
    let doc = n.get(&format!("/v1/doc?topic={TOPIC}&doc={DOC}"));
    let increments = (0..total - 1).filter(|i| i % 4 == 2).count();
    assert_eq!(doc["value"]["count"], increments, "every increment counted");
    let rss_loaded = rss_mib(&n);
    // A second, tiny document: reading it after the restart makes the daemon release
    // the allocator's free memory (as every document load does) before the baseline
    // is taken, so memory freed by startup is not counted against the big document.
    let r = n.post(
        "/v1/doc",
        &json!({"topic": TOPIC, "doc": "tiny", "ops": [{"op": "set", "path": "a", "value": 1}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A restart: the document is snapshotted at shutdown and loaded from the snapshot.
    assert!(n.stop().success());
    n.spawn();
    assert_eq!(
        n.get(&format!("/v1/doc?topic={TOPIC}&doc=tiny"))["value"]["a"],
        1
    );
    let rss_restarted = rss_mib(&n);
    let t1 = Instant::now();
    let again = n.get(&format!("/v1/doc?topic={TOPIC}&doc={DOC}"));
    let load_e2e = t1.elapsed().as_secs_f64();
    assert_eq!(again["value"], doc["value"]);
    let rss_reloaded = rss_mib(&n);
    let applied_after_restart = n.get("/v1/status")["docs"]["applied"].as_u64().unwrap_or(0);
    assert!(n.stop().success());

    // In process, on the stopped node's store: snapshot size, load and save times, and
    // the remote apply rate (all changes read from the store and applied in batches of
    // 4,096, as the daemon applies changes that arrive from peers).
    let store = RocksStore::open(&n.dir.join("db"), &RocksConfig::default()).expect("open store");
    let (topic, doc_id) = (Topic::new(TOPIC).unwrap(), DocId::new(DOC).unwrap());
    let snap = store
        .load_snapshot(&topic, &doc_id)
        .unwrap()
        .expect("a snapshot");
    murmur_daemon::alloc::release_free_memory();
    let rss_before = own_rss();
    let t2 = Instant::now();
    let loaded = Automerge::load(&snap.bytes).expect("load");
    let load_secs = t2.elapsed().as_secs_f64();
    let in_process_raw = own_rss() - rss_before;
    // Give freed allocator memory back to the OS (loading allocates temporaries).
    murmur_daemon::alloc::release_free_memory();
    let in_process = own_rss() - rss_before;
    println!(
        "(in process: {:.1} MiB right after load, {:.1} MiB after releasing free memory)",
        in_process_raw / (1 << 20) as f64,
        in_process / (1 << 20) as f64
    );
    let t3 = Instant::now();
    let saved = loaded.save();
    let save_secs = t3.elapsed().as_secs_f64();
    let mut from = Offset(0);
    let mut fresh = Automerge::new();
    let mut applied = 0usize;
    let t4 = Instant::now();
    loop {
        let page = store.doc_changes(&topic, &doc_id, from, 4096).unwrap();
        let Some((last, _)) = page.last() else { break };
        from = Offset(last.0 + 1);
        let changes: Vec<Change> = page
            .iter()
            .filter_map(|(_, e)| match e.body() {
                Body::Doc { change, .. } => Change::from_bytes(change.to_vec()).ok(),
                Body::Data { .. } => None,
            })
            .collect();
        applied += changes.len();
        fresh.apply_changes(changes).unwrap();
    }
    let apply_rate = applied as f64 / t4.elapsed().as_secs_f64();
    assert_eq!(applied, total);
    assert_eq!(fresh.get_heads(), loaded.get_heads());

    let mb = |b: usize| b as f64 / 1e6;
    println!("| measurement | value |");
    println!("|---|---:|");
    println!(
        "| local changes through the API, {CLIENTS} clients, fsync, first {first} (changes/s) | {early_rate:.0} |"
    );
    println!(
        "| local changes through the API, {CLIENTS} clients, fsync, all {total} (changes/s) | {local_rate:.0} |"
    );
    println!("| remote changes applied, batches of 4,096 (changes/s) | {apply_rate:.0} |");
    println!(
        "| snapshot of {total} changes on disk (MB) | {:.2} |",
        mb(snap.bytes.len())
    );
    println!(
        "| snapshot save / load, in process (ms) | {:.0} / {:.0} |",
        save_secs * 1e3,
        load_secs * 1e3
    );
    println!(
        "| first read after restart, end to end (ms) | {:.0} (changes replayed: {applied_after_restart}) |",
        load_e2e * 1e3
    );
    println!(
        "| daemon RSS: empty / holding the document (MiB) | {rss_empty:.1} / {rss_loaded:.1} |"
    );
    println!(
        "| daemon RSS after restart: before / after loading it (MiB) | {rss_restarted:.1} / {rss_reloaded:.1} |"
    );
    println!(
        "| memory for the document / snapshot size | {:.1}× |",
        (rss_reloaded - rss_restarted) * (1 << 20) as f64 / snap.bytes.len() as f64
    );
    println!(
        "| memory of the loaded document in this process / snapshot size | {:.1} MiB, {:.1}× |",
        in_process / (1 << 20) as f64,
        in_process / snap.bytes.len() as f64
    );
    println!();
    println!("(saved again: {:.2} MB)", mb(saved.len()));
    drop(store);

    // Compaction: a new device joins the site, once from a node holding the whole
    // history, once from the same node after it compacted the topic behind snapshots
    // (a rule keeping 100 events per log).
    let join = |from: &Node| -> (f64, u64) {
        let j = Node::start("");
        let t = Instant::now();
        let dial = j.cli(&["dial", &from.tcp_addr()]);
        assert!(dial.status.success(), "{}", common::stderr(&dial));
        let mut asked = Instant::now();
        loop {
            let r = j.req("GET", &format!("/v1/doc?topic={TOPIC}&doc={DOC}"), None);
            if r.status == 200 && r.json()["value"] == doc["value"] {
                break;
            }
            assert!(t.elapsed().as_secs() < 600, "the join did not finish");
            if asked.elapsed().as_millis() >= 500 {
                let _ = j.post("/v1/sync", &json!({}));
                asked = Instant::now();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (t.elapsed().as_secs_f64(), j.events())
    };
    let held_bytes = |n: &Node| -> u64 {
        n.get("/v1/topics")["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["topic"] == TOPIC).cloned())
            .and_then(|t| t["bytes"].as_u64())
            .unwrap_or(0)
    };
    n.spawn();
    let bytes_whole = held_bytes(&n);
    let (join_whole, events_whole) = join(&n);
    assert!(n.stop().success());
    std::fs::write(
        n.dir.join("murmur.toml"),
        format!(
            "[docs]\nsnapshot_every = 5000\ncompaction_interval = \"1s\"\n\n[store]\nprune_interval = \"1s\"\n\n\
             [[retention]]\npattern = \"bench/#\"\nmax_events_per_log = 100\n{}",
            common::LOOPBACK_P2P
        ),
    )
    .expect("config");
    n.spawn();
    let t5 = Instant::now();
    while held_bytes(&n) >= bytes_whole / 2 {
        assert!(t5.elapsed().as_secs() < 300, "compaction did not happen");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let compact_secs = t5.elapsed().as_secs_f64();
    let bytes_compacted = held_bytes(&n);
    let (join_compacted, events_compacted) = join(&n);
    assert!(n.stop().success());
    println!();
    println!(
        "| compaction (a rule keeping 100 events per log) | whole history | compacted | ratio |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| topic held by the node (encoded events, MB) | {:.2} | {:.2} | {:.1}% |",
        mb(bytes_whole as usize),
        mb(bytes_compacted as usize),
        100.0 * bytes_compacted as f64 / bytes_whole as f64
    );
    println!(
        "| a new device joins: the document complete after (s) | {join_whole:.2} | {join_compacted:.2} | {:.1}× faster |",
        join_whole / join_compacted
    );
    println!("| events the new device holds | {events_whole} | {events_compacted} | |");
    println!(
        "(compacted {compact_secs:.1} s after the restart with the rule: first pass, round, next pass)"
    );
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
}
