//! MQTT, driven by clients the project did not write: Mosquitto's `mosquitto_pub` and
//! `mosquitto_sub`, and its broker as the bridge's upstream (Debian's mosquitto-clients
//! and mosquitto; `scripts/deps --test` installs them).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{Lab, root_or_skip};
use common::{Node, stdout as stdout_of, wait_for};

use common::free_port;

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS…` to a listener on loopback.
fn pub_to(port: u16, args: &[&str]) -> (bool, String) {
    let p = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &p];
    all.extend_from_slice(args);
    mosquitto(None, "mosquitto_pub", &all)
}

/// A node with the MQTT listener on a free loopback port (and `extra` config).
fn mqtt_node(extra: &str) -> (Node, u16) {
    let port = free_port();
    let n = Node::start(&format!(
        "[mqtt]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[p2p]\nenabled = false\n"
    ));
    (n, port)
}

/// Runs a Mosquitto client to the end: (success, stdout + stderr).
fn mosquitto(ns: Option<&str>, tool: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, tool]);
            c
        }
        None => Command::new(tool),
    };
    let out = cmd.args(args).output().unwrap_or_else(|e| {
        panic!("{tool} (Debian's mosquitto-clients; scripts/deps --test): {e}")
    });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A `mosquitto_sub -v` in the background, its lines collected.
struct Sub {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    fn start(ns: Option<&str>, args: &[&str]) -> Sub {
        Self::start_into(ns, args, Arc::new(Mutex::new(Vec::new())))
    }

    /// Like [`Sub::start`], adding to `lines`.
    fn start_into(ns: Option<&str>, args: &[&str], lines: Arc<Mutex<Vec<String>>>) -> Sub {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "mosquitto_sub"]);
                c
            }
            None => Command::new("mosquitto_sub"),
        };
        let mut child = cmd
            .args(args)
            .arg("-v")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients; scripts/deps --test)");
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Sub { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The data of the events the node holds on `pattern` (URL-encoded), in order.
fn stored_data(node: &Node, pattern: &str) -> Vec<String> {
    node.get(&format!("/v1/events?pattern={pattern}"))["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the node has `n` MQTT connections (a subscriber is in).
fn connections(node: &Node, n: u64) {
    wait_for("MQTT clients to connect", 10, || {
        node.metric("murmur_mqtt_connections") >= n
    });
    // Its SUBSCRIBE follows its CONNECT at once.
    std::thread::sleep(Duration::from_millis(200));
}

/// QoS 0, 1 and 2 publishes become signed events of this node; a subscriber gets them
/// (and events published through the HTTP API) with its filter's wildcards; what the
/// node refuses closes the connection and stores nothing.
#[test]
fn mosquitto_pub_stores_events_and_mosquitto_sub_follows_them() {
    let (n, port) = mqtt_node("");
    let p = port.to_string();
    let sub = Sub::start(
        None,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            "sensors/+/temp",
            "-t",
            "alarms/#",
        ],
    );
    connections(&n, 1);
    for (qos, v) in [("0", "20.5"), ("1", "21.5"), ("2", "22.5")] {
        let (ok, out) = pub_to(port, &["-q", qos, "-t", "sensors/kitchen/temp", "-m", v]);
        assert!(ok, "QoS {qos}: {out}");
    }
    let (ok, out) = pub_to(
        port,
        &["-q", "1", "-t", "sensors/kitchen/humidity", "-m", "40"],
    );
    assert!(ok, "{out}");
    n.post(
        "/v1/events",
        &serde_json::json!({"topic": "alarms/door", "data": "open"}),
    );
    wait_for("the subscriber to get 4 messages", 10, || {
        sub.lines().len() >= 4
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sub.lines(),
        vec![
            "sensors/kitchen/temp 20.5",
            "sensors/kitchen/temp 21.5",
            "sensors/kitchen/temp 22.5",
            "alarms/door open"
        ],
        "the humidity reading matches no filter"
    );
    // Stored as this node's signed events, in order.
    let page = n.get("/v1/events?pattern=sensors/%23");
    let evs = page["events"].as_array().unwrap();
    let data: Vec<&str> = evs.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["20.5", "21.5", "22.5", "40"]);
    assert!(evs.iter().all(|e| e["author"] == n.id().as_str()));

    // Refused: a reserved topic, a wildcard in a topic name, MQTT 5. Nothing stored.
    let before = n.events();
    let (ok, _) = pub_to(port, &["-q", "1", "-t", "$fleet/health", "-m", "x"]);
    assert!(!ok, "a reserved topic is refused");
    let (ok, out) = pub_to(port, &["-V", "mqttv5", "-q", "1", "-t", "a/b", "-m", "x"]);
    assert!(!ok, "MQTT 5 is refused: {out}");
    assert_eq!(n.events(), before);
    assert!(n.metric("murmur_mqtt_published_total") >= 4);
    let st = n.get("/v1/status");
    assert_eq!(
        st["mqtt"]["listen"],
        format!("127.0.0.1:{port}").as_str(),
        "{st}"
    );
    assert_eq!(st["mqtt"]["connections"], 1, "the subscriber: {st}");
}

/// With a login configured, a client without it is refused.
#[test]
fn a_login_is_required_when_configured() {
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "s3cret\n").unwrap();
    let (n, port) = mqtt_node(&format!(
        "username = \"sensors\"\npassword_file = \"{}\"\n",
        pw.path().display()
    ));
    let (ok, out) = pub_to(port, &["-q", "1", "-t", "a/b", "-m", "x"]);
    assert!(!ok, "no login: {out}");
    let (ok, out) = pub_to(
        port,
        &[
            "-u", "sensors", "-P", "wrong", "-q", "1", "-t", "a/b", "-m", "x",
        ],
    );
    assert!(!ok, "{out}");
    let (ok, out) = pub_to(
        port,
        &[
            "-u", "sensors", "-P", "s3cret", "-q", "1", "-t", "a/b", "-m", "x",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(n.events(), 1);
}

/// A broker of its own in namespace `ns`: Mosquitto with a persistent store (so a
/// subscriber's session and its queued messages survive a restart of the broker).
struct Broker {
    /// Its namespace (None: this one, on loopback).
    ns: Option<String>,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    fn start(ns: Option<&str>, port: u16) -> Broker {
        Self::start_with(ns, port, "")
    }

    /// With `extra` lines in its config (another listener, say).
    fn start_with(ns: Option<&str>, port: u16, extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let bind = if ns.is_some() { "0.0.0.0" } else { "127.0.0.1" };
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "user root\nper_listener_settings false\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlog_dest file {}/broker.log\nlistener {port} {bind}\n{extra}",
                dir.path().display(),
                dir.path().display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            ns: ns.map(str::to_owned),
            port,
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/mosquitto"]);
                c
            }
            None => Command::new("/usr/sbin/mosquitto"),
        };
        let child = cmd
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian's mosquitto; scripts/deps --test)");
        self.child = Some(child);
        // Ready when it takes a publish.
        let (ns, port) = (self.ns.clone(), self.port.to_string());
        let ready = common::try_wait_for(10, || {
            mosquitto(
                ns.as_deref(),
                "mosquitto_pub",
                &["-h", "127.0.0.1", "-p", &port, "-t", "ready", "-m", "x"],
            )
            .0
        });
        assert!(ready, "the broker did not start:\n{}", self.log());
    }

    /// SIGTERM (the broker saves its sessions) and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A subscriber at a broker with a persistent session (QoS 1, a fixed id, not clean):
/// the broker queues for it while it is away. mosquitto_sub may end when its broker
/// goes away; `lines` starts it again, adding to the same lines.
struct SessionSub {
    ns: Option<String>,
    args: Vec<String>,
    sub: Sub,
}

impl SessionSub {
    /// Subscribes `id` to `filter` at `broker` and waits until the broker has it.
    fn start(broker: &Broker, id: &str, filter: &str) -> SessionSub {
        let args: Vec<String> = [
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-c",
            "-i",
            id,
            "-t",
            filter,
        ]
        .map(str::to_owned)
        .to_vec();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let sub = Sub::start(broker.ns.as_deref(), &a);
        wait_for("the broker's subscriber to connect", 10, || {
            broker.log().contains("New client connected") && broker.log().contains(id)
        });
        std::thread::sleep(Duration::from_millis(300));
        SessionSub {
            ns: broker.ns.clone(),
            args,
            sub,
        }
    }

    fn lines(&mut self) -> Vec<String> {
        if self.sub.child.try_wait().ok().flatten().is_some() {
            let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
            self.sub = Sub::start_into(self.ns.as_deref(), &a, self.sub.lines.clone());
        }
        self.sub.lines()
    }
}

/// Three hosts: a sensor publishes at QoS 1 into host A's listener; `mosquitto_sub` on
/// host B's listener gets every reading (replicated); A's bridge forwards them to a
/// Mosquitto broker on host C, which is stopped for 30 s while the readings go on.
/// After it is back, a subscriber there has every reading, in order, none missing.
#[test]
fn a_sensor_on_host_a_reaches_host_b_and_a_broker_that_was_down_for_30_s() {
    if !root_or_skip("a_sensor_on_host_a_reaches_host_b_and_a_broker_that_was_down_for_30_s") {
        return;
    }
    let p2p = "[p2p]\nmdns = true\nlisten = [\"/ip4/0.0.0.0/tcp/7470\"]\nanti_entropy_interval = \"2s\"\n";
    let mut lab = Lab::empty(3);
    lab.start(
        0,
        &format!(
            "[mqtt]\nlisten = \"127.0.0.1:1883\"\n[[mqtt.bridge]]\nname = \"cloud\"\nbroker = \"10.77.0.3:1883\"\npattern = \"sensors/#\"\nremote_prefix = \"site-a/\"\n{p2p}"
        ),
    );
    lab.start(1, &format!("[mqtt]\nlisten = \"127.0.0.1:1883\"\n{p2p}"));
    let mut broker = Broker::start(Some(&lab.hosts[2].ns), 1883);
    let (a_ns, b_ns) = (lab.hosts[0].ns.clone(), lab.hosts[1].ns.clone());
    wait_for("A and B to meet", 30, || {
        lab.node(0).get("/v1/peers")["peers"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    // Subscribers: on B's own listener, and at the broker with a persistent session
    // (QoS 1, a fixed id, not clean: the broker queues for it while it is away).
    let on_b = Sub::start(
        Some(&b_ns),
        &["-h", "127.0.0.1", "-q", "1", "-t", "sensors/#"],
    );
    let mut at_broker = SessionSub::start(&broker, "checker", "site-a/sensors/#");
    connections(lab.node(1), 1);

    // The sensor: one mosquitto_pub -l (a line a message), QoS 1, paced.
    let mut sensor = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a_ns,
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-q",
            "1",
            "-t",
            "sensors/s1/temp",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut input = sensor.stdin.take().unwrap();
    let mut sent = 0u32;
    let mut send_for = |secs: u64, sent: &mut u32| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            writeln!(input, "r{}", *sent).unwrap();
            input.flush().unwrap();
            *sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    send_for(3, &mut sent);
    let before_outage = sent;
    let first = common::try_wait_for(20, || at_broker.lines().len() >= before_outage as usize);
    assert!(
        first,
        "the broker's subscriber has {} of the first {before_outage} readings after 20 s (B has {})\nA's log:\n{}\nbroker log:\n{}",
        at_broker.lines().len(),
        on_b.lines().len(),
        lab.node(0).log(),
        broker.log()
    );
    // The broker goes away for 30 s; readings go on.
    broker.stop();
    let down = Instant::now();
    send_for(30, &mut sent);
    eprintln!(
        "broker down {:.1} s; {} readings sent meanwhile",
        down.elapsed().as_secs_f64(),
        sent - before_outage
    );
    broker.spawn();
    send_for(3, &mut sent);
    drop(input);
    let status = sensor.wait().unwrap();
    assert!(status.success(), "mosquitto_pub failed");
    let want: Vec<String> = (0..sent).map(|i| format!("r{i}")).collect();

    // B got every reading, in order, once.
    wait_for("B's subscriber to get every reading", 30, || {
        on_b.lines().len() >= sent as usize
    });
    let got_b: Vec<String> = on_b
        .lines()
        .iter()
        .map(|l| l.trim_start_matches("sensors/s1/temp ").to_owned())
        .collect();
    assert_eq!(got_b, want, "B's subscriber");

    // The broker: the checker may have been dropped by the restart; it comes back
    // with its session, and the broker hands it what was queued.
    let t = Instant::now();
    let have_all = |lines: &[String]| {
        let got: std::collections::HashSet<&str> = lines
            .iter()
            .map(|l| l.trim_start_matches("site-a/sensors/s1/temp "))
            .collect();
        want.iter().all(|w| got.contains(w.as_str()))
    };
    loop {
        let lines = at_broker.lines();
        if have_all(&lines) {
            // Every reading, and in order of first arrival: a reading may come again
            // (at least once: what was in flight at the outage), never out of order.
            let vals: Vec<u32> = lines
                .iter()
                .filter_map(|l| l.rsplit_once(" r").and_then(|(_, n)| n.parse().ok()))
                .collect();
            let mut seen = std::collections::HashSet::new();
            let first: Vec<u32> = vals.iter().copied().filter(|v| seen.insert(*v)).collect();
            assert_eq!(
                first,
                (0..sent).collect::<Vec<_>>(),
                "readings at the broker, in order of first arrival"
            );
            let bridged = lab
                .node(0)
                .metric("murmur_bridge_forwarded_total{bridge=\"cloud\"}");
            eprintln!(
                "bridge: {sent} readings, {} lines at the broker ({} sent again), {bridged} acknowledged by the broker, all there {:.1} s after the restart",
                vals.len(),
                vals.len() - first.len(),
                t.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the broker's subscriber lacks readings 60 s after the restart: has {} of {sent}\nA's log:\n{}\nbroker log:\n{}",
            at_broker.lines().len(),
            lab.node(0).log(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = lab.node(0).get("/v1/consumers/bridge.cloud");
    assert_eq!(c["pending"].as_u64(), Some(0), "{c}");
}

/// A bridge resumes where it stopped after a SIGKILL of its daemon: every event reaches
/// the broker, in order of first arrival, and only what was in flight comes twice.
#[test]
fn a_bridge_resumes_after_its_daemon_is_killed() {
    let port = free_port();
    let broker = Broker::start(None, port);
    let p = port.to_string();
    let checker = Sub::start(
        None,
        &["-h", "127.0.0.1", "-p", &p, "-q", "1", "-t", "up/#"],
    );
    wait_for("the checker to connect", 10, || {
        broker.log().contains("New client connected")
    });
    std::thread::sleep(Duration::from_millis(300));
    // Events stored before the bridge first starts are forwarded too.
    let mut n = Node::start(&format!(
        "[mqtt]\n[[mqtt.bridge]]\nname = \"up\"\nbroker = \"127.0.0.1:{port}\"\npattern = \"up/#\"\ninflight = 20\n[p2p]\nenabled = false\n"
    ));
    let batch = |n: &Node, from: u32, to: u32| {
        let evs: Vec<serde_json::Value> = (from..to)
            .map(|i| serde_json::json!({"topic": "up/t", "data": format!("e{i}")}))
            .collect();
        let r = n.post("/v1/events/batch", &serde_json::json!({ "events": evs }));
        assert_eq!(r.status, 200, "{}", r.body);
    };
    batch(&n, 0, 2000);
    // Killed while forwarding.
    wait_for("the bridge to forward some", 20, || {
        checker.lines().len() >= 200
    });
    n.kill();
    let at_kill = checker.lines().len();
    n.spawn();
    batch(&n, 2000, 3000);
    let ok = common::try_wait_for(60, || {
        let got: std::collections::HashSet<String> = checker.lines().into_iter().collect();
        got.len() >= 3000
    });
    let lines = checker.lines();
    assert!(
        ok,
        "{} lines at the broker; daemon log:\n{}",
        lines.len(),
        n.log()
    );
    let vals: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.rsplit_once(" e").and_then(|(_, v)| v.parse().ok()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let first: Vec<u32> = vals.iter().copied().filter(|v| seen.insert(*v)).collect();
    assert_eq!(
        first,
        (0..3000).collect::<Vec<_>>(),
        "every event, in order of first arrival"
    );
    let again = vals.len() - first.len();
    eprintln!(
        "bridge through a SIGKILL: 3000 events, {at_kill} at the broker at the kill, {again} sent again after it"
    );
    // At most the window (20) and what the broker acknowledged since the bridge last
    // recorded its position (half a window, or 10 ms).
    assert!(
        again <= 60,
        "{again} sent again: more than the window and an ack interval"
    );
    // `murmur status` says how the bridge is doing.
    wait_for("the bridge's status to show nothing pending", 10, || {
        let b = &n.get("/v1/status")["mqtt"]["bridges"][0];
        b["connected"] == true && b["pending"] == 0 && b["forwarded"].as_u64() > Some(0)
    });
    let text = stdout_of(&n.cli(&["status"]));
    assert!(
        text.contains(&format!(
            "bridge      up → 127.0.0.1:{port} (up/#): connected"
        )),
        "{text}"
    );
    // A configured bridge's position cannot be deleted; once the bridge is gone from
    // the config, it can.
    let r = n.req("DELETE", "/v1/consumers/bridge.up", None);
    assert_eq!(r.status, 409, "{}", r.body);
    n.stop();
    std::fs::write(n.dir.join("murmur.toml"), "[p2p]\nenabled = false\n").unwrap();
    n.spawn();
    let r = n.req("DELETE", "/v1/consumers/bridge.up", None);
    assert_eq!(r.status, 204, "{}", r.body);
}

/// A CONNECT by hand: protocol name and level, client id, keep-alive 60 s, clean.
fn connect_packet(name: &str, level: u8, client: &str, v5: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3C]);
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client.len() as u16).to_be_bytes());
    body.extend_from_slice(client.as_bytes());
    packet(0x10, &body)
}

fn connack(port: u16, packet: &[u8]) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(packet).unwrap();
    let mut ack = [0u8; 4];
    let n = s.read(&mut ack).unwrap_or(0);
    (s, ack[..n].to_vec())
}

/// MQTT 5 and 3.1 clients are told "unacceptable protocol version" (CONNACK code 1)
/// instead of a dropped connection; a second connection with a client id in use ends
/// the first (MQTT-3.1.4-2).
#[test]
fn other_protocol_versions_are_told_so_and_a_client_id_has_one_connection() {
    use std::io::Read;
    let (n, port) = mqtt_node("");
    let (_, ack) = connack(port, &connect_packet("MQTT", 5, "five", true));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x01], "MQTT 5");
    let (_, ack) = connack(port, &connect_packet("MQIsdp", 3, "three", false));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x01], "MQTT 3.1");
    let (_, ack) = pub_to(port, &["-V", "mqttv31", "-t", "a", "-m", "x"]);
    assert!(ack.contains("unacceptable protocol version"), "{ack}");

    let (mut first, ack) = connack(port, &connect_packet("MQTT", 4, "same-id", false));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let (_second, ack) = connack(port, &connect_packet("MQTT", 4, "same-id", false));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let mut rest = [0u8; 16];
    assert_eq!(
        first.read(&mut rest).unwrap_or(0),
        0,
        "the first connection was closed"
    );
    wait_for("one connection left", 5, || {
        n.metric("murmur_mqtt_connections") == 1
    });
}

/// A client that sends part of a CONNECT and never finishes gives its slot back at the
/// CONNECT deadline (10 s), one that hangs up at once: a few bytes cannot lock the
/// listener.
#[test]
fn a_partial_connect_gives_its_slot_back() {
    let (n, port) = mqtt_node("max_connections = 2\n");
    // Held open, never finishing their CONNECT.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&connect_packet("MQTT", 4, "partial", false)[..5])
            .unwrap();
        held.push(s);
    }
    wait_for("both partial connections to be counted", 5, || {
        n.metric("murmur_mqtt_connections") == 2
    });
    let t = Instant::now();
    wait_for("the slots to come back", 15, || {
        n.metric("murmur_mqtt_connections") == 0
    });
    eprintln!("slots back after {:.1} s", t.elapsed().as_secs_f64());
    // One that hangs up half-way gives its slot back at once.
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&connect_packet("MQTT", 4, "partial", false)[..5])
            .unwrap();
    }
    wait_for("the hung-up connection's slot", 2, || {
        n.metric("murmur_mqtt_connections") == 0
    });
    let (ok, out) = pub_to(port, &["-q", "1", "-t", "a/b", "-m", "x"]);
    assert!(ok, "{out}");
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl: (dir, ca.pem,
/// cert.pem, key.pem).
fn certificates() -> (tempfile::TempDir, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let run = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("cd {d} && openssl {args}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.path().join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=murmur-test-ca",
    );
    run(
        "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out req.csr -subj /CN=localhost",
    );
    run(
        "x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext",
    );
    (
        dir,
        format!("{d}/ca.pem"),
        format!("{d}/cert.pem"),
        format!("{d}/key.pem"),
    )
}

/// MQTT over TLS both ways: the listener with a certificate takes `mosquitto_pub
/// --cafile` and refuses plain MQTT; a bridge with `tls = true` forwards to a
/// Mosquitto broker's TLS listener, checking its certificate against `ca_file`. Beyond
/// loopback, a listener without TLS is refused unless `allow_plaintext`.
#[test]
fn mqtt_over_tls_to_the_listener_and_from_a_bridge() {
    let (_certs, ca, cert, key) = certificates();
    let (n, port) = mqtt_node(&format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"));
    let (ok, out) = pub_to(
        port,
        &["--cafile", &ca, "-q", "1", "-t", "tls/a", "-m", "over tls"],
    );
    assert!(ok, "{out}");
    let (ok, _) = pub_to(port, &["-q", "1", "-t", "tls/a", "-m", "plain"]);
    assert!(!ok, "plain MQTT to the TLS listener");
    assert_eq!(stored_data(&n, "tls/%23"), ["over tls"]);

    // The bridge: a broker with a TLS listener (and a plain one for the checker).
    let (plain, tls) = (free_port(), free_port());
    let broker = Broker::start_with(
        None,
        plain,
        &format!("listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"),
    );
    let checker = Sub::start(
        None,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &plain.to_string(),
            "-q",
            "1",
            "-t",
            "up/#",
        ],
    );
    wait_for("the checker to connect", 10, || {
        broker.log().contains("New client connected")
    });
    std::thread::sleep(Duration::from_millis(300));
    let b = Node::start(&format!(
        "[mqtt]\n[[mqtt.bridge]]\nname = \"secure\"\nbroker = \"127.0.0.1:{tls}\"\npattern = \"up/#\"\ntls = true\nca_file = \"{ca}\"\n[p2p]\nenabled = false\n"
    ));
    for i in 0..20 {
        b.post(
            "/v1/events",
            &serde_json::json!({"topic": "up/t", "data": format!("s{i}")}),
        );
    }
    let ok = common::try_wait_for(20, || checker.lines().len() >= 20);
    assert!(
        ok,
        "{:?}\ndaemon log:\n{}\nbroker log:\n{}",
        checker.lines(),
        b.log(),
        broker.log()
    );
    assert_eq!(
        checker.lines(),
        (0..20).map(|i| format!("up/t s{i}")).collect::<Vec<_>>()
    );

    // Beyond loopback: TLS or an explicit allow_plaintext.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "x\n").unwrap();
    let cfg = |extra: &str| {
        format!(
            "[mqtt]\nlisten = \"0.0.0.0:{}\"\nusername = \"u\"\npassword_file = \"{}/pw\"\n{extra}[p2p]\nenabled = false\n[fleet]\nopen = true\n",
            free_port(),
            dir.path().display()
        )
    };
    std::fs::write(dir.path().join("murmur.toml"), cfg("")).unwrap();
    // In a network namespace of its own, in case it started after all.
    let mut child = Command::new("unshare")
        .args(["-n"])
        .arg(common::binary())
        .args(["daemon", "--data-dir"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("a listener beyond loopback without TLS started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tls_cert"), "{err}");
}

/// A client that goes away without DISCONNECT has its will published as an event; one
/// that says DISCONNECT does not.
#[test]
fn a_lost_client_s_will_is_published() {
    let (n, port) = mqtt_node("");
    let p = port.to_string();
    let will = |payload: &str| {
        vec![
            "-h".to_owned(),
            "127.0.0.1".into(),
            "-p".into(),
            p.clone(),
            "-t".into(),
            "ignored/x".into(),
            "--will-topic".into(),
            "devices/d1/status".into(),
            "--will-payload".into(),
            payload.into(),
        ]
    };
    // Lost: killed while subscribed.
    let mut lost = Command::new("mosquitto_sub")
        .args(will("gone"))
        .spawn()
        .unwrap();
    wait_for("the client to connect", 10, || {
        n.metric("murmur_mqtt_connections") == 1
    });
    lost.kill().unwrap();
    lost.wait().unwrap();
    wait_for("the will to be stored", 10, || {
        n.topic_events("devices/d1/status") == 1
    });
    // Clean: mosquitto_sub -C 1 says DISCONNECT after one message.
    let mut clean = Command::new("mosquitto_sub")
        .args(will("not sent"))
        .args(["-C", "1"])
        .spawn()
        .unwrap();
    wait_for("the second client to connect", 10, || {
        n.metric("murmur_mqtt_connections") == 1
    });
    std::thread::sleep(Duration::from_millis(200));
    n.post(
        "/v1/events",
        &serde_json::json!({"topic": "ignored/x", "data": "bye"}),
    );
    clean.wait().unwrap();
    wait_for("the second client to leave", 10, || {
        n.metric("murmur_mqtt_connections") == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stored_data(&n, "devices/%23"), ["gone"]);
}

/// An MQTT packet by hand: the fixed header's first byte, the remaining length as MQTT's
/// variable-length integer, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        p.push(b);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

/// Reads one packet: (first byte, body).
fn read_packet(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)
        .expect("a packet from the listener");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("a remaining length");
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("a packet body");
    (first[0], body)
}

/// A QoS 2 PUBLISH sent twice on one connection (the second with DUP, as a client
/// resends after a lost PUBREC) is stored once, each copy gets its PUBREC, and PUBREL
/// gets PUBCOMP; the next packet id is a new event.
#[test]
fn a_qos_2_resend_on_the_same_connection_is_stored_once() {
    let (n, port) = mqtt_node("");
    let (mut s, ack) = connack(port, &connect_packet("MQTT", 4, "qos2", false));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let publish = |dup: bool, pkid: u16, payload: &str| {
        let mut body = Vec::new();
        body.extend_from_slice(&(b"q2/t".len() as u16).to_be_bytes());
        body.extend_from_slice(b"q2/t");
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(payload.as_bytes());
        packet(0x34 | if dup { 0x08 } else { 0 }, &body)
    };
    s.write_all(&publish(false, 7, "once")).unwrap();
    assert_eq!(read_packet(&mut s), (0x50, vec![0, 7]), "PUBREC");
    s.write_all(&publish(true, 7, "once")).unwrap();
    assert_eq!(read_packet(&mut s), (0x50, vec![0, 7]), "PUBREC again");
    s.write_all(&packet(0x62, &[0, 7])).unwrap();
    assert_eq!(read_packet(&mut s), (0x70, vec![0, 7]), "PUBCOMP");
    // The id is free again: the same id later is a new message.
    s.write_all(&publish(false, 7, "twice")).unwrap();
    assert_eq!(read_packet(&mut s), (0x50, vec![0, 7]), "PUBREC");
    s.write_all(&packet(0x62, &[0, 7])).unwrap();
    assert_eq!(read_packet(&mut s), (0x70, vec![0, 7]), "PUBCOMP");
    assert_eq!(stored_data(&n, "q2/t"), ["once", "twice"]);
}

/// A connection holds at most 100 subscriptions: the 101st filter is refused in the
/// SUBACK (0x80) while the first 100 are granted, and a filter already held can still be
/// subscribed again.
#[test]
fn a_connection_holds_at_most_100_subscriptions() {
    let (_n, port) = mqtt_node("");
    let (mut s, ack) = connack(port, &connect_packet("MQTT", 4, "many", false));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let subscribe = |pkid: u16, filters: &[String]| {
        let mut body = pkid.to_be_bytes().to_vec();
        for f in filters {
            body.extend_from_slice(&(f.len() as u16).to_be_bytes());
            body.extend_from_slice(f.as_bytes());
            body.push(1);
        }
        packet(0x82, &body)
    };
    let filters: Vec<String> = (0..101).map(|i| format!("s/{i}/+")).collect();
    s.write_all(&subscribe(1, &filters)).unwrap();
    let (kind, body) = read_packet(&mut s);
    assert_eq!(kind, 0x90, "SUBACK");
    assert_eq!(body[..2], [0, 1]);
    let codes = &body[2..];
    assert_eq!(codes.len(), 101);
    assert!(codes[..100].iter().all(|c| *c == 1), "{codes:?}");
    assert_eq!(codes[100], 0x80, "the 101st is refused");
    // Another new one is still refused; one it holds is granted again.
    s.write_all(&subscribe(2, &["s/new/+".into(), "s/5/+".into()]))
        .unwrap();
    assert_eq!(read_packet(&mut s), (0x90, vec![0, 2, 0x80, 1]));
}

/// Events that retention pruned before a bridge forwarded them are skipped loudly: a
/// warning and `murmur_bridge_pruned_gaps_total`, and the bridge goes on with what is
/// left, in order.
#[test]
fn a_bridge_skips_what_retention_pruned_and_says_so() {
    let port = free_port();
    // The broker's subscriber has a session there (kept while the broker is down), so
    // it gets whatever the bridge sends once the broker is back.
    let mut broker = Broker::start(None, port);
    let mut checker = SessionSub::start(&broker, "checker", "up/#");
    broker.stop();
    // No broker: the bridge retries while retention keeps the last 10 of 100.
    let n = Node::start(&format!(
        "[store]\nprune_interval = \"1s\"\n[[retention]]\npattern = \"up/#\"\nmax_events_per_log = 10\n[mqtt]\n[[mqtt.bridge]]\nname = \"up\"\nbroker = \"127.0.0.1:{port}\"\npattern = \"up/#\"\n[p2p]\nenabled = false\n"
    ));
    let evs: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"topic": "up/t", "data": format!("e{i}")}))
        .collect();
    let r = n.post("/v1/events/batch", &serde_json::json!({ "events": evs }));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("retention to keep the last 10", 20, || {
        n.topic_events("up/t") == 10
    });
    broker.spawn();
    // The bridge's back-off is at most 10 s.
    let ok = common::try_wait_for(30, || checker.lines().len() >= 10);
    let lines = checker.lines();
    assert!(ok, "{lines:?}\n{}", n.log());
    let data: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.rsplit_once(' ').map(|(_, d)| d))
        .collect();
    let want: Vec<String> = (90..100).map(|i| format!("e{i}")).collect();
    assert_eq!(data, want, "what was left, in order");
    assert!(
        n.metric("murmur_bridge_pruned_gaps_total{bridge=\"up\"}") >= 1,
        "the gap is counted"
    );
    assert!(
        n.log()
            .contains("retention pruned events of its pattern before they were forwarded"),
        "{}",
        n.log()
    );
}
