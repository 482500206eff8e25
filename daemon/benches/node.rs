//! Node benchmark: local publishing through the real API (Unix socket, HTTP, JSON,
//! group commit) against the machine's own ceiling measured in the same run (a raw loop
//! that signs the same events and writes them straight to RocksDB in batches).
//!
//! Run: `scripts/bench` (or `cargo bench -p murmur-daemon --bench node` after
//! `cargo build --release --bins`). Bounded: fixed event counts and a time limit.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_client::Client;
use murmur_client::api::{BatchRequest, BatchResponse, PublishRequest, Published};
use murmur_core::{Draft, Durability, Event, Keypair, Payload, Seq, Store, Timestamp, Topic};
use murmur_daemon::config::{Config, SyncPolicy};
use murmur_store::{RocksConfig, RocksStore};
use tokio_util::sync::CancellationToken;

// The `murmur` binary's allocator, so the in-process daemon runs as it does there.
#[global_allocator]
static ALLOC: murmur_daemon::alloc::Jemalloc = murmur_daemon::alloc::Jemalloc;

const PAYLOAD: usize = 256;
const BATCH: usize = 1000;
const BATCH_EVENTS: usize = 100_000;
const SINGLE_EVENTS: usize = 10_000;
const LATENCY_REQUESTS: usize = 2_000;
/// Events in the publish→follow run, one per millisecond.
const FOLLOW_EVENTS: usize = 3_000;

/// A distinct, incompressible-looking payload per seed (alphanumeric, so it travels as
/// JSON text), so the disk figures are not flattered by LZ4.
fn payload(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Sign + write straight to RocksDB, `BATCH` events per WriteBatch.
fn raw_ceiling(dir: &Path, durability: Durability) -> f64 {
    let store = RocksStore::open(dir, &RocksConfig::default()).expect("open");
    let key = Keypair::from_seed(&[9; 32]);
    let topic = Topic::new("bench/raw").expect("topic");
    let mut prev = None;
    let t0 = Instant::now();
    for b in 0..BATCH_EVENTS / BATCH {
        let mut events = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let seq = (b * BATCH + i) as u64;
            let d = Draft {
                topic: topic.clone(),
                seq: Seq(seq),
                prev,
                time: Timestamp::from_ms(1_700_000_000_000 + seq),
                body: Payload::data(Bytes::from(payload(seq))),
            };
            let ev = Event::sign(&d, &key).expect("sign");
            prev = Some(ev.id());
            events.push(ev);
        }
        store.insert(&events, durability).expect("insert");
    }
    BATCH_EVENTS as f64 / t0.elapsed().as_secs_f64()
}

struct Running {
    socket: std::path::PathBuf,
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<murmur_daemon::node::Exit>>,
}

async fn start(dir: &Path, sync: SyncPolicy) -> Running {
    let mut cfg = Config::default();
    cfg.store.sync = sync;
    cfg.p2p.enabled = false; // a single-node benchmark: no network at all
    let socket = cfg.socket_path(dir);
    let token = CancellationToken::new();
    let task = tokio::spawn(murmur_daemon::node::run(
        dir.to_path_buf(),
        cfg,
        token.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::new(&socket)
        .get::<serde_json::Value>("/v1/status")
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "node did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        socket,
        token,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        self.task.await.expect("join").expect("node");
    }
}

async fn batch_throughput(socket: &Path, clients: usize) -> f64 {
    let t0 = Instant::now();
    let per_client = BATCH_EVENTS / BATCH / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                let mut client = Client::new(&socket);
                let req = BatchRequest {
                    events: (0..BATCH)
                        .map(|i| PublishRequest {
                            topic: format!("bench/batch/{c}"),
                            data: Some(payload((c * BATCH + i) as u64)),
                            ..Default::default()
                        })
                        .collect(),
                };
                for _ in 0..per_client {
                    let r: BatchResponse =
                        client.post("/v1/events/batch", &req).await.expect("batch");
                    assert_eq!(r.events.len(), BATCH);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    (per_client * clients * BATCH) as f64 / t0.elapsed().as_secs_f64()
}

/// `clients` concurrent publishers, one event per request; returns (events/s, sorted
/// latencies).
async fn singles(socket: &Path, clients: usize, total: usize) -> (f64, Vec<Duration>) {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                let mut client = Client::new(&socket);
                let mut lat = Vec::with_capacity(total / clients);
                for i in 0..total / clients {
                    let req = PublishRequest {
                        topic: format!("bench/single/{c}"),
                        data: Some(payload((1_000_000 * (c + 1) + i) as u64)),
                        ..Default::default()
                    };
                    let s = Instant::now();
                    let _: Published = client.post("/v1/events", &req).await.expect("publish");
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let rate = all.len() as f64 / t0.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// What a subscriber lives with: one client publishes `count` events at 1,000/s, one
/// follower of the topic receives them; returns the sorted times from just before each
/// publish request to its arrival at the follower.
async fn publish_follow(socket: &Path, count: usize) -> Vec<Duration> {
    use futures_util::StreamExt;
    let mut follower = Client::new(socket);
    let mut stream = follower.follow("bench/follow", None).await.expect("follow");
    let sent: std::sync::Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        std::sync::Arc::new(std::sync::Mutex::new(vec![None; count]));
    let publisher = {
        let (socket, sent) = (socket.to_path_buf(), sent.clone());
        tokio::spawn(async move {
            let mut client = Client::new(&socket);
            let mut every = tokio::time::interval(Duration::from_millis(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 0..count {
                every.tick().await;
                let req = PublishRequest {
                    topic: "bench/follow".into(),
                    data: Some(payload(i as u64)),
                    ..Default::default()
                };
                sent.lock().expect("lock")[i] = Some(Instant::now());
                let _: Published = client.post("/v1/events", &req).await.expect("publish");
            }
        })
    };
    let mut lat = Vec::with_capacity(count);
    while lat.len() < count {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the follower receives every event")
            .expect("stream open")
            .expect("an event");
        let at = Instant::now();
        if let Some(t) = sent
            .lock()
            .expect("lock")
            .get(ev.seq as usize)
            .copied()
            .flatten()
        {
            lat.push(at - t);
        }
    }
    publisher.await.expect("publisher");
    lat.sort();
    lat
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn idle_rss_mb() -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("murmur");
    if !bin.exists() {
        eprintln!(
            "(idle RSS skipped: {} not built; run `cargo build --release --bins`)",
            bin.display()
        );
        return None;
    }
    let dir = tempfile::tempdir_in("/tmp").ok()?;
    // libp2p on loopback only, mDNS off: the benchmark sends nothing beyond loopback.
    let mut child = std::process::Command::new(&bin)
        .args([
            "daemon",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let sock = dir.path().join("murmur.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok();
    let _ = child.kill();
    let _ = child.wait();
    let kb: f64 = status?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The disk's own floor for a durable single write: 512 bytes + fdatasync into a
/// preallocated file (as RocksDB's WAL is), median and p99 of 500 rounds, in the same
/// file system the benchmark writes to.
fn fsync_ms(dir: &Path) -> (f64, f64) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    f.write_all(&vec![0u8; 512 * 500]).expect("preallocate");
    f.sync_all().expect("sync");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("fsync-probe"))
        .expect("reopen");
    let mut lat = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = Instant::now();
        f.write_all(&[7u8; 512]).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

struct Row {
    batch: f64,
    single4: f64,
    lat1: Vec<Duration>,
    lat4: Vec<Duration>,
    /// publish→follow at 1,000 events/s.
    follow: Vec<Duration>,
    disk_per_event: f64,
    events: u64,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("murmur node benchmark: {PAYLOAD}-byte payloads, {cores} cores, release build");
    println!();

    let tmp = |name: &str| {
        tempfile::Builder::new()
            .prefix(name)
            .tempdir_in("/tmp")
            .expect("tempdir")
    };
    let (fsync_p50, fsync_p99) = fsync_ms(tmp("fsync").path());
    // Raw ceiling and API batch runs alternate (3 rounds each, medians), so both see the
    // same machine: on a noisy host a single run of each can differ by 15%.
    const ROUNDS: usize = 3;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    let mut raws = Vec::new();
    for (sync, durability) in [
        (SyncPolicy::Fsync, Durability::Sync),
        (SyncPolicy::Os, Durability::Buffered),
    ] {
        let dir = tmp("node");
        let (raw, row) = rt.block_on(async {
            let node = start(dir.path(), sync).await;
            let (mut raw, mut api) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let raw_dir = tmp("raw");
                let path = raw_dir.path().to_path_buf();
                raw.push(
                    tokio::task::spawn_blocking(move || raw_ceiling(&path, durability))
                        .await
                        .expect("raw"),
                );
                api.push(batch_throughput(&node.socket, 2).await);
            }
            let (single4, lat4) = singles(&node.socket, 4, SINGLE_EVENTS).await;
            let (_, lat1) = singles(&node.socket, 1, LATENCY_REQUESTS).await;
            let follow = publish_follow(&node.socket, FOLLOW_EVENTS).await;
            let st: murmur_client::api::Status = Client::new(&node.socket)
                .get("/v1/status")
                .await
                .expect("status");
            node.stop().await;
            let row = Row {
                batch: median(api),
                single4,
                lat1,
                lat4,
                follow,
                disk_per_event: st.disk_bytes as f64 / st.events.max(1) as f64,
                events: st.events,
            };
            (median(raw), row)
        });
        raws.push(raw);
        rows.push(row);
    }
    let (raw_sync, raw_os) = (raws[0], raws[1]);
    let (f, o) = (&rows[0], &rows[1]);
    println!("| measurement | fsync | os |");
    println!("|---|---:|---:|");
    println!(
        "| disk floor: 512 B write + fdatasync (preallocated file), p50 / p99 (ms) | {fsync_p50:.3} / {fsync_p99:.3} | |"
    );
    println!(
        "| raw ceiling: sign + RocksDB WriteBatch of {BATCH}, median of {ROUNDS} (events/s) | {raw_sync:.0} | {raw_os:.0} |"
    );
    println!(
        "| API batch publish, {BATCH} events/request, 2 clients, median of {ROUNDS} (events/s) | {:.0} | {:.0} |",
        f.batch, o.batch
    );
    println!(
        "| API batch / raw ceiling | {:.0}% | {:.0}% |",
        100.0 * f.batch / raw_sync,
        100.0 * o.batch / raw_os
    );
    println!(
        "| API single-event publish, 4 clients (events/s) | {:.0} | {:.0} |",
        f.single4, o.single4
    );
    // p50 / p99 / max of sorted latencies, ms.
    let l = |v: &[Duration]| {
        format!(
            "{:.2} / {:.2} / {:.2}",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        )
    };
    for (label, pick) in [("1 client", 1), ("4 clients", 4)] {
        let lat = |r: &Row| if pick == 1 { l(&r.lat1) } else { l(&r.lat4) };
        println!(
            "| single-event publish→ack, {label}: p50 / p99 / max (ms) | {} | {} |",
            lat(f),
            lat(o)
        );
    }
    println!(
        "| publish→follow, 1 client at 1,000 events/s, 1 follower: p50 / p99 / max (ms) | {} | {} |",
        l(&f.follow),
        l(&o.follow)
    );
    println!(
        "| disk per stored event, {PAYLOAD}-byte payload, after {} / {} events (bytes) | {:.0} | {:.0} |",
        f.events, o.events, f.disk_per_event, o.disk_per_event
    );
    match idle_rss_mb() {
        Some(mb) => println!(
            "| idle daemon resident memory, empty store, replication on (MiB) | {mb:.1} | |"
        ),
        None => println!("| idle daemon resident memory | not measured | |"),
    }
    println!();
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
}
