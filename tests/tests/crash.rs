//! Crash safety: SIGKILL the daemon again and again while clients publish. Every
//! acknowledged event must be there afterwards, under the seq it was acknowledged with,
//! and every chain and signature must verify.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{self, run};
use common::{Node, request, stdout};
use serde_json::{Value, json};

/// (topic, seq) → id, as acknowledged to publishers.
type Acks = HashMap<(String, u64), String>;
type Acked = Arc<Mutex<Acks>>;

fn record(acked: &Acked, p: &Value) {
    let key = (
        p["topic"].as_str().unwrap().to_owned(),
        p["seq"].as_u64().unwrap(),
    );
    let id = p["id"].as_str().unwrap().to_owned();
    if let Some(old) = acked.lock().unwrap().insert(key.clone(), id.clone()) {
        panic!("seq {key:?} acknowledged twice: {old} and {id}");
    }
}

/// Three publishers (two single-event, one in batches of 50) until `stop` or `deadline`,
/// recording every acknowledgement in `acked`.
fn publishers(
    socket: &Path,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
    deadline: Instant,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..3)
        .map(|t| {
            let (socket, acked, stop) = (socket.to_path_buf(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    i += 1;
                    let r = if t == 2 {
                        let evs: Vec<Value> = (0..50)
                            .map(|k| json!({"topic": "crash/batch", "data": format!("{i}-{k}")}))
                            .collect();
                        request(
                            &socket,
                            "POST",
                            "/v1/events/batch",
                            Some(&json!({ "events": evs }).to_string()),
                        )
                    } else {
                        let body = json!({"topic": format!("crash/{t}"), "data": format!("{i}")})
                            .to_string();
                        request(&socket, "POST", "/v1/events", Some(&body))
                    };
                    match r {
                        Ok(r) if r.status == 200 => {
                            let j = r.json();
                            match j.get("events") {
                                Some(evs) => evs
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .for_each(|e| record(&acked, e)),
                                None => record(&acked, &j),
                            }
                        }
                        // Killed mid-request, frozen, restarting: not acknowledged.
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect()
}

/// The acknowledged events that `node` does not hold under the acknowledged (topic,
/// seq), as `topic#seq`.
fn lost(node: &Node, acked: &Acks) -> Vec<String> {
    let mut by_topic: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for ((topic, seq), id) in acked {
        by_topic
            .entry(topic.clone())
            .or_default()
            .push((*seq, id.clone()));
    }
    let mut lost = Vec::new();
    for (topic, want) in &by_topic {
        let mut stored: Vec<String> = Vec::new();
        loop {
            let page = node.get(&format!(
                "/v1/log?topic={topic}&from={}&limit=10000",
                stored.len()
            ));
            let evs = page["events"].as_array().unwrap();
            if evs.is_empty() {
                break;
            }
            stored.extend(evs.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        }
        lost.extend(
            want.iter()
                .filter(|(seq, id)| stored.get(*seq as usize) != Some(id))
                .map(|(seq, _)| format!("{topic}#{seq}")),
        );
    }
    lost
}

/// Stops `node` and runs `murmur verify` on its store: chains, signatures, indexes.
fn verify_offline(node: &mut Node) -> Value {
    assert!(node.stop().success(), "{}", node.log());
    let v = node.cli(&["verify", "--json"]);
    let report: Value = serde_json::from_str(stdout(&v).trim()).unwrap();
    assert_eq!(report["clean"], true, "{report}");
    report
}

/// A sleep of 100–600 ms, different each time and the same on every run.
fn varied_pause(x: &mut u64) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    std::thread::sleep(Duration::from_millis(100 + *x % 500));
}

fn crash_loop(config: &str, rounds: usize) {
    let mut node = Node::start(config);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded whatever happens: a round is at most ~0.6 s of publishing plus a restart.
    let deadline = Instant::now() + Duration::from_secs(30 + 3 * rounds as u64);
    let publishers = publishers(&node.socket(), &acked, &stop, deadline);
    let mut last = 0;
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..rounds {
        varied_pause(&mut x);
        node.kill();
        let n = acked.lock().unwrap().len();
        assert!(
            n > last,
            "round {round}: publishers made progress ({n} acknowledged)"
        );
        last = n;
        node.spawn();
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 500,
        "only {} events acknowledged",
        acked.len()
    );

    // Every acknowledged (topic, seq) holds exactly the acknowledged event.
    let lost = lost(&node, &acked);
    eprintln!(
        "{rounds} SIGKILLs under 3 publishers: {} acknowledged, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost or replaced, first {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let report = verify_offline(&mut node);
    assert!(report["events"].as_u64().unwrap() >= acked.len() as u64);
}

#[test]
fn fifty_sigkills_lose_no_acknowledged_event_with_fsync() {
    crash_loop("", 50);
}

#[test]
fn sigkill_loses_no_acknowledged_event_with_os_sync() {
    // `os` hands writes to the kernel before acknowledging: a process crash loses nothing.
    crash_loop("[store]\nsync = \"os\"\n", 10);
}

/// A loop-mounted ext4 filesystem in an image file.
struct LoopFs {
    image: PathBuf,
    mnt: PathBuf,
    dev: String,
}

impl LoopFs {
    /// A new, empty ext4 of `mib` MiB (sparse) in `image`, mounted at `mnt`.
    fn create(image: &Path, mnt: &Path, mib: u64) -> LoopFs {
        std::fs::File::create(image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        LoopFs::mount(image, mnt)
    }

    /// Mounts the ext4 in `image` at `mnt` after the boot-time check (`e2fsck -p`, which
    /// replays the journal as mounting would).
    fn mount(image: &Path, mnt: &Path) -> LoopFs {
        let st = Command::new("e2fsck")
            .args(["-p", image.to_str().unwrap()])
            .output()
            .unwrap();
        // 0: clean; 1: errors corrected (a replayed journal counts as one).
        assert!(matches!(st.status.code(), Some(0 | 1)), "e2fsck -p: {st:?}");
        std::fs::create_dir_all(mnt).unwrap();
        let dev = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        run("mount", &["-t", "ext4", &dev, mnt.to_str().unwrap()]);
        LoopFs {
            image: image.to_path_buf(),
            mnt: mnt.to_path_buf(),
            dev,
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A power cut at block level: the daemon runs on a loop-mounted ext4 while 3 clients
/// publish; at varied moments it is frozen (SIGSTOP) and the filesystem's image file is
/// copied, which holds exactly what reached the block device, as a power cut would leave
/// it (the page cache of the mounted filesystem is not in it). Each copy is then checked
/// and mounted as at boot, a daemon started on it, and every event acknowledged before
/// the freeze must be there.
#[test]
fn a_power_cut_at_block_level_loses_no_acknowledged_event() {
    if !netns::root_or_skip("a_power_cut_at_block_level_loses_no_acknowledged_event") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("murmur-powercut")
        .tempdir_in("/tmp")
        .unwrap();
    let config = common::LOOPBACK_P2P;
    const CUTS: usize = 6;
    let mut cuts: Vec<(PathBuf, Acks)> = Vec::new();
    {
        let fs = LoopFs::create(&tmp.path().join("disk.img"), &tmp.path().join("mnt"), 1024);
        let data = fs.mnt.join("node");
        std::fs::create_dir(&data).unwrap();
        let mut node = Node::start_at(&data, config);
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(60);
        let publishers = publishers(&node.socket(), &acked, &stop, deadline);
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for cut in 0..CUTS {
            varied_pause(&mut x);
            unsafe { libc::kill(node.pid(), libc::SIGSTOP) };
            // Every event acknowledged so far was answered before the freeze.
            let before = acked.lock().unwrap().clone();
            let copy = tmp.path().join(format!("cut{cut}.img"));
            run(
                "cp",
                &[
                    "--sparse=always",
                    fs.image.to_str().unwrap(),
                    copy.to_str().unwrap(),
                ],
            );
            unsafe { libc::kill(node.pid(), libc::SIGCONT) };
            cuts.push((copy, before));
        }
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            p.join().unwrap();
        }
        assert!(node.stop().success());
    }

    let mut total = (0, 0);
    for (i, (image, acked)) in cuts.iter().enumerate() {
        let fs = LoopFs::mount(image, &tmp.path().join(format!("mnt{i}")));
        let mut node = Node::start_at(&fs.mnt.join("node"), config);
        let lost = lost(&node, acked);
        eprintln!(
            "power cut {i}: {} acknowledged before it, {} lost",
            acked.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "power cut {i}: lost {} acknowledged events, first {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        verify_offline(&mut node);
        total.0 += acked.len();
        total.1 += lost.len();
        drop(fs);
        std::fs::remove_file(image).unwrap();
    }
    let first = cuts.first().map_or(0, |c| c.1.len());
    assert!(first > 100, "only {first} events before the first cut");
    eprintln!(
        "{CUTS} power cuts: {} acknowledged events checked, {} lost",
        total.0, total.1
    );
}

/// Copies `from` into `to` file by file, pausing between files, as a slow backup of a
/// live data directory would.
fn copy_slowly(from: &Path, to: &Path, pause: Duration) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().filter_map(Result::ok) {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            copy_slowly(&src, &dst, pause);
        } else if kind.is_file() {
            // A file deleted by a compaction since the listing is simply missing.
            let _ = std::fs::copy(&src, &dst);
            std::thread::sleep(pause);
        }
    }
}

/// Finding 5 of issue 12: a torn copy (file by file, of a live data directory) started
/// with lost index entries and no word. Now each copy is refused as damaged, or flagged
/// by the scan after start, or really is consistent (`murmur verify` clean): it never
/// runs silently on an inconsistent store.
#[test]
fn a_torn_copy_is_refused_or_flagged_never_silent() {
    let config = format!("[store]\nwrite_buffer_mb = 2\n{}", common::LOOPBACK_P2P);
    let node = Node::start(&config);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let publishers = publishers(&node.socket(), &acked, &stop, deadline);
    std::thread::sleep(Duration::from_millis(500));
    let tmp = tempfile::Builder::new()
        .prefix("murmur-torn")
        .tempdir_in("/tmp")
        .unwrap();
    const COPIES: usize = 6;
    let copies: Vec<PathBuf> = (0..COPIES)
        .map(|i| {
            let to = tmp.path().join(format!("copy{i}"));
            copy_slowly(&node.dir, &to, Duration::from_millis(15));
            to
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    drop(node);

    let (mut refused, mut flagged, mut consistent) = (0, 0, 0);
    for dir in &copies {
        let _ = std::fs::remove_file(dir.join("murmur.sock"));
        let _ = std::fs::remove_file(dir.join("daemon.log"));
        let mut child = Command::new(common::binary())
            .args(["daemon", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        let socket = dir.join("murmur.sock");
        let limit = Instant::now() + Duration::from_secs(30);
        let outcome = loop {
            assert!(
                Instant::now() < limit,
                "{}: no verdict:\n{}",
                dir.display(),
                log()
            );
            if let Some(st) = child.try_wait().unwrap() {
                assert!(!st.success());
                let l = log();
                assert!(
                    l.contains("damaged") && l.contains("murmur repair"),
                    "{}: exited without naming damage:\n{l}",
                    dir.display()
                );
                let why = l
                    .lines()
                    .rev()
                    .find(|x| x.contains("damaged"))
                    .unwrap_or("");
                eprintln!("{}: refused: {:.300}", dir.display(), why);
                break "refused";
            }
            if let Ok(r) = request(&socket, "GET", "/v1/status", None)
                && r.status == 200
                && r.json().get("store_problem").is_some()
            {
                break "flagged";
            }
            if log().contains("all consistent") {
                break "consistent";
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if child.try_wait().unwrap().is_none() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
        match outcome {
            "refused" => refused += 1,
            "flagged" => flagged += 1,
            _ => {
                // The daemon said nothing: the full offline check must agree.
                let v = Command::new(common::binary())
                    .arg("--data-dir")
                    .arg(dir)
                    .args(["verify", "--json"])
                    .output()
                    .unwrap();
                let report: Value = serde_json::from_str(stdout(&v).trim())
                    .unwrap_or_else(|e| panic!("{e}: {}", stdout(&v)));
                assert_eq!(
                    report["clean"],
                    true,
                    "{}: started silently on an inconsistent store: {report}",
                    dir.display()
                );
                consistent += 1;
            }
        }
    }
    eprintln!(
        "{COPIES} torn copies of a live data directory: {refused} refused, {flagged} flagged, {consistent} consistent (verify clean)"
    );
}
