//! Crash safety: SIGKILL the daemon again and again while clients publish. Every
//! acknowledged event must be there afterwards, under the seq it was acknowledged with,
//! and every chain and signature must verify.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, request, stdout};
use serde_json::{Value, json};

/// (topic, seq) → id, as acknowledged to publishers.
type Acked = Arc<Mutex<HashMap<(String, u64), String>>>;

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

fn crash_loop(config: &str, rounds: usize) {
    let mut node = Node::start(config);
    let socket = node.socket();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded whatever happens: a round is at most ~0.6 s of publishing plus a restart.
    let deadline = Instant::now() + Duration::from_secs(30 + 3 * rounds as u64);
    let mut publishers = Vec::new();
    for t in 0..3 {
        let (socket, acked, stop) = (socket.clone(), acked.clone(), stop.clone());
        publishers.push(std::thread::spawn(move || {
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
                    let body =
                        json!({"topic": format!("crash/{t}"), "data": format!("{i}")}).to_string();
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
                    // Killed mid-request, restarting, or shutting down: not acknowledged.
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }
    let mut last = 0;
    // Kill at varied moments (100–600 ms into each run), the same ones on every run.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(100 + x % 500));
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
    let mut by_topic: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for ((topic, seq), id) in &acked {
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
    eprintln!(
        "{rounds} SIGKILLs under 3 publishers: {} acknowledged, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged events lost or replaced: {lost:?}"
    );
    // The whole store verifies offline: chains, signatures, indexes.
    assert!(node.stop().success());
    let v = node.cli(&["verify", "--json"]);
    let report: Value = serde_json::from_str(stdout(&v).trim()).unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert!(report["events"].as_u64().unwrap() >= acked.len() as u64);
    eprintln!(
        "{} acknowledged events survived {rounds} SIGKILLs; store verifies: {report}",
        acked.len()
    );
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
