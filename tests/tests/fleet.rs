//! A closed fleet with real daemons on loopback (mDNS off, explicit dials): admission
//! at connect, grants and the local 403, a revocation while the fleet is split in two,
//! and a certificate that expires.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, stderr, stdout, wait_for};
use serde_json::{Value, json};

/// A new fleet: its root key in `dir`, and the root's public key.
fn fleet_init(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("root.key");
    let out = Command::new(common::binary())
        .args(["fleet", "init", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let root = text
        .lines()
        .find_map(|l| l.strip_prefix("root = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no root line in {text}"))
        .to_owned();
    (key, root)
}

fn config(root: &str, extra: &str) -> String {
    format!("[fleet]\nroot = \"{root}\"\n{extra}")
}

/// `murmur fleet admit` for `n`, signed by `key`; the certificate line.
fn admit(key: &Path, n: &Node, args: &[&str]) -> String {
    let id = n.id();
    let out = Command::new(common::binary())
        .args(["fleet", "admit", &id, "--key"])
        .arg(key)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn join(n: &Node, cert: &str) {
    let out = n.cli(&["fleet", "join", cert]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs a `murmur fleet` command that signs with `key` against node `n`.
fn signed(n: &Node, key: &Path, args: &[&str]) {
    let mut a: Vec<&str> = vec!["fleet"];
    a.extend_from_slice(args);
    let k = key.to_str().unwrap();
    a.extend_from_slice(&["--key", k]);
    let out = n.cli(&a);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn dial(from: &Node, to: &Node) {
    let out = from.cli(&["dial", &to.tcp_addr()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn peers(n: &Node) -> usize {
    n.get("/v1/peers")["peers"].as_array().map_or(0, Vec::len)
}

fn publish(n: &Node, topic: &str, data: &str) -> common::Response {
    n.post("/v1/events", &json!({"topic": topic, "data": data}))
}

fn fleet(n: &Node) -> Value {
    n.get("/v1/fleet")
}

#[test]
fn only_certified_nodes_join_and_each_writes_only_what_it_is_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, root) = fleet_init(tmp.path());
    let cfg = config(&root, "");
    let a = Node::start(&cfg);
    let b = Node::start(&cfg);
    // C has the fleet's config (and would have the PSK in a real fleet) but no
    // certificate.
    let c = Node::start(&cfg);
    let st = c.get("/v1/status");
    assert!(
        st["fleet"].as_str().unwrap().contains("NOT admitted"),
        "{st}"
    );

    join(&a, &admit(&key, &a, &["--role", "sensor", "--role", "ops"]));
    join(&b, &admit(&key, &b, &["--role", "sensor"]));
    assert!(
        a.get("/v1/status")["fleet"]
            .as_str()
            .unwrap()
            .contains("admitted (roles: sensor, ops)")
    );
    signed(&a, &key, &["grant", "sensor", "sensors/#"]);

    dial(&b, &a);
    wait_for("A and B to admit each other", 20, || {
        peers(&a) == 1 && peers(&b) == 1
    });
    dial(&c, &a);
    wait_for("A to refuse C", 20, || {
        a.metric("murmur_fleet_peers_refused_total{reason=\"no_credentials\"}") >= 1
    });
    assert_eq!(peers(&a), 1, "C must not be among A's peers");
    wait_for("C to be let go", 20, || peers(&c) == 0);

    // Granted: replicates. Not granted: a local 403 that names what is missing.
    assert_eq!(publish(&b, "sensors/b", "21.5").status, 200);
    wait_for("A to get B's reading", 20, || {
        a.topic_events("sensors/b") == 1
    });
    let r = publish(&b, "cmd/reboot", "now");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("no grant to publish on cmd/reboot"),
        "{}",
        r.body
    );
    // Reserved topics are the node's own.
    let r = publish(&b, "$fleet/policy", "x");
    assert_eq!(r.status, 400, "{}", r.body);

    // A grant published on A reaches B through the policy log.
    let r = publish(&a, "cmd/reboot", "now");
    assert_eq!(r.status, 403, "{}", r.body);
    signed(&a, &key, &["grant", "ops", "cmd/#"]);
    assert_eq!(publish(&a, "cmd/reboot", "now").status, 200);
    wait_for("B to get A's command", 20, || {
        b.topic_events("cmd/reboot") == 1
    });
    wait_for("B to know both members and both grants", 20, || {
        let f = fleet(&b);
        f["members"].as_array().unwrap().len() == 2 && f["grants"].as_array().unwrap().len() == 2
    });
    // C learns nothing: it never got past admission.
    assert_eq!(c.topic_events("sensors/b"), 0);

    // Once admitted, C joins (after A's short keep-out) and catches up.
    // C's certificate runs out within 30 days: status says so.
    join(
        &c,
        &admit(&key, &c, &["--role", "sensor", "--expires", "10d"]),
    );
    // Up to A's longest keep-out for a peer that showed credentials (60 s), and more.
    let t = std::time::Instant::now();
    let admitted = common::try_wait_for(90, || {
        let _ = c.cli(&["dial", &a.tcp_addr()]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        peers(&c) == 1
    });
    if !admitted {
        panic!(
            "C was not admitted within 90 s (A refused peers: {} no_credentials, {} not_a_member, {} bad_cert, {} expired)\nC:\n{}\nA:\n{}",
            a.metric("murmur_fleet_peers_refused_total{reason=\"no_credentials\"}"),
            a.metric("murmur_fleet_peers_refused_total{reason=\"not_a_member\"}"),
            a.metric("murmur_fleet_peers_refused_total{reason=\"bad_cert\"}"),
            a.metric("murmur_fleet_peers_refused_total{reason=\"expired\"}"),
            c.log(),
            a.log()
        );
    }
    eprintln!("C admitted {:?} after its certificate", t.elapsed());
    if !common::try_wait_for(20, || c.topic_events("sensors/b") == 1) {
        panic!("C did not catch up:\n{}\nA:\n{}", c.log(), a.log());
    }
    let status = c.cli(&["fleet", "status"]);
    assert!(status.status.success());
    let text = stdout(&status);
    assert!(text.contains("grant:  ops may publish on cmd/#"), "{text}");
    assert!(
        text.contains("1 certificate(s) expire within 30 days"),
        "{text}"
    );
    let states: Vec<(String, String)> = fleet(&c)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (node, state) in &states {
        let want = if *node == c.id() {
            "expires_soon"
        } else {
            "ok"
        };
        assert_eq!(state, want, "{node}: {states:?}");
    }
}

#[test]
fn a_node_revoked_while_the_fleet_is_split_is_refused_everywhere_after_the_heal() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, root) = fleet_init(tmp.path());
    let cfg = config(&root, "");
    // Two halves: A - B and C - D; C is the device that will be stolen.
    let nodes: Vec<Node> = (0..4).map(|_| Node::start(&cfg)).collect();
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    for n in &nodes {
        join(n, &admit(&key, n, &["--role", "sensor"]));
    }
    signed(a, &key, &["grant", "sensor", "sensors/#"]);
    let thief = c.id();
    // The grant reaches C and D once they meet a node that has it: connect everyone
    // first, then split.
    dial(b, a);
    dial(c, a);
    dial(d, c);
    wait_for("the grant to reach every node", 30, || {
        nodes
            .iter()
            .all(|n| fleet(n)["grants"].as_array().unwrap().len() == 1)
    });
    for i in 0..5 {
        assert_eq!(publish(c, "sensors/c", &format!("before{i}")).status, 200);
    }
    wait_for("C's first readings everywhere", 30, || {
        nodes.iter().all(|n| n.log_len("sensors/c", &thief) == 5)
    });
    // Split: C - D stop talking to A - B (stopping A's side of each link is enough;
    // the daemons are restarted with no dials between the halves).
    let mut nodes = nodes;
    for n in nodes.iter_mut() {
        n.stop();
        let _ = std::fs::remove_file(n.dir.join("peers"));
        n.spawn();
    }
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    dial(b, a);
    dial(d, c);
    wait_for("the two halves", 20, || peers(a) == 1 && peers(c) == 1);

    // Revoked on A's side; C's side does not know and goes on.
    signed(
        a,
        &key,
        &["revoke", &thief, "--reason", "stolen from the van"],
    );
    wait_for("B to know of the revocation", 20, || {
        fleet(b)["revocations"].as_array().unwrap().len() == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    for i in 0..5 {
        assert_eq!(publish(c, "sensors/c", &format!("after{i}")).status, 200);
    }
    wait_for("D to take C's new readings (it does not know)", 20, || {
        d.log_len("sensors/c", &thief) == 10
    });

    // Heal: D meets A.
    dial(d, a);
    wait_for("D to learn of the revocation", 30, || {
        fleet(d)["revocations"].as_array().unwrap().len() == 1
    });
    wait_for("D to drop C", 30, || {
        !d.get("/v1/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer"] == c.get("/v1/status")["peer_id"])
    });
    if !common::try_wait_for(30, || {
        a.metric("murmur_fleet_events_refused_total{reason=\"revoked\",path=\"sync\"}") >= 1
    }) {
        let m = a.req("GET", "/metrics", None).body;
        panic!(
            "A did not refuse C's log past the revocation:\n{}\n{}\nD:\n{}",
            m.lines()
                .filter(|l| l.contains("fleet"))
                .collect::<Vec<_>>()
                .join("\n"),
            a.log(),
            d.log()
        );
    }
    // A and B hold exactly what C wrote before its revocation.
    assert_eq!(a.log_len("sensors/c", &thief), 5);
    assert_eq!(b.log_len("sensors/c", &thief), 5);
    // C cannot get back in anywhere.
    let _ = c.cli(&["dial", &a.tcp_addr()]);
    let _ = c.cli(&["dial", &d.tcp_addr()]);
    wait_for("C to be refused by A and D", 30, || {
        a.metric("murmur_fleet_peers_refused_total{reason=\"revoked\"}") >= 1 && peers(c) == 0
    });
    // And it cannot publish either, once it knows (it learned when D still spoke to
    // it, or never: either way its events go nowhere).
    let f = fleet(a);
    let rev = &f["revocations"][0];
    assert_eq!(rev["node"], thief.as_str());
    assert_eq!(rev["reason"], "stolen from the van");
}

#[test]
fn a_certificate_that_expires_is_refused_after_its_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, root) = fleet_init(tmp.path());
    // A tight drift limit: expiry is tolerated only that long.
    let cfg = config(&root, "\n[clock]\nmax_drift = \"1s\"\n");
    let a = Node::start(&cfg);
    let e = Node::start(&cfg);
    join(&a, &admit(&key, &a, &["--role", "sensor"]));
    join(
        &e,
        &admit(&key, &e, &["--role", "sensor", "--expires", "6s"]),
    );
    signed(&a, &key, &["grant", "sensor", "sensors/#"]);
    dial(&e, &a);
    wait_for("E to be admitted", 20, || peers(&a) == 1);
    // E may publish once it has the grant (from A's policy log).
    wait_for("E to learn the grant", 20, || {
        fleet(&e)["grants"].as_array().unwrap().len() == 1
    });
    assert_eq!(publish(&e, "sensors/e", "1").status, 200);
    wait_for("A to get E's reading", 20, || {
        a.topic_events("sensors/e") == 1
    });
    // Past expiry (and the drift limit): dropped, refused, and its local publishes
    // answered 403.
    wait_for("A to drop E", 30, || peers(&a) == 0);
    assert!(a.metric("murmur_fleet_peers_refused_total{reason=\"expired\"}") >= 1);
    let r = publish(&e, "sensors/e", "2");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
    let _ = e.cli(&["dial", &a.tcp_addr()]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(peers(&a), 0, "an expired node must not get back in");
    assert_eq!(a.topic_events("sensors/e"), 1);
}

/// A member with the `sensor` role only, built from murmur-p2p itself, gets past
/// admission (its certificate is real) and then forges what its daemon would have
/// refused: its own validly signed events on `cmd/reboot`, by gossip and in answer to a
/// sync round. The host refuses both, stores nothing of them, counts them, and does not
/// ban the member for it (a peer may simply not know the policy yet).
#[test]
fn a_members_forged_writes_beyond_its_grant_are_refused_by_gossip_and_by_sync() {
    use murmur_core::sync::Message;
    use murmur_core::testing::{chain, grant, key, root_rule};
    use murmur_core::{Seq, VersionVector, vv};
    use murmur_p2p::{Command as Net, Event as NetEvent};
    use std::time::Duration;

    let root = key(200);
    let victim = Node::start(&config(&root.author().to_string(), ""));
    let now = common::now_ms();
    let member = |subject: murmur_core::AuthorId, roles: &[&str]| {
        murmur_core::testing::member_cert(&root, subject, roles, now - 1000, now + 3_600_000)
    };
    victim.fleet_join(&member(victim.id().parse().unwrap(), &["sensor", "ops"]));
    for (role, topic) in [("sensor", "sensors/#"), ("ops", "cmd/#")] {
        victim.fleet_entry(&root_rule(&root, grant(role, &[topic], false), now));
    }
    // The victim holds cmd/reboot (its own command), so its rounds ask peers for it.
    assert_eq!(publish(&victim, "cmd/reboot", "by ops").status, 200);

    // The sensor: seed 77 is both its libp2p identity and its event key.
    let seed = [77u8; 32];
    let sensor = murmur_core::Keypair::from_seed(&seed);
    let cert = member(sensor.author(), &["sensor"]);
    let forged = chain(&sensor, "cmd/reboot", 3, "forged");
    let mut theirs = VersionVector::new();
    theirs.insert(
        sensor.author(),
        vv::Entry {
            seq: Seq(2),
            id: forged[2].id(),
        },
    );
    let addr = victim.tcp_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (admitted, hung_up) = rt.block_on(async move {
        let cfg = murmur_p2p::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![addr.parse().unwrap()],
            mdns: false,
            admission: Some(cert.encode()),
            ..murmur_p2p::Config::default()
        };
        let (net, mut events, lp) =
            murmur_p2p::spawn(seed, &cfg, &mut murmur_p2p::Registry::default()).unwrap();
        tokio::spawn(lp.run());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        let (mut admitted, mut gossiped) = (false, false);
        loop {
            let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => ev,
                _ => return (admitted, false),
            };
            let cmds = match ev {
                NetEvent::Credentials { peer, .. } => vec![Net::Admit(peer)],
                NetEvent::Connected(_) => {
                    admitted = true;
                    vec![Net::Subscribe("murmur:#".into())]
                }
                NetEvent::Disconnected(_) if admitted => return (admitted, true),
                // The victim's round on cmd/reboot: it has admitted the sensor (its
                // rounds start only then), so its gossip is heard from now on. Forged
                // run by gossip, and a vector that offers the same log to sync.
                NetEvent::Sync {
                    peer,
                    msg: Message::Hello { topic, .. },
                } if topic.as_str() == "cmd/reboot" => {
                    let mut cmds = Vec::new();
                    if !gossiped {
                        gossiped = true;
                        cmds.push(Net::Publish {
                            topic: "murmur:#".into(),
                            data: murmur_core::run::encode(&forged).unwrap(),
                        });
                    }
                    cmds.push(Net::Sync {
                        peer,
                        msg: Message::Vector {
                            topic,
                            vv: theirs.clone(),
                        },
                    });
                    cmds
                }
                NetEvent::Sync {
                    peer,
                    msg:
                        Message::Want {
                            req, topic, author, ..
                        },
                } if author == sensor.author() => vec![Net::Sync {
                    peer,
                    msg: Message::Events {
                        req,
                        topic,
                        author,
                        run: bytes::Bytes::from(murmur_core::run::encode(&forged).unwrap()),
                    },
                }],
                _ => Vec::new(),
            };
            for c in cmds {
                net.send(c).await;
            }
        }
    });
    assert!(
        admitted,
        "the sensor's certificate was refused:\n{}",
        victim.log()
    );
    assert!(
        !hung_up,
        "the victim banned a member for writes it refused:\n{}",
        victim.log()
    );
    assert_eq!(
        victim.topic_events("cmd/reboot"),
        1,
        "only the victim's own command"
    );
    for path in ["gossip", "sync"] {
        let n = victim.metric(&format!(
            "murmur_fleet_events_refused_total{{reason=\"no_grant\",path=\"{path}\"}}"
        ));
        assert!(n >= 1, "refused by {path}: {n}\n{}", victim.log());
    }
}

/// What a node takes back when it learns of a revocation late: the run of the revoked
/// key's events at the end of a log timed at or after the revocation (read back from
/// the head), nothing of a key not revoked, nothing of the policy log; and the store
/// takes exactly that suffix back.
#[test]
fn a_revoked_keys_events_from_its_revocation_on_are_found_and_taken_back() {
    use murmur_core::fleet::{Fleet, Rule};
    use murmur_core::testing::{chain, key, member_cert, root_rule};
    use murmur_core::{Durability, ReadStore, Seq, Store, Topic};
    let root = key(0xC5);
    let (thief, honest) = (key(1), key(2));
    // chain() times event i at T + i ms.
    const T: u64 = 1_700_000_000_000;
    let stolen = chain(&thief, "sensors/a", 3000, "t");
    let kept = chain(&honest, "sensors/a", 10, "h");
    let store = murmur_store::MemoryStore::new();
    store.insert(&stolen, Durability::Buffered).unwrap();
    store.insert(&kept, Durability::Buffered).unwrap();
    let mut fleet = Fleet::new(root.author(), 0);
    for k in [&thief, &honest] {
        fleet
            .learn(member_cert(
                &root,
                k.author(),
                &["sensor"],
                T - 1,
                T + 86_400_000,
            ))
            .unwrap();
    }
    let topic = Topic::new("sensors/a").unwrap();
    let suffix = |f: &Fleet, who: &murmur_core::Keypair| {
        let st = store.log_state(&who.author(), &topic).unwrap();
        let r = f.revocations().get(&who.author())?;
        murmur_core::fleet::revoked_suffix(
            &store,
            &topic,
            &who.author(),
            st.base,
            st.head.unwrap().seq,
            r.effective_ms,
        )
        .unwrap()
    };
    assert_eq!(suffix(&fleet, &thief), None, "not revoked");
    // Revoked at the time of its event 1234: from there on (over two windows of reads).
    let revoke = |at: u64| {
        root_rule(
            &root,
            Rule::Revoke {
                subject: thief.author(),
                reason: "stolen".into(),
                effective_ms: at,
            },
            T,
        )
    };
    fleet.apply(revoke(T + 1234)).unwrap();
    assert_eq!(suffix(&fleet, &thief), Some(Seq(1234)));
    assert_eq!(suffix(&fleet, &honest), None, "another key");
    // Revoked after its head: nothing to take back.
    let mut later = Fleet::new(root.author(), 0);
    later.apply(revoke(T + 5000)).unwrap();
    assert_eq!(suffix(&later, &thief), None);
    // The policy log is never cut.
    let policy = Topic::new(murmur_core::fleet::POLICY_TOPIC).unwrap();
    assert_eq!(
        murmur_core::fleet::revoked_suffix(&store, &policy, &thief.author(), Seq(0), Seq(10), 0)
            .unwrap(),
        None
    );
    // And the store takes exactly that back.
    let done = store.truncate(&topic, &thief.author(), Seq(1234)).unwrap();
    assert_eq!(done.events, 3000 - 1234);
    assert_eq!(
        store
            .log_state(&thief.author(), &topic)
            .unwrap()
            .head
            .map(|h| h.seq),
        Some(Seq(1233))
    );
    assert_eq!(suffix(&fleet, &thief), None, "nothing left to take back");
}

/// Heartbeats in a closed fleet: members with no grant at all still see each other in
/// the fleet view (by push and by sync), and a heartbeat needs no grant; a node
/// without a certificate is in nobody's view but its own.
#[test]
fn members_without_grants_see_each_other_in_the_fleet_view() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, root) = fleet_init(tmp.path());
    let cfg = config(&root, "heartbeat_interval = \"1s\"\n");
    let a = Node::start(&cfg);
    let b = Node::start(&cfg);
    let c = Node::start(&cfg);
    join(&a, &admit(&key, &a, &[]));
    join(&b, &admit(&key, &b, &[]));
    dial(&b, &a);
    dial(&c, &a);
    wait_for("A and B to admit each other", 20, || {
        peers(&a) == 1 && peers(&b) == 1
    });
    let view = |n: &Node| -> Vec<String> {
        n.get("/v1/fleet/nodes")["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "up")
            .map(|v| v["node"].as_str().unwrap().to_owned())
            .collect()
    };
    let (ida, idb, idc) = (a.id(), b.id(), c.id());
    wait_for("A and B to list each other, up", 20, || {
        [&a, &b].iter().all(|n| {
            let v = view(n);
            v.contains(&ida) && v.contains(&idb)
        })
    });
    // Two more heartbeats each: C's never arrive, and nothing was refused.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for n in [&a, &b] {
        assert!(!view(n).contains(&idc), "{}", n.get("/v1/fleet/nodes"));
        assert_eq!(
            n.metric("murmur_fleet_events_refused_total{reason=\"reserved\",path=\"gossip\"}")
                + n.metric("murmur_fleet_events_refused_total{reason=\"reserved\",path=\"sync\"}"),
            0
        );
    }
    assert_eq!(view(&c), vec![idc.clone()], "C sees only itself");
}
