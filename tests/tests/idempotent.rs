//! Idempotent publish: a retry with the same idempotency key gets what the first
//! publish stored and stores nothing, also across a SIGKILL.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, request};
use serde_json::{Value, json};

/// One publish with `key`, retried until the daemon answers 200 (it may be down for a
/// restart; bounded to 60 s). Returns the acknowledgement.
fn publish_until_acked(socket: &std::path::Path, key: &str) -> Value {
    let body = json!({"topic": "idem/t", "data": key, "idempotency_key": key}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = request(socket, "POST", "/v1/events", Some(&body))
            && r.status == 200
        {
            return r.json();
        }
        assert!(
            Instant::now() < deadline,
            "{key}: no acknowledgement in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 10,000 publishes from 4 clients; a third of them sent again after their
/// acknowledgement (a lost answer, as a client sees it), and the daemon SIGKILLed and
/// restarted half-way while the clients keep going. Every key is stored exactly once,
/// and every repeat got the first answer (same seq, id and offset).
#[test]
fn ten_thousand_publishes_retried_at_random_through_a_sigkill_store_each_key_once() {
    const CLIENTS: usize = 4;
    const EACH: usize = 2_500;
    let mut node = Node::start("");
    let socket = node.socket();
    let acked = Arc::new(Mutex::new(HashMap::<String, Value>::new()));
    let repeats = Arc::new(Mutex::new(0u64));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (socket, acked, repeats, done) =
                (socket.clone(), acked.clone(), repeats.clone(), done.clone());
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ c as u64;
                for i in 0..EACH {
                    let key = format!("k{c}-{i}");
                    let first = publish_until_acked(&socket, &key);
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x.is_multiple_of(3) {
                        let again = publish_until_acked(&socket, &key);
                        assert_eq!(
                            (&again["seq"], &again["id"], &again["offset"]),
                            (&first["seq"], &first["id"], &first["offset"]),
                            "{key}: a repeat got another answer"
                        );
                        *repeats.lock().unwrap() += 1;
                    }
                    acked.lock().unwrap().insert(key, first);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Half-way: SIGKILL, and back.
    let t = Instant::now();
    while done.load(std::sync::atomic::Ordering::Relaxed) < CLIENTS * EACH / 2 {
        assert!(t.elapsed() < Duration::from_secs(120), "too slow");
        std::thread::sleep(Duration::from_millis(10));
    }
    node.kill();
    std::thread::sleep(Duration::from_millis(200));
    node.spawn();
    for c in clients {
        c.join().unwrap();
    }
    // The log: every key once, nothing else.
    let mut count: HashMap<String, u32> = HashMap::new();
    let mut from = 0u64;
    loop {
        let page = node.get(&format!(
            "/v1/events?pattern=idem/%23&from={from}&limit=10000"
        ));
        let evs = page["events"].as_array().unwrap();
        if evs.is_empty() {
            break;
        }
        for e in evs {
            *count
                .entry(e["data"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        from = page["next"].as_u64().unwrap();
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(count.len(), CLIENTS * EACH, "every key stored");
    let acked = acked.lock().unwrap();
    assert_eq!(acked.len(), CLIENTS * EACH);
    let repeats = *repeats.lock().unwrap();
    eprintln!(
        "idempotent publish: {} keys, {repeats} repeats answered from their key, one SIGKILL; each key stored once; murmur_idempotent_repeats_total {}",
        acked.len(),
        node.metric("murmur_idempotent_repeats_total")
    );
    assert!(repeats > 2_000, "{repeats} repeats");
}

/// Batches: a whole retry gets the whole first answer; a retry mixing used keys with
/// new ones, or one key twice, is refused with nothing stored; a bad key is a 400.
#[test]
fn a_batch_is_repeated_whole_or_refused() {
    let n = Node::start("");
    let batch = |keys: &[&str]| {
        let evs: Vec<Value> = keys
            .iter()
            .map(|k| json!({"topic": "idem/b", "data": k, "idempotency_key": k}))
            .collect();
        n.post("/v1/events/batch", &json!({ "events": evs }))
    };
    let first = batch(&["a", "b"]);
    assert_eq!(first.status, 200, "{}", first.body);
    let again = batch(&["a", "b"]);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json(), first.json());
    let mixed = batch(&["b", "c"]);
    assert_eq!(mixed.status, 409, "{}", mixed.body);
    assert!(
        mixed.body.contains("idempotency_conflict"),
        "{}",
        mixed.body
    );
    // The same key for another request (other data): refused, not answered with the
    // first event.
    let other = n.post(
        "/v1/events",
        &json!({"topic": "idem/b", "data": "not a", "idempotency_key": "a"}),
    );
    assert_eq!(other.status, 409, "{}", other.body);
    assert!(other.body.contains("another request"), "{}", other.body);
    // A batch with keys on some events only: refused up front.
    let part = n.post(
        "/v1/events/batch",
        &json!({"events": [{"topic": "idem/b", "data": "e", "idempotency_key": "e"},
                           {"topic": "idem/b", "data": "f"}]}),
    );
    assert_eq!(part.status, 400, "{}", part.body);
    let twice = batch(&["d", "d"]);
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert_eq!(
        n.topic_events("idem/b"),
        2,
        "nothing stored by the refusals"
    );
    // The header form, on a raw publish: twice, one event.
    let raw = || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(n.socket()).unwrap();
        write!(
            s,
            "POST /v1/raw/idem/raw HTTP/1.1\r\nHost: murmur\r\nIdempotency-Key: raw-1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let (one, two) = (raw(), raw());
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let body = |r: &str| {
        r.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    };
    assert_eq!(body(&one), body(&two));
    assert_eq!(n.topic_events("idem/raw"), 1);
    let bad = n.post(
        "/v1/events",
        &json!({"topic": "idem/b", "data": "x", "idempotency_key": "has space"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("invalid_idempotency_key"), "{}", bad.body);
}

/// The same key sent by 8 clients at once (200 keys): one event per key, and all 8 got
/// the same answer; retries meet in one commit batch here.
#[test]
fn the_same_key_sent_at_once_by_eight_clients_is_stored_once() {
    let n = Node::start("");
    let socket = n.socket();
    let answers = Arc::new(Mutex::new(HashMap::<String, Vec<Value>>::new()));
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (socket, answers, barrier) = (socket.clone(), answers.clone(), barrier.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    let key = format!("same-{i}");
                    barrier.wait();
                    let a = publish_until_acked(&socket, &key);
                    answers.lock().unwrap().entry(key).or_default().push(a);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    for (key, got) in answers.lock().unwrap().iter() {
        assert_eq!(got.len(), 8);
        assert!(
            got.iter()
                .all(|a| a["id"] == got[0]["id"] && a["offset"] == got[0]["offset"]),
            "{key}: {got:?}"
        );
    }
    assert_eq!(n.topic_events("idem/t"), 200);
    assert!(n.metric("murmur_idempotent_repeats_total") >= 200 * 7);
}
