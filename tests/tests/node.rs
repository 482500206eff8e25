//! The real `murmur` binary on one machine: API, CLI, bad input, shutdown, restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, binary, stderr, stdout};
use serde_json::{Value, json};

#[test]
fn publish_read_and_list_through_the_api() {
    let n = Node::start("");
    let p = n.post(
        "/v1/events",
        &json!({"topic": "sensors/kitchen/temp", "data": "21.5"}),
    );
    assert_eq!(p.status, 200, "{}", p.body);
    let p = p.json();
    assert_eq!(
        (p["seq"].as_u64(), p["offset"].as_u64()),
        (Some(0), Some(0))
    );
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"topic": "sensors/hall/temp", "data": format!("v{i}")}))
        .collect();
    let r = n.post("/v1/events/batch", &json!({ "events": batch }));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = r.json();
    let evs = r["events"].as_array().unwrap();
    assert_eq!(evs.len(), 50);
    assert_eq!(evs[49]["seq"], 49);
    assert_eq!(evs[49]["offset"], 50);
    // Binary payload and a raw-body publish.
    let b = n.post(
        "/v1/events",
        &json!({"topic": "bin", "data_b64": "AAEC/w=="}),
    );
    assert_eq!(b.status, 200, "{}", b.body);
    let raw = n.req("POST", "/v1/raw/sensors/door", Some("open"));
    assert_eq!(raw.status, 200, "{}", raw.body);

    // Read by pattern, in arrival order, with paging.
    let page = n.get("/v1/events?pattern=sensors/%2B/temp&from=0&limit=10");
    let evs = page["events"].as_array().unwrap();
    assert_eq!(evs.len(), 10);
    assert_eq!(evs[0]["data"], "21.5");
    assert_eq!(evs[1]["data"], "v0");
    assert_eq!(page["next"], 10);
    let page = n.get("/v1/events?pattern=sensors/%23&from=10&limit=1000");
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        42,
        "41 remaining hall events + door"
    );
    // A log range, and one event by id with its chain link.
    let log = n.get("/v1/log?topic=sensors/hall/temp&from=10&limit=3");
    let evs = log["events"].as_array().unwrap();
    assert_eq!(
        evs.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    assert_eq!(evs[1]["prev"], evs[0]["id"]);
    let one = n.get(&format!("/v1/events/{}", evs[2]["id"].as_str().unwrap()));
    assert_eq!(one["data"], "v12");
    let bin = n.get("/v1/log?topic=bin");
    assert_eq!(bin["events"][0]["encoding"], "base64");
    assert_eq!(bin["events"][0]["data"], "AAEC/w==");
    // Topics and status.
    let t = n.get("/v1/topics");
    let names: Vec<&str> = t["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "bin",
            "sensors/door",
            "sensors/hall/temp",
            "sensors/kitchen/temp"
        ]
    );
    assert_eq!(t["topics"][2]["events"], 50);
    let s = n.get("/v1/status");
    assert_eq!(s["events"], 53);
    assert_eq!(s["topics"], 4);
    assert_eq!(s["sync"], "fsync");
    let m = n.req("GET", "/metrics", None);
    assert!(
        m.body.contains("murmur_events_published_total 53"),
        "{}",
        m.body
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_stores_nothing() {
    let n = Node::start("[api]\nmax_payload_bytes = 1000\nmax_batch_events = 10\n");
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/events",
            json!({"topic": "a/+/b", "data": "x"}).to_string(),
            400,
            "invalid_topic",
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "a//b", "data": "x"}).to_string(),
            400,
            "invalid_topic",
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "a", "data": "x".repeat(1001)}).to_string(),
            413,
            "too_large",
        ),
        (
            "POST",
            "/v1/events",
            "{\"topic\": \"a\", ".into(),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "a", "colour": "red"}).to_string(),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "a", "data": "x", "data_b64": "eA=="}).to_string(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "a", "data_b64": "%%%"}).to_string(),
            400,
            "bad_base64",
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "a", "content_type": "bad\ntype"}).to_string(),
            400,
            "invalid_content_type",
        ),
        ("POST", "/v1/raw/a", "x".repeat(1001), 413, "too_large"),
        ("GET", "/v1/nothing-here", String::new(), 404, "not_found"),
        (
            "DELETE",
            "/v1/status",
            String::new(),
            405,
            "method_not_allowed",
        ),
        ("GET", "/v1/events/zz", String::new(), 400, "invalid_id"),
        (
            "GET",
            "/v1/events?pattern=a/%23/b",
            String::new(),
            400,
            "invalid_pattern",
        ),
        (
            "GET",
            "/v1/events?pattern=%FF%FE",
            String::new(),
            400,
            "invalid_utf8",
        ),
        (
            "GET",
            "/v1/follow?pattern=a/%C3",
            String::new(),
            400,
            "invalid_utf8",
        ),
        ("POST", "/v1/raw/a%FF", "x".into(), 400, "invalid_utf8"),
        (
            "GET",
            "/v1/log?topic=a&author=nothex",
            String::new(),
            400,
            "invalid_author",
        ),
        (
            "POST",
            "/v1/events/batch",
            json!({"events": []}).to_string(),
            400,
            "bad_request",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = n.req(method, path, Some(&body));
        assert_eq!(r.status, status, "{method} {path} {body:.80}: {}", r.body);
        let j = r.json();
        assert_eq!(j["code"], code, "{method} {path}: {}", r.body);
        assert!(!j["error"].as_str().unwrap().is_empty());
    }
    // A batch with one bad event stores none of them.
    let mut evs: Vec<Value> = (0..5)
        .map(|i| json!({"topic": "ok", "data": format!("{i}")}))
        .collect();
    evs.push(json!({"topic": "not/ok/+", "data": "x"}));
    let r = n.post("/v1/events/batch", &json!({ "events": evs }));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("event 5"), "{}", r.body);
    let too_many: Vec<Value> = (0..11).map(|_| json!({"topic": "ok"})).collect();
    assert_eq!(
        n.post("/v1/events/batch", &json!({ "events": too_many }))
            .status,
        413
    );
    assert_eq!(n.events(), 0, "nothing stored");
    let m = n.req("GET", "/metrics", None).body;
    assert!(
        m.contains("murmur_api_refused_total{reason=\"invalid_topic\"}"),
        "{m}"
    );
}

#[test]
fn cli_round_trip() {
    let n = Node::start("");
    let id = n.cli(&["id"]);
    assert!(id.status.success(), "{}", stderr(&id));
    let author = stdout(&id).trim().to_owned();
    assert_eq!(author.len(), 64);

    let p = n.cli(&["pub", "fleet/a/temp", "20.5", "--json"]);
    assert!(p.status.success(), "{}", stderr(&p));
    let pj: Value = serde_json::from_str(stdout(&p).trim()).unwrap();
    assert_eq!(pj["author"], author.as_str());

    // stdin, --file and --lines.
    let mut child = Command::new(binary())
        .args(["--data-dir"])
        .arg(&n.dir)
        .args(["pub", "fleet/b/temp", "--lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"1\n2\n3\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("published 3 events"),
        "{}",
        stdout(&out)
    );
    let f = n.dir.join("payload.bin");
    std::fs::write(&f, [0u8, 159, 146, 150]).unwrap();
    let o = n.cli(&["pub", "fleet/blob", "--file", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let log = n.cli(&["log", "fleet/b/temp", "--json"]);
    let lj: Value = serde_json::from_str(stdout(&log).trim()).unwrap();
    assert_eq!(lj["events"].as_array().unwrap().len(), 3);
    let human = stdout(&n.cli(&["log", "fleet/blob"]));
    assert!(human.contains("<4 bytes, base64>"), "{human}");

    let sub = n.cli(&["sub", "fleet/+/temp", "--from-start", "-n", "4", "--json"]);
    assert!(sub.status.success(), "{}", stderr(&sub));
    let data: Vec<String> = common::payloads(&sub.stdout);
    assert_eq!(data, vec!["20.5", "1", "2", "3"]);

    let topics = stdout(&n.cli(&["topics"]));
    assert!(
        topics.contains("fleet/b/temp") && topics.contains("TOPIC"),
        "{topics}"
    );
    let status = stdout(&n.cli(&["status"]));
    assert!(
        status.contains(&author) && status.contains("events      5"),
        "{status}"
    );
    let sj: Value = serde_json::from_str(stdout(&n.cli(&["status", "--json"])).trim()).unwrap();
    assert_eq!(sj["node"]["events"], 5);
    let comp = n.cli(&["completions", "bash"]);
    assert!(stdout(&comp).contains("murmur"));

    // Output cut short (`| head -1`) ends the command quietly, as Unix tools do.
    let batch: Vec<Value> = (0..3000)
        .map(|i| serde_json::json!({"topic": "fleet/many", "data": format!("{i}")}))
        .collect();
    let r = n.post("/v1/events/batch", &serde_json::json!({ "events": batch }));
    assert_eq!(r.status, 200, "{}", r.body);
    let cut = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' --data-dir '{}' sub 'fleet/#' --from-start -n 3000 | head -1",
            binary().display(),
            n.dir.display()
        ))
        .output()
        .unwrap();
    assert!(cut.status.success(), "{}", stderr(&cut));
    assert!(stderr(&cut).is_empty(), "{}", stderr(&cut));
}

#[test]
fn errors_when_no_daemon_or_a_second_daemon() {
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let o = Command::new(binary())
        .args(["--data-dir"])
        .arg(tmp.path())
        .arg("status")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no murmur daemon is running") && e.contains("murmur daemon"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");

    let n = Node::start("");
    let second = Command::new(binary())
        .args(["daemon", "--data-dir"])
        .arg(&n.dir)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already running"),
        "{}",
        stderr(&second)
    );
    // The first daemon is unaffected.
    assert_eq!(n.get("/v1/status")["events"], 0);

    // A node that would speak to the network must say who may join its fleet; it
    // refuses to start, before it creates anything, and says what to write.
    let unchosen = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::write(
        unchosen.path().join("murmur.toml"),
        "[store]\nsync = \"os\"\n",
    )
    .unwrap();
    let o = Command::new(binary())
        .args(["daemon", "--data-dir"])
        .arg(unchosen.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("[fleet] open = true") && e.contains("murmur fleet init"),
        "{e}"
    );
    assert!(!unchosen.path().join("db").exists(), "nothing created");
    // `murmur init` writes the open choice, out loud, into the config it creates.
    let fresh = tempfile::tempdir_in("/tmp").unwrap();
    let init = Command::new(binary())
        .args(["--data-dir"])
        .arg(fresh.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let written = std::fs::read_to_string(fresh.path().join("murmur.toml")).unwrap();
    assert!(
        written.contains("\n[fleet]\n") && written.contains("\nopen = true\n"),
        "{written}"
    );

    let bad = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::write(bad.path().join("murmur.toml"), "[store]\nsynk = \"os\"\n").unwrap();
    let o = Command::new(binary())
        .args(["daemon", "--data-dir"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("synk"), "{}", stderr(&o));
}

#[test]
fn sigterm_shuts_down_cleanly_and_restart_continues_the_log() {
    let mut n = Node::start("");
    for i in 0..10 {
        assert_eq!(
            n.post("/v1/events", &json!({"topic": "t", "data": format!("{i}")}))
                .status,
            200
        );
    }
    let st = n.stop();
    assert!(st.success(), "exit {st}: {}", n.log());
    assert!(!n.socket().exists(), "socket removed");
    assert!(n.log().contains("stopped cleanly"), "{}", n.log());
    let v = n.cli(&["verify"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    assert!(stdout(&v).contains("10 events"), "{}", stdout(&v));
    n.spawn();
    let p = n
        .post("/v1/events", &json!({"topic": "t", "data": "after"}))
        .json();
    assert_eq!(p["seq"], 10);
    assert_eq!(p["offset"], 10);
    let log = n.get("/v1/log?topic=t&from=9");
    let evs = log["events"].as_array().unwrap();
    assert_eq!(
        evs[1]["prev"], evs[0]["id"],
        "the chain continues across restarts"
    );
    assert!(evs[1]["time"]["ms"].as_u64() >= evs[0]["time"]["ms"].as_u64());
}

#[test]
fn followers_get_every_event_once_in_order_even_when_slow() {
    let n = Node::start("");
    for i in 0..5 {
        n.post(
            "/v1/events",
            &json!({"topic": "live/a", "data": format!("old{i}")}),
        );
    }
    // A live follower from "now" and a resuming follower from offset 3.
    let spawn_sub = |args: &[&str]| {
        Command::new(binary())
            .arg("--data-dir")
            .arg(&n.dir)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut live = spawn_sub(&["sub", "live/#", "-n", "2000", "--json"]);
    let mut resume = spawn_sub(&["sub", "live/+", "--from", "3", "-n", "2002", "--json"]);
    // Wait until the live follower is connected (it starts at the current offset).
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.get("/v1/status")["followers"] != 2 {
        assert!(Instant::now() < deadline, "followers did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The live follower's stdout is not read while 2,000 events go in: it falls behind
    // and must catch up from the store.
    for b in 0..20 {
        let evs: Vec<Value> = (0..100)
            .map(|i| json!({"topic": "live/a", "data": format!("n{}", b * 100 + i)}))
            .collect();
        assert_eq!(
            n.post("/v1/events/batch", &json!({ "events": evs })).status,
            200
        );
    }
    for (child, first_expected, count) in [(&mut live, 0usize, 2000usize), (&mut resume, 0, 2002)] {
        let out = BufReader::new(child.stdout.take().unwrap());
        let data: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(&l.unwrap()).unwrap()["data"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(child.wait().unwrap().success());
        assert_eq!(data.len(), count);
        let new: Vec<&String> = data.iter().filter(|d| d.starts_with('n')).collect();
        assert_eq!(new.len(), 2000);
        for (i, d) in new.iter().enumerate() {
            assert_eq!(
                **d,
                format!("n{}", i + first_expected),
                "in order, exactly once"
            );
        }
        if count == 2002 {
            assert_eq!(&data[..2], &["old3".to_owned(), "old4".to_owned()]);
        }
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let n = Node::start(
        "[api]\nmax_payload_bytes = 1024\nmax_request_bytes = 65536\n[ingest]\nqueue_requests = 1\nqueue_bytes = 65536\n",
    );
    let socket = n.socket();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (socket, acked, busy) = (socket.clone(), acked.clone(), busy.clone());
            std::thread::spawn(move || {
                for i in 0..300 {
                    if Instant::now() > deadline
                        || busy.load(std::sync::atomic::Ordering::Relaxed) > 20
                    {
                        break;
                    }
                    let body =
                        json!({"topic": format!("load/{t}"), "data": format!("{i}")}).to_string();
                    let r = common::request(&socket, "POST", "/v1/events", Some(&body)).unwrap();
                    match r.status {
                        200 => acked
                            .lock()
                            .unwrap()
                            .push(r.json()["id"].as_str().unwrap().to_owned()),
                        503 => {
                            assert_eq!(r.header("retry-after"), Some("1"));
                            assert_eq!(r.json()["code"], "queue_full");
                            busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        s => panic!("unexpected {s}: {}", r.body),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        busy.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "a 1-request queue under 16 publishers must overflow"
    );
    let acked = acked.lock().unwrap();
    assert_eq!(
        n.events(),
        acked.len() as u64,
        "exactly the acknowledged events are stored"
    );
    for id in acked.iter().step_by(7) {
        assert_eq!(n.req("GET", &format!("/v1/events/{id}"), None).status, 200);
    }
}

#[test]
fn sse_follow_resumes_from_last_event_id() {
    use std::io::{Read, Write};
    let n = Node::start("");
    for i in 0..6 {
        n.post(
            "/v1/events",
            &json!({"topic": "sse/t", "data": format!("e{i}")}),
        );
    }
    // A client that saw offset 3 reconnects with Last-Event-ID: 3 and gets 4 and 5.
    let mut s = std::os::unix::net::UnixStream::connect(n.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/follow?pattern=sse/%23 HTTP/1.1\r\nHost: m\r\nAccept: text/event-stream\r\nLast-Event-ID: 3\r\n\r\n"
    )
    .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("\"e5\"") {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "stream ended early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..k]));
    }
    assert!(got.contains("content-type: text/event-stream"), "{got}");
    assert!(
        got.contains("id: 4\ndata: {") && got.contains("id: 5\ndata: {"),
        "{got}"
    );
    assert!(
        !got.contains("\"e3\""),
        "resumed after the last seen id: {got}"
    );
}

#[test]
fn sigterm_ends_follow_streams_and_does_not_wait_forever_for_stuck_clients() {
    use std::io::Write;
    let mut n = Node::start("");
    n.post("/v1/events", &json!({"topic": "s", "data": "x"}));
    let sub = Command::new(binary())
        .arg("--data-dir")
        .arg(&n.dir)
        .args(["sub", "#", "--from-start"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A client that announces a body and never sends it.
    let mut stuck = std::os::unix::net::UnixStream::connect(n.socket()).unwrap();
    write!(
        stuck,
        "POST /v1/events HTTP/1.1\r\nHost: m\r\nContent-Length: 100\r\n\r\n{{\"topic\""
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.get("/v1/status")["followers"] != 1 {
        assert!(Instant::now() < deadline, "follower did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let st = n.stop();
    assert!(st.success(), "exit {st}: {}", n.log());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let out = sub.wait_with_output().unwrap();
    assert!(
        stdout(&out).contains("s  "),
        "the follower got the event: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("closed the stream"),
        "{}",
        stderr(&out)
    );
    drop(stuck);
    // Nothing was lost: the store verifies and holds the event.
    let v = n.cli(&["verify", "--json"]);
    assert!(
        stdout(&v).contains("\"clean\":true") && stdout(&v).contains("\"events\":1"),
        "{}",
        stdout(&v)
    );
}

#[test]
fn clean_shutdowns_log_no_false_error() {
    // The API server can finish draining before the shutdown branch is polled; that was
    // logged as "stopped unexpectedly" in 2-3 of 40 clean stops.
    let mut n = Node::start("[p2p]\nenabled = false\n");
    for i in 0..30 {
        if i > 0 {
            n.spawn();
        }
        let st = n.stop();
        assert!(st.success(), "stop {i}: {st}\n{}", n.log());
    }
    let log = n.log();
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(log.matches("stopped cleanly").count(), 30, "{log}");
}

/// The daemon's resident memory, MiB.
fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Publishes `count` events of 1 MB each to `big/t`.
fn publish_big(n: &Node, count: usize) {
    let big = "x".repeat(1_000_000);
    for _ in 0..count {
        let r = n.post("/v1/events", &json!({"topic": "big/t", "data": big}));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// A follower of `big/#` from offset 0 that sends its request and never reads.
fn stalled_follower(n: &Node) -> std::os::unix::net::UnixStream {
    use std::io::Write as _;
    let mut s = std::os::unix::net::UnixStream::connect(n.socket()).unwrap();
    write!(
        s,
        "GET /v1/follow?pattern=big/%23&from=0 HTTP/1.1\r\nHost: m\r\n\r\n"
    )
    .unwrap();
    s
}

#[test]
fn stalled_followers_of_large_events_stay_bounded_in_memory() {
    // 32 events of 1 MiB, and 64 followers (the default cap) that ask for everything
    // and never read. Pages are sized in bytes, so each holds about one event.
    let n = Node::start("[p2p]\nenabled = false\n");
    publish_big(&n, 32);
    let before = rss_mib(n.pid());
    let conns: Vec<_> = (0..64).map(|_| stalled_follower(&n)).collect();
    let mut peak = before;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        peak = peak.max(rss_mib(n.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(n.get("/v1/status")["followers"], 64);
    eprintln!("stalled followers: RSS {before} MiB before, peak {peak} MiB with 64 stalled");
    // Was 3,120 MiB with 256-event pages. About two pages of ~1 MiB per follower.
    assert!(
        peak < before + 256,
        "RSS grew from {before} to {peak} MiB with 64 stalled followers"
    );
    drop(conns);
}

/// A non-blocking connection to a Unix socket: `None` when the listener's backlog is
/// full (a blocking connect would wait for room).
fn connect_nonblocking(path: &std::path::Path) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket calls on a zeroed sockaddr_un filled within its bounds; the
    // descriptor is owned (and closed) by the OwnedFd or closed here on failure.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return None;
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, (&raw const addr).cast(), len) != 0 {
            libc::close(fd);
            return None;
        }
        Some(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

#[test]
fn idle_connections_cannot_use_up_descriptors_and_publishing_resumes() {
    // The daemon runs with 512 open files; 1,100 idle local clients used to take them
    // all, and publishing failed on the WAL until a restart.
    let mut n = Node::start("[p2p]\nenabled = false\n[store]\nmax_open_files = 64\n");
    n.stop();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(n.dir.join("daemon.log"))
        .unwrap();
    let child = Command::new("prlimit")
        .arg("--nofile=512:512")
        .arg(binary())
        .args(["daemon", "--data-dir"])
        .arg(&n.dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prlimit (util-linux)");
    n.child = Some(child);
    common::wait_for("the daemon under 512 open files", 30, || {
        n.try_request("GET", "/v1/status", None)
            .is_ok_and(|r| r.status == 200)
    });
    // This test process needs more than 1,100 descriptors of its own.
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let idle: Vec<_> = (0..1100)
        .filter_map(|_| connect_nonblocking(&n.socket()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", n.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!(
        "{} idle connections made; the daemon holds {fds} descriptors",
        idle.len()
    );
    assert!(fds < 500, "{fds} descriptors held under a limit of 512");
    drop(idle);
    common::wait_for("publishing to work again", 20, || {
        n.try_request(
            "POST",
            "/v1/events",
            Some(&json!({"topic": "fd/t", "data": "after"}).to_string()),
        )
        .is_ok_and(|r| r.status == 200)
    });
    for i in 0..20 {
        let r = n.post(
            "/v1/events",
            &json!({"topic": "fd/t", "data": format!("e{i}")}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(!n.log().contains("Too many open files"), "{}", n.log());
}

/// Unmounts on drop, also when the test fails.
/// A 48 MiB file system of our own (tmpfs, to be filled with 1 MB events): the mount,
/// a 12 MiB ballast file on it (something else on the same disk, which the operator
/// deletes to make room), and an empty data dir for the node.
fn small_disk() -> (common::Tmpfs, std::path::PathBuf, std::path::PathBuf) {
    let tmp = common::Tmpfs::mount("48m");
    let ballast = tmp.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 12 << 20]).unwrap();
    let data = tmp.path().join("node");
    std::fs::create_dir(&data).unwrap();
    (tmp, ballast, data)
}

/// Publishes 1 MB events on `big/t` until the disk is full: the events acknowledged,
/// and the 507 answer that ended it.
fn fill_disk(n: &Node) -> (u64, common::Response) {
    let big = "x".repeat(1_000_000);
    let mut acked = 0u64;
    for _ in 0..200 {
        let r = n.post("/v1/events", &json!({"topic": "big/t", "data": big}));
        if r.status != 200 {
            assert_eq!(r.status, 507, "{}", r.body);
            return (acked, r);
        }
        acked += 1;
    }
    panic!("the disk never filled after {acked} events of 1 MB");
}

#[test]
fn a_full_disk_answers_507_loses_nothing_and_publishing_resumes_once_space_is_freed() {
    if !common::netns::root_or_skip(
        "a_full_disk_answers_507_loses_nothing_and_publishing_resumes_once_space_is_freed",
    ) {
        return;
    }
    let (_disk, ballast, data) = small_disk();
    let mut n = Node::start_at(&data, "[p2p]\nenabled = false\n");
    let (acked, r) = fill_disk(&n);
    assert_eq!(r.json()["code"], "disk_full", "{}", r.body);
    assert!(acked > 10, "{acked}");
    // Still serving, and everything acknowledged is there.
    assert_eq!(n.get("/v1/status")["events"], acked);
    assert_eq!(n.topic_events("big/t"), acked);

    // Room is made: publishing comes back by itself, and nothing acknowledged is lost.
    std::fs::remove_file(&ballast).unwrap();
    let small = json!({"topic": "big/t", "data": "after"}).to_string();
    common::wait_for("publishing to resume after space was freed", 60, || {
        n.try_request("POST", "/v1/events", Some(&small))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(n.log().contains("reopen the store"), "{}", n.log());
    assert_eq!(n.topic_events("big/t"), acked + 1);
    // The memtable cannot be flushed to a full disk: the daemon says why and exits (the
    // events are in the synced WAL).
    let st = n.stop();
    assert!(
        st.success() || n.log().contains("acknowledged event is in the synced WAL"),
        "{st}\n{}",
        n.log()
    );
}

#[test]
fn followers_that_stop_reading_are_closed_and_give_their_slots_back() {
    let n = Node::start("[api]\nwrite_stall = \"2s\"\n[p2p]\nenabled = false\n");
    publish_big(&n, 16);
    let stalled: Vec<_> = (0..3).map(|_| stalled_follower(&n)).collect();
    common::wait_for("three followers", 10, || {
        n.get("/v1/status")["followers"] == 3
    });
    // They never read: after api.write_stall the daemon closes them.
    let t0 = Instant::now();
    common::wait_for("the stalled followers to be closed", 20, || {
        n.get("/v1/status")["followers"] == 0
    });
    eprintln!("stalled followers closed after {:?}", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_secs(1), "closed too early");
    drop(stalled);
}

/// Reads until EOF or `secs`; true when the daemon closed the connection.
fn closed_within(s: &mut std::os::unix::net::UnixStream, secs: u64) -> bool {
    use std::io::Read as _;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn idle_connections_are_closed_but_quiet_followers_are_not() {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    let n = Node::start("[api]\nidle_timeout = \"1s\"\n[p2p]\nenabled = false\n");
    // Connected and never said anything.
    let mut silent = UnixStream::connect(n.socket()).unwrap();
    // One request on a keep-alive connection, then nothing.
    let mut kept = UnixStream::connect(n.socket()).unwrap();
    write!(kept, "GET /v1/status HTTP/1.1\r\nHost: m\r\n\r\n").unwrap();
    // A follower of a topic where nothing happens (NDJSON sends no keepalives).
    let mut quiet = UnixStream::connect(n.socket()).unwrap();
    write!(
        quiet,
        "GET /v1/follow?pattern=quiet/%23&format=ndjson HTTP/1.1\r\nHost: m\r\n\r\n"
    )
    .unwrap();
    // A follower of a document nobody edits.
    let mut quiet_doc = UnixStream::connect(n.socket()).unwrap();
    write!(
        quiet_doc,
        "GET /v1/doc/follow?topic=quiet/docs&doc=d HTTP/1.1\r\nHost: m\r\n\r\n"
    )
    .unwrap();
    assert!(
        closed_within(&mut silent, 5),
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut kept, 5),
        "an idle keep-alive stayed open"
    );
    assert!(
        !closed_within(&mut quiet, 3),
        "a follower was closed for being quiet"
    );
    assert!(
        !closed_within(&mut quiet_doc, 3),
        "a document follower was closed for being quiet"
    );
    // The follower still gets what comes.
    let r = n.post(
        "/v1/events",
        &json!({"topic": "quiet/t", "data": "at last"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut got = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !got.contains("at last") && std::time::Instant::now() < deadline {
        use std::io::Read as _;
        if let Ok(k) = quiet.read(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..k]));
        }
    }
    assert!(got.contains("at last"), "{got}");
}

/// A node whose disk fills while it replicates: status and metrics say so, it pulls
/// nothing (no round of its fails writing), it still serves its peer, and once space is
/// freed it catches up what it missed, all without a restart.
#[test]
fn a_full_disk_pauses_pulling_keeps_serving_and_catches_up_once_space_is_freed() {
    if !common::netns::root_or_skip(
        "a_full_disk_pauses_pulling_keeps_serving_and_catches_up_once_space_is_freed",
    ) {
        return;
    }
    let (_disk, ballast, data) = small_disk();
    let full = Node::start_at(&data, common::LOOPBACK_P2P);
    let peer = Node::start("");
    let dial = peer.cli(&["dial", &full.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    common::wait_for("the two to connect", 20, || {
        full.get("/v1/status")["peers"] == 1
    });

    // Fill the disk with the node's own events.
    let (acked, _) = fill_disk(&full);
    let status = full.get("/v1/status");
    assert_eq!(status["disk_full"], true, "{status}");
    assert_eq!(full.metric("murmur_store_disk_full"), 1);
    let shown = full.cli(&["status"]);
    assert!(
        common::stdout(&shown).contains("DISK FULL"),
        "{}",
        common::stdout(&shown)
    );

    // It still serves: the peer holds every acknowledged event.
    common::wait_for("the peer to hold every acknowledged event", 60, || {
        peer.topic_events("big/t") == acked
    });
    // The peer publishes; the full node's rounds pull nothing, so none fails writing.
    let failed = |n: &Node| n.metric("murmur_sync_rounds_total{outcome=\"failed\"}");
    let failed_before = failed(&full);
    for i in 0..50 {
        let r = peer.post(
            "/v1/events",
            &json!({"topic": "small/t", "data": format!("s{i}")}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let sync = full.cli(&["sync"]);
    assert!(sync.status.success(), "{}", common::stderr(&sync));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(full.topic_events("small/t"), 0);
    assert_eq!(failed(&full), failed_before, "{}", full.log());

    // Space is freed: the node writes again, says so, and catches up by itself.
    std::fs::remove_file(&ballast).unwrap();
    common::wait_for("the node to catch up after space was freed", 90, || {
        full.try_topic_events("small/t") == Some(50)
    });
    assert_eq!(full.get("/v1/status")["disk_full"], Value::Null);
    assert_eq!(full.metric("murmur_store_disk_full"), 0);
    assert_eq!(full.topic_events("big/t"), acked);
}
