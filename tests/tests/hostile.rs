//! A hostile peer on loopback (built from murmur-p2p itself) sends forged events by
//! gossip, and a broken chain in answer to a sync round. Nothing of it is stored, its
//! gossip score falls, and the daemon disconnects the peer and refuses it. A peer that
//! announces 10,000 topics changes neither the channels a node joins nor its live
//! delivery.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Node, wait_for};
use murmur_core::sync::Message;
use murmur_core::testing::{chain, key};
use murmur_core::{Seq, VersionVector, vv};
use murmur_p2p::{Command, Event};
use serde_json::json;

/// Runs a hostile peer against `victim` until the victim hangs up (or `secs` pass).
/// Returns whether the victim disconnected it.
fn attack(
    victim: &Node,
    seed: u8,
    secs: u64,
    on: impl FnMut(&Event) -> Vec<Command>,
    opening: Vec<Command>,
) -> bool {
    attack_with(victim, seed, secs, on, opening, None)
}

/// [`attack`], also sending what the test hands over on `later` while it runs.
fn attack_with(
    victim: &Node,
    seed: u8,
    secs: u64,
    mut on: impl FnMut(&Event) -> Vec<Command>,
    opening: Vec<Command>,
    mut later: Option<tokio::sync::mpsc::Receiver<Command>>,
) -> bool {
    let addr = victim.tcp_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let cfg = murmur_p2p::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![addr.parse().unwrap()],
            mdns: false,
            ..murmur_p2p::Config::default()
        };
        let (net, mut events, lp) =
            murmur_p2p::spawn([seed; 32], &cfg, &mut murmur_p2p::Registry::default()).unwrap();
        tokio::spawn(lp.run());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut opened = false;
        loop {
            let more = async {
                match later.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let ev = tokio::select! {
                r = tokio::time::timeout_at(deadline, events.recv()) => match r {
                    Ok(Some(ev)) => ev,
                    _ => return false,
                },
                Some(c) = more => {
                    net.send(c).await;
                    continue;
                }
            };
            if matches!(ev, Event::Connected(_)) && !opened {
                opened = true;
                for c in std::mem::take(&mut Vec::from_iter(opening.iter().map(clone_cmd))) {
                    net.send(c).await;
                }
            }
            if matches!(ev, Event::Disconnected(_)) {
                return true;
            }
            for c in on(&ev) {
                net.send(c).await;
            }
        }
    })
}

fn clone_cmd(c: &Command) -> Command {
    match c {
        Command::Subscribe(t) => Command::Subscribe(t.clone()),
        Command::Publish { topic, data } => Command::Publish {
            topic: topic.clone(),
            data: data.clone(),
        },
        _ => unreachable!("only subscribe and publish are used as openings"),
    }
}

#[test]
fn forged_gossip_is_rejected_and_the_sender_banned() {
    let victim = Node::start("");
    let k = key(66);
    let forged: Vec<Vec<u8>> = chain(&k, "evil/gossip", 6, "x")
        .iter()
        .map(|e| {
            // Gossip carries runs; one event per run here, each with a broken signature.
            let mut b = murmur_core::run::encode(std::slice::from_ref(e)).expect("a run");
            let n = b.len();
            b[n - 7] ^= 0x20;
            b
        })
        .collect();
    let publish = |d: &Vec<u8>| Command::Publish {
        topic: "murmur:#".into(),
        data: d.clone(),
    };
    let (rest_tx, rest_rx) = tokio::sync::mpsc::channel(16);
    let mut sent = false;
    let banned = std::thread::scope(|s| {
        let attacker = s.spawn(|| {
            attack_with(
                &victim,
                42,
                60,
                |ev| match ev {
                    // Once the victim is on the `#` channel (its interest), send two.
                    Event::PeerSubscribed { topic, .. } if topic == "murmur:#" && !sent => {
                        sent = true;
                        forged[..2].iter().map(publish).collect()
                    }
                    _ => Vec::new(),
                },
                vec![Command::Subscribe("murmur:#".into())],
                Some(rest_rx),
            )
        });
        // Two invalid runs: below the publish threshold (our runs no longer go to it),
        // not yet banned.
        wait_for("the forger's gossip score to fall below -50", 30, || {
            victim.get("/v1/peers")["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| {
                    p["score"]
                        .as_f64()
                        .is_some_and(|s| s < murmur_p2p::score::PUBLISH_THRESHOLD)
                })
        });
        for d in &forged[2..] {
            rest_tx.blocking_send(publish(d)).unwrap();
        }
        attacker.join().unwrap()
    });
    assert!(
        banned,
        "the victim disconnected the peer:\n{}",
        victim.log()
    );
    assert_eq!(
        victim.topic_events("evil/gossip"),
        0,
        "nothing forged is stored"
    );
    let m = victim.req("GET", "/metrics", None).body;
    assert!(
        m.contains("murmur_rejected_total{reason=\"bad_signature\"}"),
        "{m}"
    );
    assert!(
        m.contains("murmur_api_refused_total{reason=\"peer_banned\"}"),
        "{m}"
    );
    assert!(
        victim.log().contains("forwarded invalid events"),
        "{}",
        victim.log()
    );
    // The banned peer may redial, but is hung up on at once and never counted as a peer.
    assert!(
        attack(&victim, 42, 10, |_| Vec::new(), Vec::new()),
        "a banned peer was kept"
    );
    assert_eq!(victim.get("/v1/status")["peers"], 0);
}

#[test]
fn a_broken_chain_in_sync_is_refused_and_the_sender_banned() {
    let victim = Node::start("");
    // The victim holds the topic, so it starts a round for it when we connect.
    assert_eq!(
        victim
            .post("/v1/events", &json!({"topic": "evil/sync", "data": "real"}))
            .status,
        200
    );
    let k = key(67);
    let mut evs = chain(&k, "evil/sync", 5, "x");
    evs[2] = chain(&k, "evil/sync", 5, "y").remove(2); // validly signed, but breaks the links
    let mut theirs = VersionVector::new();
    theirs.insert(
        k.author(),
        vv::Entry {
            seq: Seq(4),
            id: evs[4].id(),
        },
    );
    let banned = attack(
        &victim,
        43,
        30,
        |ev| match ev {
            Event::Sync {
                peer,
                msg: Message::Hello { topic, .. },
            } => vec![Command::Sync {
                peer: *peer,
                msg: Message::Vector {
                    topic: topic.clone(),
                    vv: theirs.clone(),
                },
            }],
            Event::Sync {
                peer,
                msg: Message::Want {
                    req, topic, author, ..
                },
            } => vec![Command::Sync {
                peer: *peer,
                msg: Message::Events {
                    req: *req,
                    topic: topic.clone(),
                    author: *author,
                    run: Bytes::from(murmur_core::run::encode(&evs).expect("a run")),
                },
            }],
            _ => Vec::new(),
        },
        Vec::new(),
    );
    assert!(
        banned,
        "the victim disconnected the peer:\n{}",
        victim.log()
    );
    assert_eq!(
        victim.topic_events("evil/sync"),
        1,
        "only the victim's own event"
    );
    assert!(
        victim.log().contains("broke the sync protocol"),
        "{}",
        victim.log()
    );
}

/// A validly signed event of `key`'s log whose body is a document change `change`.
fn doc_event(
    k: &murmur_core::Keypair,
    seq: u64,
    prev: Option<&murmur_core::Event>,
    change: Vec<u8>,
) -> murmur_core::Event {
    murmur_core::Event::sign(
        &murmur_core::Draft {
            topic: murmur_core::Topic::new("evil/doc").unwrap(),
            seq: Seq(seq),
            prev: prev.map(murmur_core::Event::id),
            time: murmur_core::Timestamp {
                ms: 1_700_000_000_000,
                logical: 0,
            },
            body: murmur_core::Payload::Doc {
                doc: murmur_core::DocId::new("plan").unwrap(),
                change: Bytes::from(change),
            },
        },
        k,
    )
    .unwrap()
}

#[test]
fn hostile_document_changes_are_refused_and_the_sender_banned() {
    use automerge::transaction::Transactable;
    let victim = Node::start("");
    let k = key(68);
    // Signed by their author, but: garbage instead of an automerge change; a real change
    // made under another actor (impersonating someone else's edits); a real change whose
    // bytes were cut short.
    let garbage = doc_event(&k, 0, None, b"not an automerge change".to_vec());
    let mut other =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::from([9u8; 32].as_slice()));
    other.put(automerge::ROOT, "owner", "mallory").unwrap();
    let foreign = doc_event(
        &k,
        0,
        None,
        other.get_last_local_change().unwrap().raw_bytes().to_vec(),
    );
    let mut mine =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::from(k.author().0.as_slice()));
    mine.put(automerge::ROOT, "owner", "me").unwrap();
    let full = mine.get_last_local_change().unwrap().raw_bytes().to_vec();
    let cut = doc_event(&k, 0, None, full[..full.len() - 3].to_vec());
    let runs: Vec<Vec<u8>> = [garbage, foreign, cut]
        .iter()
        .map(|e| murmur_core::run::encode(std::slice::from_ref(e)).expect("a run"))
        .collect();
    let mut sent = false;
    let banned = attack(
        &victim,
        44,
        30,
        |ev| match ev {
            Event::PeerSubscribed { topic, .. } if topic == "murmur:#" && !sent => {
                sent = true;
                runs.iter()
                    .map(|d| Command::Publish {
                        topic: "murmur:#".into(),
                        data: d.clone(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        },
        vec![Command::Subscribe("murmur:#".into())],
    );
    assert!(
        banned,
        "the victim disconnected the peer:\n{}",
        victim.log()
    );
    assert_eq!(
        victim.topic_events("evil/doc"),
        0,
        "nothing of it is stored"
    );
    let m = victim.req("GET", "/metrics", None).body;
    assert!(
        m.contains("murmur_rejected_total{reason=\"bad_body\"} 3"),
        "{m}"
    );
    let r = victim.req("GET", "/v1/doc?topic=evil/doc&doc=plan", None);
    assert_eq!(r.status, 404, "{}", r.body);
}

/// A member that publishes a false snapshot of a document (one that leaves out the
/// victim's own changes it claims to cover) gets it stored as its event, but the
/// victim, which holds that history, finds it false: it is set aside, never used, and
/// counted; the document stays as it was.
#[test]
fn a_false_document_snapshot_is_found_out_by_a_node_holding_the_history() {
    use murmur_core::snapshot::{CONTENT_TYPE, DocSnapshot};
    let victim = Node::start("");
    const T: &str = "site/x";
    for i in 0..5 {
        let r = victim.post(
            "/v1/doc",
            &json!({"topic": T, "doc": "plan", "ops": [{"op": "set", "path": "k", "value": i}]}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let author: murmur_core::AuthorId = victim.get("/v1/status")["author"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let log = victim.get("/v1/topics")["topics"][0]["logs"][0].clone();
    let mut v = VersionVector::new();
    v.insert(
        author,
        vv::Entry {
            seq: Seq(log["head_seq"].as_u64().unwrap()),
            id: log["head_id"].as_str().unwrap().parse().unwrap(),
        },
    );
    // Claims the victim's five changes, holds an empty document.
    let false_snapshot = DocSnapshot::new("plan", &v, automerge::Automerge::new().save());
    let k = key(71);
    let ev = murmur_core::Event::sign(
        &murmur_core::Draft {
            topic: murmur_core::Topic::new(T).unwrap(),
            seq: Seq(0),
            prev: None,
            time: murmur_core::Timestamp {
                ms: 1_700_000_000_000,
                logical: 0,
            },
            body: murmur_core::Payload::Data {
                content_type: Some(CONTENT_TYPE.into()),
                data: Bytes::from(false_snapshot.encode()),
            },
        },
        &k,
    )
    .unwrap();
    let run = murmur_core::run::encode(std::slice::from_ref(&ev)).expect("a run");
    let mut sent = false;
    attack(
        &victim,
        46,
        5,
        |e| match e {
            Event::PeerSubscribed { topic, .. } if topic == "murmur:#" && !sent => {
                sent = true;
                vec![Command::Publish {
                    topic: "murmur:#".into(),
                    data: run.clone(),
                }]
            }
            _ => Vec::new(),
        },
        vec![Command::Subscribe("murmur:#".into())],
    );
    wait_for("the victim to find the snapshot false", 10, || {
        victim.metric("murmur_doc_snapshots_refused_total") == 1
    });
    assert_eq!(victim.topic_events(T), 6, "stored as the member's event");
    let doc = victim.get(&format!("/v1/doc?topic={T}&doc=plan"));
    assert_eq!(doc["value"]["k"], 4, "{doc}");
    assert_eq!(victim.metric("murmur_doc_snapshots_applied_total"), 0);
    assert!(victim.log().contains("a false document snapshot"));
}

#[test]
fn a_peer_announcing_10000_topics_changes_neither_the_channels_joined_nor_live_delivery() {
    let victim = Node::start("");
    let publisher = Node::start("");
    let dial = publisher.cli(&["dial", &victim.tcp_addr()]);
    assert!(dial.status.success(), "{}", common::stderr(&dial));
    wait_for("the publisher to connect", 20, || {
        victim.get("/v1/status")["peers"] == 1
    });
    let channels = || victim.get("/v1/replication")["channels"].clone();
    // Its interest, and the fleet's heartbeats (which every node replicates).
    assert_eq!(channels(), json!(["murmur:#", "murmur:$fleet/health"]));
    // The announcer: 10,000 channels, one per topic a device might have, and a few
    // names that are not channels at all.
    let mut announce: Vec<Command> = (0..10_000)
        .map(|i| Command::Subscribe(format!("murmur:sensors/{i}/temp")))
        .collect();
    announce.push(Command::Subscribe("/ipfs/some-other-network".into()));
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
    std::thread::scope(|s| {
        let hostile =
            s.spawn(|| attack_with(&victim, 44, 120, |_| Vec::new(), announce, Some(stop_rx)));
        wait_for("the announcer to connect", 20, || {
            victim.get("/v1/status")["peers"] == 2
        });
        // Let the announcements arrive.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            channels(),
            json!(["murmur:#", "murmur:$fleet/health"]),
            "the victim joined nothing new"
        );
        // Live push on 200 topics still carries every event, all by gossip.
        let before = gossip_received(&victim);
        for i in 0..200 {
            let r = publisher.post(
                "/v1/events",
                &json!({"topic": format!("sensors/{i}/temp"), "data": "21.5"}),
            );
            assert_eq!(r.status, 200, "{}", r.body);
        }
        wait_for("200 events on the victim", 30, || {
            victim.get("/v1/status")["events"] == 200
        });
        let by_gossip = gossip_received(&victim) - before;
        assert!(
            by_gossip >= 198,
            "only {by_gossip} of 200 came by live push:\n{}",
            victim.req("GET", "/metrics", None).body
        );
        assert_eq!(channels(), json!(["murmur:#", "murmur:$fleet/health"]));
        // Announcing is not misbehaving: the announcer is still connected.
        assert_eq!(victim.get("/v1/status")["peers"], 2);
        let _ = stop_tx.blocking_send(Command::Stop);
        let _ = hostile.join();
    });
}

/// Events the node stored from gossip.
fn gossip_received(n: &Node) -> u64 {
    n.metric("murmur_events_received_total{path=\"gossip\"}")
}
