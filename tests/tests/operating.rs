//! Living with the daemon as an operator: the service manager's protocol, the API over
//! TCP behind its token, and the monitoring kit checked against a live daemon.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, binary, request, wait_for};

/// Messages the daemon sends to `sock` until `until` is in one, or `secs` pass.
fn notifications(sock: &UnixDatagram, until: &str, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.lines().any(|l| l == until);
                got.push(m);
                if done {
                    return got;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {until} within {secs} s; got {got:?}");
}

/// systemd's part, played by the test: a notify socket, a watchdog of 600 ms.
#[test]
fn the_daemon_tells_the_service_manager_it_is_ready_alive_and_stopping() {
    let dir = tempfile::Builder::new()
        .prefix("murmur-test")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(dir.path().join("murmur.toml"), "[p2p]\nenabled = false\n").unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    // systemd names the process the watchdog is for: a shell that execs the daemon
    // keeps its pid.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" daemon --data-dir \"$1\""])
        .arg(binary())
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "600000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();

    // READY=1 comes first, once the API answers: the first request succeeds.
    let first = notifications(&sock, "READY=1", 30);
    assert_eq!(first.len(), 1, "something before READY=1: {first:?}");
    assert!(first[0].contains("STATUS=ready"), "{first:?}");
    let r = request(&dir.path().join("murmur.sock"), "GET", "/v1/status", None)
        .unwrap_or_else(|e| panic!("the API did not answer right after READY=1: {e}\n{}", log()));
    assert_eq!(r.status, 200);

    // WATCHDOG=1 every third of the 600 ms, while the writer answers.
    let t = Instant::now();
    let mut pings = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        pings += notifications(&sock, "WATCHDOG=1", 5).len();
    }
    assert!(
        (3..=12).contains(&pings),
        "{pings} watchdog pings in 1.5 s (every 200 ms expected)\n{}",
        log()
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let last = notifications(&sock, "STOPPING=1", 30);
    assert!(
        last.iter()
            .all(|m| m.contains("WATCHDOG=1") || m.contains("STOPPING=1")),
        "{last:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", log());
    assert!(log().contains("service watchdog on"), "{}", log());
}

/// A plain HTTP GET over TCP with an optional bearer token: (status, headers, body).
fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    http(port, "GET", path, token, "")
}

/// One HTTP request over TCP (a JSON body, possibly empty).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn the_api_over_tcp_needs_the_token_and_serves_the_dashboard_without_data() {
    let port = common::free_port();
    let n = Node::start(&format!(
        "[api]\nhttp_listen = \"127.0.0.1:{port}\"\n[fleet]\nopen = true\nheartbeat_interval = \"1s\"\n"
    ));
    let out = n.cli(&["dashboard"]);
    let url = common::stdout(&out);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let prefix = format!("http://127.0.0.1:{port}/#token=");
    assert!(url.starts_with(&prefix), "{url}");
    let token = url.trim()[prefix.len()..].to_owned();
    assert_eq!(token.len(), 64, "{url}");
    let file = std::fs::read_to_string(n.dir.join("api.token")).unwrap();
    assert_eq!(file.trim(), token);
    let out = n.cli(&["dashboard", "--token"]);
    assert_eq!(common::stdout(&out).trim(), token);

    // Every API route needs the token: none, a wrong one, and the right one.
    for path in ["/v1/status", "/metrics", "/v1/fleet/nodes", "/v1/nope"] {
        let (code, _, body) = http_get(port, path, None);
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(body.contains("unauthorized"), "{body}");
        let (code, _, _) = http_get(port, path, Some(&"0".repeat(64)));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, _, body) = http_get(port, "/v1/status", Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&n.id()), "{body}");
    // Writes too: refused without the token (nothing stored), taken with it.
    let event = r#"{"topic":"sensors/tcp","data":"1"}"#;
    let (code, _, _) = http(port, "POST", "/v1/events", None, event);
    assert_eq!(code, 401);
    assert_eq!(n.topic_events("sensors/tcp"), 0);
    let (code, _, body) = http(port, "POST", "/v1/events", Some(&token), event);
    assert_eq!(code, 200, "{body}");
    assert_eq!(n.topic_events("sensors/tcp"), 1);
    // The page and its files need none (they hold no data), and may only talk back here.
    for (path, ty) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let (code, head, body) = http_get(port, path, None);
        assert_eq!(code, 200, "{path}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains(&format!("content-type: {ty}")), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(!body.is_empty());
    }
    // The fleet view over TCP shows this node's heartbeat.
    wait_for("this node's heartbeat in its fleet view", 10, || {
        let (_, _, body) = http_get(port, "/v1/fleet/nodes", Some(&token));
        body.contains(&n.id()) && body.contains("\"state\":\"up\"")
    });
    // Off by default: `murmur dashboard` says how to turn it on.
    let off = Node::start("");
    let out = off.cli(&["dashboard"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("http_listen = \"127.0.0.1:7480\""),
        "{}",
        common::stderr(&out)
    );
}

/// Every metric the alert rules and the Grafana dashboard name is one a live daemon
/// exports, and promtool accepts the rules (`scripts/check-monitoring`).
#[test]
fn the_alert_rules_and_the_grafana_dashboard_name_only_metrics_a_daemon_exports() {
    // Two nodes on loopback, one event replicated: the per-peer series exist then.
    let cfg = "[fleet]\nopen = true\nheartbeat_interval = \"1s\"\n";
    let n = Node::start(cfg);
    let other = Node::start(cfg);
    let dial = other.cli(&["dial", &n.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    let r = n.post(
        "/v1/events",
        &serde_json::json!({"topic": "sensors/a", "data": "1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("the event replicated and a round counted", 30, || {
        other.topic_events("sensors/a") == 1
            && n.metric("murmur_heartbeats_published_total") > 0
            && n.req("GET", "/metrics", None)
                .body
                .contains("murmur_replication_lag_events{")
    });
    let metrics = n.req("GET", "/metrics", None).body;
    let file = n.dir.join("metrics.txt");
    std::fs::write(&file, &metrics).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/check-monitoring"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/check-monitoring failed:\n{}\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
}

/// A node keeps one heartbeat per node, with no retention rule configured: the
/// built-in rule prunes the older ones at each pass.
#[test]
fn heartbeats_are_kept_latest_only_without_any_rule() {
    let n = Node::start(
        "[store]\nprune_interval = \"1s\"\n[fleet]\nopen = true\nheartbeat_interval = \"1s\"\n",
    );
    wait_for("six heartbeats published", 15, || {
        n.metric("murmur_heartbeats_published_total") >= 6
    });
    // Each pass leaves one; a heartbeat may have come since the last pass (both tick
    // every second).
    wait_for("at most two heartbeats held ($fleet/health)", 10, || {
        n.topic_events("$fleet/health") <= 2
    });
    assert!(
        n.metric("murmur_pruned_events_total{rule=\"$fleet/health\"}") >= 4,
        "{}",
        n.req("GET", "/metrics", None).body
    );
    // No application writes there, as data or as a document (a document topic would
    // be out of the built-in rule's reach).
    for (path, body) in [
        (
            "/v1/events",
            serde_json::json!({"topic": "$fleet/health", "data": "{}"}),
        ),
        (
            "/v1/doc",
            serde_json::json!({"topic": "$fleet/health", "doc": "x",
                "ops": [{"op": "set", "path": "a", "value": 1}]}),
        ),
    ] {
        let r = n.post(path, &body);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body.contains("reserved_topic"), "{path}: {}", r.body);
    }
    // The one held is the newest.
    let view = n.get("/v1/fleet/nodes");
    assert!(
        view["nodes"][0]["seen_secs_ago"].as_u64() <= Some(2),
        "{view}"
    );
}

/// A node not heard from in `fleet.forget_after` leaves the view (counted as
/// forgotten); here B's clock jumps two hours past A's last heartbeat.
#[test]
fn a_node_gone_longer_than_forget_after_leaves_the_fleet_view() {
    let cfg = "[fleet]\nopen = true\nheartbeat_interval = \"1s\"\nforget_after = \"1h\"\n";
    let mut a = Node::start(cfg);
    let mut b = Node::start(cfg);
    let dial = b.cli(&["dial", &a.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    let ida = a.id();
    wait_for("B to list A", 20, || {
        b.get("/v1/fleet/nodes").to_string().contains(&ida)
    });
    a.stop();
    b.stop();
    let cfg_path = b.dir.join("murmur.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, format!("{text}\n[clock]\noffset = \"2h\"\n")).unwrap();
    b.spawn();
    let v = b.get("/v1/fleet/nodes");
    assert!(!v.to_string().contains(&ida), "{v}");
    assert_eq!(v["forgotten"], 1, "{v}");
    assert_eq!(v["total"], 1, "B itself: {v}");
    let out = b.cli(&["fleet"]);
    assert!(
        common::stdout(&out).contains("1 more not heard from in fleet.forget_after"),
        "{}",
        common::stdout(&out)
    );
}
