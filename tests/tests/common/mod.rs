//! Harness for tests that run the real `murmur` binary.
#![allow(dead_code)]

pub mod netns;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Wall-clock ms since the epoch.
/// A loopback TCP port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A new pre-shared fleet key file (`murmur genpsk`), removed when dropped.
pub fn psk_file() -> tempfile::NamedTempFile {
    let key = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let out = Command::new(binary()).arg("genpsk").output().unwrap();
    assert!(out.status.success());
    std::fs::write(key.path(), &out.stdout).unwrap();
    key
}

/// The `murmur` binary: `$MURMUR_BIN`, or `murmur` next to the test's `deps/` directory
/// (the README's test command builds it first).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MURMUR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join("murmur");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release --bins)",
        bin.display()
    );
    bin
}

/// Polls `f` every 50 ms until it holds, failing the test after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` for up to `secs`; whether it became true.
#[allow(dead_code)]
pub fn try_wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// libp2p on loopback, mDNS off.
pub const LOOPBACK_P2P: &str = "\n[p2p]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n";

/// A running daemon in its own temp data dir. SIGKILLed on drop if still running.
pub struct Node {
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Network namespace the daemon runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// A fresh data dir with `config` (TOML) written as its murmur.toml. Unless the
    /// config has its own `[p2p]` section, libp2p listens on loopback only and mDNS is
    /// off: tests never send traffic beyond this machine's loopback.
    pub fn start(config: &str) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("murmur-test")
            .tempdir_in("/tmp")
            .unwrap();
        let mut config = config.to_owned();
        if !config.contains("[p2p]") {
            config.push_str(LOOPBACK_P2P);
        }
        std::fs::write(tmp.path().join("murmur.toml"), config).unwrap();
        let mut n = Node {
            dir: tmp.path().to_path_buf(),
            child: None,
            netns: None,
            _tmp: Some(tmp),
        };
        n.spawn();
        n
    }

    /// A daemon on the data dir `dir` (which the caller owns), with `config` as is.
    pub fn start_at(dir: &std::path::Path, config: &str) -> Node {
        std::fs::write(dir.join("murmur.toml"), config).unwrap();
        let mut n = Node {
            dir: dir.to_path_buf(),
            child: None,
            netns: None,
            _tmp: None,
        };
        n.spawn();
        n
    }

    /// A daemon inside network namespace `ns`, with `config` used as is.
    pub fn start_in(ns: &str, config: &str) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("murmur-test")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(tmp.path().join("murmur.toml"), config).unwrap();
        let mut n = Node {
            dir: tmp.path().to_path_buf(),
            child: None,
            netns: Some(ns.to_owned()),
            _tmp: Some(tmp),
        };
        n.spawn();
        n
    }

    /// A daemon inside network namespace `ns` on the data dir `dir` (which the caller
    /// owns: a file system the test mounted, say), with `config` used as is.
    pub fn start_in_at(ns: &str, dir: &std::path::Path, config: &str) -> Node {
        std::fs::write(dir.join("murmur.toml"), config).unwrap();
        let mut n = Node {
            dir: dir.to_path_buf(),
            child: None,
            netns: Some(ns.to_owned()),
            _tmp: None,
        };
        n.spawn();
        n
    }

    /// (Re)starts the daemon on this data dir and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Tests run open fleets unless their config chooses (a node that speaks to the
        // network must: `FleetConfig::mode`), and without heartbeats unless they ask:
        // tests count the events they publish, and a heartbeat is one more.
        let cfg_path = self.dir.join("murmur.toml");
        if let Ok(cfg) = std::fs::read_to_string(&cfg_path) {
            let quiet = "heartbeat_interval = \"0s\"\n";
            let cfg = if !cfg.contains("[fleet]") {
                format!("{cfg}\n[fleet]\nopen = true\n{quiet}")
            } else if !cfg.contains("heartbeat_interval") {
                cfg.replacen("[fleet]\n", &format!("[fleet]\n{quiet}"), 1)
            } else {
                cfg
            };
            std::fs::write(&cfg_path, cfg).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the daemon in place: the child pid is the daemon's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = cmd
            .args(["daemon", "--data-dir"])
            .arg(&self.dir)
            // MURMUR_TEST_LOG sets the daemons' log filter, to look into a failure.
            .env(
                "RUST_LOG",
                std::env::var("MURMUR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.try_request("GET", "/v1/status", None)
                && r.status == 200
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let cfg = std::fs::read_to_string(self.dir.join("murmur.toml")).unwrap_or_default();
                panic!(
                    "daemon exited during startup ({st}):\n{}\nconfig:\n{cfg}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("murmur.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL, no cleanup at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Response> {
        request(&self.socket(), method, path, body)
    }

    /// A request that must get an answer.
    pub fn req(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self.req("GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.req("POST", path, Some(&body.to_string()))
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// Events held in `topic` (all logs).
    pub fn topic_events(&self, topic: &str) -> u64 {
        self.get("/v1/topics")["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .find(|t| t["topic"] == topic)
            .map_or(0, |t| t["events"].as_u64().unwrap_or(0))
    }

    /// [`Node::topic_events`], or `None` while the daemon does not answer (it is
    /// reopening its store, say).
    pub fn try_topic_events(&self, topic: &str) -> Option<u64> {
        let r = self.try_request("GET", "/v1/topics", None).ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        let topics = v["topics"].as_array()?.clone();
        Some(
            topics
                .iter()
                .find(|t| t["topic"] == topic)
                .map_or(0, |t| t["events"].as_u64().unwrap_or(0)),
        )
    }

    /// This daemon's loopback TCP multiaddr with its peer id (for dialing it).
    pub fn tcp_addr(&self) -> String {
        let p = self.get("/v1/peers");
        let id = p["peer_id"].as_str().expect("peer id");
        let addr = p["listen"]
            .as_array()
            .expect("listen addresses")
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            .expect("a loopback tcp listener");
        format!("{addr}/p2p/{id}")
    }

    pub fn events(&self) -> u64 {
        self.get("/v1/status")["events"].as_u64().unwrap()
    }

    /// The value of the metric series `series` (name and labels as exposed, e.g.
    /// `murmur_events_received_total{path="gossip"}`), 0 when absent.
    /// Installs `cert` as this node's fleet certificate (`POST /v1/fleet/join`).
    pub fn fleet_join(&self, cert: &murmur_core::fleet::Cert) {
        let text = murmur_daemon::fleet::cert_to_text(cert);
        let r = self.post("/v1/fleet/join", &serde_json::json!({ "cert": text }));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Publishes a signed policy entry on the fleet's policy log (`POST /v1/fleet/policy`).
    pub fn fleet_entry(&self, entry: &murmur_core::fleet::Entry) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(entry.encode());
        let r = self.post("/v1/fleet/policy", &serde_json::json!({ "entry_b64": b64 }));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Events of `author`'s log in `topic` held here (from its head and base).
    pub fn log_len(&self, topic: &str, author: &str) -> u64 {
        self.get("/v1/topics")["topics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["topic"] == topic)
            .flat_map(|t| t["logs"].as_array().cloned().unwrap_or_default())
            .filter(|l| l["author"] == author)
            .map(|l| l["head_seq"].as_u64().unwrap() + 1 - l["base"].as_u64().unwrap())
            .sum()
    }

    /// This node's id (its key, the author of its events).
    pub fn id(&self) -> String {
        self.get("/v1/status")["author"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn metric(&self, series: &str) -> u64 {
        let m = self.req("GET", "/metrics", None).body;
        m.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Lost live pushes are repaired by reconnecting, quietly for the test: said
        // here, so a run shows where they happen (`--nocapture`, or a failing test).
        for l in self
            .log()
            .lines()
            .filter(|l| l.contains("live push no longer reaches us"))
        {
            eprintln!("{}: {l}", self.dir.display());
        }
        self.kill();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a Unix socket, `Connection: close`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: murmur\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        // A server may answer an early error (a path that is not UTF-8) before it has
        // read the body, and close: the answer is still there to read.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e);
        }
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The `data` of each line of `murmur sub --json` output.
pub fn payloads(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event ({e}): {l}"));
            v["data"].as_str().expect("data").to_owned()
        })
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Bytes of the files directly in `dir` (a database directory), 0 if unreadable.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A tmpfs of `size` (e.g. "48m") mounted by the test on a fresh directory in /tmp:
/// a small disk of its own. Unmounted (lazily: a daemon may still hold it) on drop.
/// Needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("murmur-tmpfs")
            .tempdir_in("/tmp")
            .unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
