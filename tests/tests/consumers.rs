//! Named consumers: server-side cursors that resume after the last acknowledged event
//! and redeliver what was not acknowledged, across reconnects and SIGKILLs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, request, stdout, wait_for};
use futures_util::StreamExt;
use murmur_client::{Client, ClientError};
use serde_json::json;

const QUIET: &str = "[p2p]\nenabled = false\n";

async fn next_event(
    s: &mut (
             impl futures_util::Stream<Item = Result<murmur_client::api::EventJson, ClientError>> + Unpin
         ),
) -> murmur_client::api::EventJson {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("a well-formed event")
}

fn publish(n: &Node, topic: &str, data: &str) -> u64 {
    let r = n.post("/v1/events", &json!({"topic": topic, "data": data}));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["offset"].as_u64().unwrap()
}

/// A consumer starts at new events, resumes after its last acknowledgement, is sent
/// again what it did not acknowledge, keeps its pattern, is listed with its lag, ends
/// an older stream of its own name, and can be deleted; their number is bounded.
#[tokio::test]
async fn a_consumer_resumes_after_its_last_ack_and_is_sent_the_rest_again() {
    let n = Node::start(&format!("[api]\nmax_consumers = 2\n{QUIET}"));
    publish(&n, "orders/old", "before the consumer");
    let mut c = Client::new(&n.socket());
    let mut f = Client::new(&n.socket());
    let s = f
        .follow_consumer("billing", "orders/#", None, false)
        .await
        .unwrap();
    let mut s = s;
    let mut offsets = Vec::new();
    for i in 0..10 {
        offsets.push(publish(&n, "orders/new", &format!("o{i}")));
        publish(&n, "other/topic", "not for billing");
    }
    // A new consumer starts at new events: "before the consumer" is not sent.
    for (i, want) in offsets.iter().enumerate() {
        let ev = next_event(&mut s).await;
        assert_eq!(
            (ev.offset, ev.data.as_str()),
            (Some(*want), format!("o{i}").as_str())
        );
    }
    // Acknowledge the first four; the rest were received, not acknowledged.
    let acked = c.ack("billing", offsets[3]).await.unwrap();
    assert_eq!(acked.next, offsets[3] + 1);
    assert_eq!(acked.pending, 6, "six orders not acknowledged");
    let list = c.consumers().await.unwrap();
    assert_eq!(list.max, 2);
    assert_eq!(list.consumers.len(), 1);
    assert!(list.consumers[0].streaming);
    assert_eq!(list.consumers[0].pattern.as_deref(), Some("orders/#"));

    // A second stream of the same name ends the first and starts at the first
    // unacknowledged event.
    let mut f2 = Client::new(&n.socket());
    let s2 = f2
        .follow_consumer("billing", "orders/#", None, false)
        .await
        .unwrap();
    let mut s2 = s2;
    let end = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("the older stream ends");
    assert!(end.is_none(), "the older stream ended: {end:?}");
    for (i, want) in offsets.iter().enumerate().skip(4) {
        let ev = next_event(&mut s2).await;
        assert_eq!(
            (ev.offset, ev.data.as_str()),
            (Some(*want), format!("o{i}").as_str())
        );
    }
    // Acks never move back; past the newest event is refused.
    assert_eq!(
        c.ack("billing", offsets[9]).await.unwrap().next,
        offsets[9] + 1
    );
    assert_eq!(
        c.ack("billing", offsets[1]).await.unwrap().next,
        offsets[9] + 1
    );
    match c.ack("billing", 1_000_000).await.unwrap_err() {
        ClientError::Api { status, code, .. } => {
            assert_eq!((status.as_u16(), code.as_str()), (400, "bad_offset"))
        }
        e => panic!("{e:?}"),
    }
    // The pattern is fixed at creation.
    let mut f3 = Client::new(&n.socket());
    match f3.follow_consumer("billing", "other/#", None, false).await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status.as_u16(), code.as_str()), (409, "consumer_pattern"))
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("another pattern was accepted"),
    }
    drop(s2);

    // Auto-ack: a page is acknowledged once the next is asked for.
    let mut f4 = Client::new(&n.socket());
    let s4 = f4
        .follow_consumer("auto", "other/#", Some(0), true)
        .await
        .unwrap();
    let mut s4 = s4;
    for _ in 0..10 {
        assert_eq!(next_event(&mut s4).await.data, "not for billing");
    }
    let last = publish(&n, "other/topic", "one more");
    assert_eq!(next_event(&mut s4).await.offset, Some(last));
    wait_for(
        "the auto consumer's cursor to pass the first ten",
        10,
        || {
            let l = n.get("/v1/consumers/auto");
            l["next"].as_u64().unwrap() >= last
        },
    );
    drop(s4);

    // Bounded in number: a third is refused, with the limit named.
    let r = n.req("GET", "/v1/follow?consumer=third&pattern=x/%23", None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("max_consumers"), "{}", r.body);
    let r = n.req("GET", "/v1/follow?consumer=bad%20name", None);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = n.req("GET", "/v1/follow?pattern=x/%23&ack=auto", None);
    assert_eq!(r.status, 400, "{}", r.body);
    // A from past the newest event is refused; bridges' consumers are theirs.
    let r = n.req("GET", "/v1/follow?consumer=auto&from=999999", None);
    assert_eq!(r.status, 400, "{}", r.body);
    // (Deleting one is refused while its bridge is configured: tests/mqtt.rs.)
    for (method, path) in [
        ("GET", "/v1/follow?consumer=bridge.cloud&pattern=x/%23"),
        ("POST", "/v1/consumers/bridge.cloud/ack"),
    ] {
        let r = n.req(method, path, Some("{\"offset\": 0}"));
        assert_eq!(r.status, 409, "{method} {path}: {}", r.body);
        assert!(r.body.contains("bridge_consumer"), "{}", r.body);
    }

    // The CLI: `murmur consumers` lists them; rm deletes one.
    let out = n.cli(&["consumers"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("billing") && text.contains("orders/#"),
        "{text}"
    );
    let out = n.cli(&["consumers", "rm", "billing"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(c.consumers().await.unwrap().consumers.len(), 1);
    let r = n.req("DELETE", "/v1/consumers/billing", None);
    assert_eq!(r.status, 404, "{}", r.body);
}

/// `murmur sub --consumer` acknowledges what it printed: a second run goes on where the
/// first stopped, across a daemon restart.
#[test]
fn murmur_sub_with_a_consumer_goes_on_where_the_last_run_stopped() {
    let mut n = Node::start(QUIET);
    for i in 0..10 {
        publish(&n, "logs/app", &format!("line {i}"));
    }
    let out = n.cli(&[
        "--json",
        "sub",
        "--consumer",
        "shipper",
        "--from",
        "0",
        "-n",
        "4",
        "logs/#",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        common::payloads(&out.stdout),
        (0..4).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    n.stop();
    n.spawn();
    let out = n.cli(&[
        "--json",
        "sub",
        "--consumer",
        "shipper",
        "-n",
        "6",
        "logs/#",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        common::payloads(&out.stdout),
        (4..10).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    let c = n.get("/v1/consumers/shipper");
    assert_eq!(
        (c["next"].as_u64(), c["pending"].as_u64()),
        (Some(10), Some(0))
    );
}

/// A consumer that acknowledges each event as it handles it, while the daemon is
/// SIGKILLed 10 times under a steady publisher: every published event is delivered at
/// least once (none lost), and only what was in flight at a kill comes again.
#[test]
fn a_consumer_acking_as_it_goes_through_ten_sigkills_loses_nothing() {
    const KILLS: usize = 10;
    let mut n = Node::start(QUIET);
    let socket = n.socket();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Mutex::new(Vec::<String>::new()));
    // The publisher: keyed publishes (so a retry across a kill stores once), retried
    // until acknowledged.
    let publisher = {
        let (socket, stop, published) = (socket.clone(), stop.clone(), published.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("e{i}");
                let body =
                    json!({"topic": "crash/t", "data": key, "idempotency_key": key}).to_string();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Ok(r) = request(&socket, "POST", "/v1/events", Some(&body))
                        && r.status == 200
                    {
                        break;
                    }
                    assert!(Instant::now() < deadline, "{key}: not published in 60 s");
                    std::thread::sleep(Duration::from_millis(10));
                }
                published.lock().unwrap().push(key);
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // The consumer: follows, handles each event, acknowledges it; reconnects after
    // every kill.
    let deliveries = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let connections = Arc::new(AtomicU64::new(0));
    let consumer_done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (socket, deliveries, connections, done) = (
            socket.clone(),
            deliveries.clone(),
            connections.clone(),
            consumer_done.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The first follow creates the consumer at offset 0 (before the first
                // publish); later ones resume it.
                let mut from = Some(0);
                while !done.load(Ordering::Relaxed) {
                    let mut f = Client::new(&socket);
                    let mut acker = Client::new(&socket);
                    let Ok(s) = f.follow_consumer("crash", "crash/#", from, false).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    from = None;
                    let mut s = s;
                    let mut last = None;
                    loop {
                        let next = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
                        let ev = match next {
                            Err(_) if done.load(Ordering::Relaxed) => break,
                            Err(_) => continue,
                            Ok(Some(Ok(ev))) => ev,
                            Ok(_) => break, // the daemon went away
                        };
                        let off = ev.offset.expect("follow events carry offsets");
                        assert!(last < Some(off), "out of order within a stream");
                        last = Some(off);
                        *deliveries.lock().unwrap().entry(ev.data).or_default() += 1;
                        if acker.ack("crash", off).await.is_err() {
                            break; // killed between the event and its ack
                        }
                    }
                }
            })
        })
    };
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for k in 0..KILLS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(300 + x % 400));
        let before = published.lock().unwrap().len();
        n.kill();
        std::thread::sleep(Duration::from_millis(50));
        n.spawn();
        eprintln!("kill {}: {before} published so far", k + 1);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let published = published.lock().unwrap().clone();
    let t = Instant::now();
    loop {
        let have = deliveries.lock().unwrap().len();
        if have >= published.len() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "only {have} of {} events delivered after 60 s; daemon log:\n{}",
            published.len(),
            n.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    consumer_done.store(true, Ordering::Relaxed);
    consumer.join().unwrap();
    let deliveries = deliveries.lock().unwrap();
    let missing: Vec<&String> = published
        .iter()
        .filter(|k| !deliveries.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    let total: u64 = deliveries.values().map(|n| u64::from(*n)).sum();
    let redelivered = total - deliveries.len() as u64;
    eprintln!(
        "consumer crash test: {} events published, {} delivered ({} unique), {redelivered} redelivered, {KILLS} SIGKILLs, {} connections",
        published.len(),
        total,
        deliveries.len(),
        connections.load(Ordering::Relaxed)
    );
    assert!(
        published.len() > 500,
        "the publisher kept going: {}",
        published.len()
    );
    // Each kill can cost at most what was delivered and not yet acknowledged: one
    // event per kill for a consumer that acks each one.
    assert!(
        redelivered <= KILLS as u64 * 2,
        "{redelivered} redelivered for {KILLS} kills"
    );
    let c = n.get("/v1/consumers/crash");
    assert_eq!(c["pending"].as_u64(), Some(0), "{c}");
}
