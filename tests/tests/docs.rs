//! Shared documents on one daemon (loopback only): the API and CLI, points in history,
//! clear errors, following, and a restart of a 100,000-change document from its
//! snapshot after a crash.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Node, stdout};
use serde_json::{Value, json};

const T: &str = "site/7";

fn change(n: &Node, doc: &str, ops: Value) -> Value {
    let r = n.post("/v1/doc", &json!({"topic": T, "doc": doc, "ops": ops}));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn value(n: &Node, doc: &str, query: &str) -> Value {
    n.get(&format!("/v1/doc?topic={T}&doc={doc}{query}"))["value"].clone()
}

#[test]
fn documents_through_the_api_and_the_cli() {
    let n = Node::start("");
    let first = change(
        &n,
        "cfg",
        json!([
            {"op": "set", "path": "rate", "value": 5},
            {"op": "set", "path": "tags", "value": ["a", "b"]},
            {"op": "counter", "path": "boots"},
            {"op": "text", "path": "note", "value": "hello world"}
        ]),
    );
    let after_first = value(&n, "cfg", "");
    change(
        &n,
        "cfg",
        json!([{"op": "increment", "path": "boots", "by": 2}]),
    );
    change(
        &n,
        "cfg",
        json!([{"op": "insert", "path": "tags", "index": 1, "value": "x"}]),
    );
    change(
        &n,
        "cfg",
        json!([{"op": "splice", "path": "note", "index": 6, "delete": 5, "insert": "there"}]),
    );
    // The CLI: set (a bare word is a string), delete, get a path.
    let o = n.cli(&["doc", "set", T, "cfg", "mode", "eco"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = n.cli(&["doc", "del", T, "cfg", "rate"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(
        value(&n, "cfg", ""),
        json!({"tags": ["a", "x", "b"], "boots": 2, "note": "hello there", "mode": "eco"})
    );
    let o = n.cli(&["doc", "get", T, "cfg", "tags/1"]);
    assert_eq!(stdout(&o).trim(), "\"x\"");

    // Points in history: an offset, an event id, a time.
    let off = first["offset"].as_u64().unwrap();
    assert_eq!(value(&n, "cfg", &format!("&at_offset={off}")), after_first);
    let id = first["id"].as_str().unwrap();
    assert_eq!(value(&n, "cfg", &format!("&at_event={id}")), after_first);
    // Before any change (1970): an empty document.
    assert_eq!(value(&n, "cfg", "&at_time=1000"), json!({}));
    let o = n.cli(&["doc", "get", T, "cfg", "--at", &off.to_string()]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap(),
        after_first
    );

    // History lists every change with its author; the topic lists its documents.
    let h = n.get(&format!("/v1/doc/history?topic={T}&doc=cfg"));
    let changes = h["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 6);
    let me = n.get("/v1/status")["author"].clone();
    assert!(
        changes
            .iter()
            .all(|c| c["author"] == me && c["ops"].as_u64().unwrap() >= 1)
    );
    change(&n, "other", json!([{"op": "set", "path": "a", "value": 1}]));
    assert_eq!(
        n.get(&format!("/v1/docs?topic={T}"))["docs"],
        json!(["cfg", "other"])
    );

    // Clear errors, and nothing changes.
    let before = value(&n, "cfg", "");
    for (ops, status, code) in [
        (
            json!([{"op": "increment", "path": "mode"}]),
            409,
            "wrong_type",
        ),
        (
            json!([{"op": "delete", "path": "nope"}]),
            404,
            "no_such_path",
        ),
        (
            json!([{"op": "insert", "path": "tags", "index": 9, "value": 1}]),
            422,
            "out_of_range",
        ),
        (
            json!([{"op": "set", "path": "", "value": 1}]),
            400,
            "bad_operation",
        ),
        (json!([]), 400, "bad_operation"),
        (
            json!([{"op": "set", "path": "ok", "value": 1}, {"op": "splice", "path": "tags", "index": 0}]),
            409,
            "wrong_type",
        ),
    ] {
        let r = n.post("/v1/doc", &json!({"topic": T, "doc": "cfg", "ops": ops}));
        assert_eq!(r.status, status, "{ops}: {}", r.body);
        assert_eq!(r.json()["code"], code, "{}", r.body);
    }
    let r = n.post(
        "/v1/doc",
        &json!({"topic": T, "doc": "cfg", "ops": [{"op": "explode"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        value(&n, "cfg", ""),
        before,
        "a failed change is rolled back whole"
    );
    let r = n.req("GET", &format!("/v1/doc?topic={T}&doc=missing"), None);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = n.req(
        "GET",
        &format!("/v1/doc?topic={T}&doc=cfg&at_event={}", "00".repeat(32)),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let o = n.cli(&["doc", "incr", T, "cfg", "mode"]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("not a counter"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn a_follower_sees_the_document_change() {
    let n = Node::start("");
    change(&n, "live", json!([{"op": "set", "path": "v", "value": 0}]));
    let mut s = UnixStream::connect(n.socket()).unwrap();
    write!(
        s,
        "GET /v1/doc/follow?topic={T}&doc=live HTTP/1.1\r\nHost: m\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut next_value = || loop {
        let line = lines.next().expect("a line").expect("read");
        if let Some(start) = line.find("{\"through\"") {
            return serde_json::from_str::<Value>(&line[start..]).unwrap()["value"].clone();
        }
    };
    assert_eq!(next_value(), json!({"v": 0}));
    change(&n, "live", json!([{"op": "set", "path": "v", "value": 1}]));
    assert_eq!(next_value(), json!({"v": 1}));
}

#[test]
fn a_large_document_reopens_from_its_snapshot_after_a_crash() {
    const CHANGES: usize = 100_000;
    const EVERY: u64 = 10_000;
    let mut n = Node::start(&format!("[docs]\nsnapshot_every = {EVERY}\n"));
    change(
        &n,
        "big",
        json!([{"op": "counter", "path": "count"}, {"op": "set", "path": "items", "value": {}}]),
    );
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for c in 0..16 {
            let n = &n;
            s.spawn(move || {
                for i in (c..CHANGES - 1).step_by(16) {
                    let op = if i % 2 == 0 {
                        json!([{"op": "increment", "path": "count"}])
                    } else {
                        json!([{"op": "set", "path": format!("items/k{}", i % 50), "value": i}])
                    };
                    change(n, "big", op);
                }
            });
        }
    });
    let write_secs = t0.elapsed().as_secs_f64();
    let before = value(&n, "big", "");
    assert_eq!(
        before["count"],
        (0..CHANGES - 1).filter(|i| i % 2 == 0).count()
    );
    // A crash: no snapshot at shutdown; the last periodic one is on disk.
    n.kill();
    n.spawn();
    let t1 = Instant::now();
    let after = value(&n, "big", "");
    let load_secs = t1.elapsed().as_secs_f64();
    assert_eq!(
        after, before,
        "every acknowledged change is in the reopened document"
    );
    let replayed = n.get("/v1/status")["docs"]["applied"].as_u64().unwrap();
    println!(
        "{CHANGES} changes written in {write_secs:.1} s; reopened after a crash in {:.0} ms, replaying {replayed} changes after the snapshot",
        load_secs * 1e3
    );
    assert!(
        replayed < 2 * EVERY,
        "only the changes after the last snapshot are replayed, not {replayed}"
    );
    // A clean stop writes a snapshot: nothing to replay.
    assert!(n.stop().success());
    n.spawn();
    assert_eq!(value(&n, "big", ""), before);
    assert_eq!(n.get("/v1/status")["docs"]["applied"], 0);
}

#[test]
fn idle_and_over_budget_documents_leave_memory_and_come_back() {
    // A zero budget keeps at most one document in memory; idle ones leave after 1 s.
    let n = Node::start("[docs]\nmax_memory_mb = 0\nidle_evict = \"1s\"\n");
    for d in ["a", "b", "c"] {
        change(&n, d, json!([{"op": "set", "path": "name", "value": d}]));
    }
    let docs = || n.get("/v1/status")["docs"].clone();
    assert!(docs()["loaded"].as_u64().unwrap() <= 1, "{}", docs());
    assert!(docs()["evicted"].as_u64().unwrap() >= 2, "{}", docs());
    common::wait_for("idle documents to leave memory", 15, || {
        docs()["loaded"] == 0
    });
    // Evicted documents were snapshotted and read back intact.
    for d in ["a", "b", "c"] {
        assert_eq!(value(&n, d, ""), json!({"name": d}));
    }
    assert!(docs()["snapshots"].as_u64().unwrap() >= 3, "{}", docs());
}
