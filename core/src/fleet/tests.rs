use super::*;
use crate::event::{Draft, Payload};
use crate::hlc::Timestamp;
use crate::id::Seq;
use crate::testing::key;

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

struct Lab {
    root: Keypair,
    admin: Keypair,
    admin_cert: Cert,
}

impl Lab {
    fn new() -> Self {
        let root = key(200);
        let admin = key(201);
        let admin_cert = Cert::issue(body(&root, Kind::Admin, &admin, &[], &[]), &root, None);
        Lab {
            root,
            admin,
            admin_cert,
        }
    }

    fn fleet(&self) -> Fleet {
        Fleet::new(self.root.author(), 60_000)
    }

    fn member(&self, node: &Keypair, roles: &[&str], topics: &[&str]) -> Cert {
        Cert::issue(
            body(&self.root, Kind::Member, node, roles, topics),
            &self.admin,
            Some(self.admin_cert.clone()),
        )
    }

    fn rule(&self, rule: Rule, issued_ms: u64) -> Entry {
        Entry::Rule(SignedRule::issue(
            self.root.author(),
            rule,
            issued_ms,
            &self.admin,
            Some(self.admin_cert.clone()),
        ))
    }
}

fn body(
    root: &Keypair,
    kind: Kind,
    subject: &Keypair,
    roles: &[&str],
    topics: &[&str],
) -> CertBody {
    CertBody {
        fleet: root.author(),
        kind,
        subject: subject.author(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
        topics: topics.iter().map(|s| s.to_string()).collect(),
        issued_ms: T0 - DAY,
        expires_ms: T0 + 365 * DAY,
        issuer: root.author(),
    }
}

fn grant(role: &str, topics: &[&str], publish: bool, docs: bool) -> Rule {
    Rule::Grant {
        role: role.into(),
        topics: topics.iter().map(|s| s.to_string()).collect(),
        publish,
        docs,
    }
}

fn event(by: &Keypair, topic: &str, at: u64, body: Payload) -> Event {
    Event::sign(
        &Draft {
            topic: Topic::new(topic).unwrap(),
            seq: Seq(0),
            prev: None,
            time: Timestamp::from_ms(at),
            body,
        },
        by,
    )
    .unwrap()
}

fn data(by: &Keypair, topic: &str, at: u64) -> Event {
    event(by, topic, at, Payload::data(&b"x"[..]))
}

#[test]
fn certificates_lead_to_the_root_or_are_refused() {
    let lab = Lab::new();
    let node = key(1);
    let fleet = lab.root.author();
    // Issued by an admin with its admin certificate, and by the root itself.
    lab.member(&node, &["sensor"], &[]).verify(&fleet).unwrap();
    Cert::issue(
        body(&lab.root, Kind::Member, &node, &[], &[]),
        &lab.root,
        None,
    )
    .verify(&fleet)
    .unwrap();
    // Tampered after signing.
    let mut c = lab.member(&node, &["sensor"], &[]);
    c.body.roles.push("admin".into());
    assert!(matches!(c.verify(&fleet), Err(FleetError::BadChain(_))));
    // An admin without its chain; a "chain" that is a member certificate.
    let mut c = lab.member(&node, &[], &[]);
    c.chain = None;
    assert!(c.verify(&fleet).is_err());
    let other = key(2);
    let as_member = lab.member(&other, &[], &[]);
    let c = Cert::issue(
        body(&lab.root, Kind::Member, &node, &[], &[]),
        &other,
        Some(as_member),
    );
    assert!(c.verify(&fleet).is_err());
    // Another fleet's root.
    let stranger = key(99);
    let c = Cert::issue(
        body(&stranger, Kind::Member, &node, &[], &[]),
        &stranger,
        None,
    );
    assert!(matches!(c.verify(&fleet), Err(FleetError::OtherFleet(_))));
    // An admin certificate issued by an admin.
    let c = Cert::issue(
        body(&lab.root, Kind::Admin, &node, &[], &[]),
        &lab.admin,
        Some(lab.admin_cert.clone()),
    );
    assert!(c.verify(&fleet).is_err());
    // A bad pattern in topics.
    let c = lab.member(&node, &[], &["a/#/b"]);
    assert!(matches!(c.verify(&fleet), Err(FleetError::Invalid(_))));
    // Round trip.
    let c = lab.member(&node, &["sensor"], &["own/#"]);
    assert_eq!(Cert::decode(&c.encode()).unwrap(), c);
    assert!(Cert::decode(&[0xff; 10]).is_err());
}

#[test]
fn a_member_writes_what_its_roles_and_certificate_grant_and_nothing_else() {
    let lab = Lab::new();
    let (sensor, stranger) = (key(1), key(2));
    let mut f = lab.fleet();
    f.apply(Entry::Member(lab.member(
        &sensor,
        &["sensor"],
        &["own/1/#"],
    )))
    .unwrap();
    f.apply(lab.rule(grant("sensor", &["sensors/#"], true, false), T0))
        .unwrap();

    f.may_write(&data(&sensor, "sensors/kitchen", T0)).unwrap();
    f.may_write(&data(&sensor, "own/1/x", T0)).unwrap();
    let refused = f.may_write(&data(&sensor, "cmd/reboot", T0)).unwrap_err();
    assert_eq!(refused.reason(), "no_grant");
    assert!(
        refused.to_string().contains("publish on cmd/reboot"),
        "{refused}"
    );
    // Documents need the docs right.
    let change = event(
        &sensor,
        "sensors/kitchen",
        T0,
        Payload::Doc {
            doc: crate::event::DocId::new("d").unwrap(),
            change: bytes::Bytes::from_static(b"c"),
        },
    );
    assert_eq!(f.may_write(&change).unwrap_err().reason(), "no_grant");
    // A newer grant of the role replaces the older, whatever order they arrive in.
    f.apply(lab.rule(grant("sensor", &["sensors/#"], true, true), T0 + 2))
        .unwrap();
    f.apply(lab.rule(grant("sensor", &[], false, false), T0 + 1))
        .unwrap();
    f.may_write(&change).unwrap();
    // Not a member at all.
    assert_eq!(
        f.may_write(&data(&stranger, "sensors/x", T0))
            .unwrap_err()
            .reason(),
        "not_a_member"
    );
    // Past the certificate's expiry.
    assert_eq!(
        f.may_write(&data(&sensor, "sensors/x", T0 + 400 * DAY))
            .unwrap_err()
            .reason(),
        "expired"
    );
}

#[test]
fn a_revocation_refuses_the_keys_later_events_and_voids_a_revoked_admins_later_signatures() {
    let lab = Lab::new();
    let (thief, other) = (key(1), key(2));
    let mut f = lab.fleet();
    f.apply(Entry::Member(lab.member(&thief, &["sensor"], &[])))
        .unwrap();
    f.apply(lab.rule(grant("sensor", &["#"], true, true), T0))
        .unwrap();
    f.apply(lab.rule(
        Rule::Revoke {
            subject: thief.author(),
            reason: "stolen".into(),
            effective_ms: T0 + 1000,
        },
        T0 + 2000,
    ))
    .unwrap();
    f.may_write(&data(&thief, "a", T0 + 999)).unwrap();
    let r = f.may_write(&data(&thief, "a", T0 + 1000)).unwrap_err();
    assert_eq!(r.reason(), "revoked");
    assert!(r.to_string().contains("stolen"));
    // An earlier revocation wins.
    f.apply(lab.rule(
        Rule::Revoke {
            subject: thief.author(),
            reason: "earlier".into(),
            effective_ms: T0 + 500,
        },
        T0 + 3000,
    ))
    .unwrap();
    assert_eq!(
        f.may_write(&data(&thief, "a", T0 + 600))
            .unwrap_err()
            .reason(),
        "revoked"
    );

    // The admin is revoked from T0 + 10: a member it certified after that is void, one
    // from before stands; so does a grant.
    let mut late = body(&lab.root, Kind::Member, &other, &["sensor"], &[]);
    late.issued_ms = T0 + 20;
    let late = Cert::issue(late, &lab.admin, Some(lab.admin_cert.clone()));
    f.apply(Entry::Member(late)).unwrap();
    f.may_write(&data(&other, "a", T0 + 30)).unwrap();
    let revoke_admin = Entry::Rule(SignedRule::issue(
        lab.root.author(),
        Rule::Revoke {
            subject: lab.admin.author(),
            reason: "leaked".into(),
            effective_ms: T0 + 10,
        },
        T0 + 40,
        &lab.root,
        None,
    ));
    f.apply(revoke_admin).unwrap();
    assert_eq!(
        f.may_write(&data(&other, "a", T0 + 30))
            .unwrap_err()
            .reason(),
        "not_a_member"
    );
    // The grant (issued at T0, before) stands: the thief's early events still pass.
    f.may_write(&data(&thief, "a", T0 + 100)).unwrap();
    // The root cannot be revoked.
    let r = SignedRule::issue(
        lab.root.author(),
        Rule::Revoke {
            subject: lab.root.author(),
            reason: "x".into(),
            effective_ms: T0,
        },
        T0,
        &lab.root,
        None,
    );
    assert!(f.apply(Entry::Rule(r)).is_err());
}

#[test]
fn the_policy_is_the_same_whatever_order_its_entries_arrive_in() {
    let lab = Lab::new();
    let nodes: Vec<Keypair> = (1..=4).map(key).collect();
    let mut entries = vec![
        lab.rule(grant("a", &["x/#"], true, false), T0),
        lab.rule(grant("a", &["y/#"], true, true), T0 + 5),
        lab.rule(grant("b", &["#"], true, true), T0 + 1),
        lab.rule(
            Rule::Revoke {
                subject: nodes[0].author(),
                reason: "r1".into(),
                effective_ms: T0 + 50,
            },
            T0 + 5,
        ),
        lab.rule(
            Rule::Revoke {
                subject: nodes[0].author(),
                reason: "r2".into(),
                effective_ms: T0 + 40,
            },
            T0 + 7,
        ),
        Entry::Rule(SignedRule::issue(
            lab.root.author(),
            Rule::Revoke {
                subject: lab.admin.author(),
                reason: "admin".into(),
                effective_ms: T0 + 6,
            },
            T0 + 8,
            &lab.root,
            None,
        )),
    ];
    for (i, n) in nodes.iter().enumerate() {
        entries.push(Entry::Member(lab.member(
            n,
            &["a", "b"][i % 2..=i % 2],
            &[],
        )));
    }
    let reference = {
        let mut f = lab.fleet();
        for e in &entries {
            f.apply(e.clone()).unwrap();
        }
        f
    };
    // The admin was revoked from T0 + 6: its revocation issued at T0 + 7 is void (the
    // earlier effective time does not count), the one issued at T0 + 5 stands, and so
    // does the grant of a issued at T0 + 5.
    assert_eq!(reference.revocations()[&nodes[0].author()].reason, "r1");
    assert!(reference.grants()["a"].docs);
    // Every rotation and the reverse order give the same state.
    for k in 0..entries.len() {
        for reverse in [false, true] {
            let mut order = entries.clone();
            order.rotate_left(k);
            if reverse {
                order.reverse();
            }
            let mut f = lab.fleet();
            for e in order {
                f.apply(e).unwrap();
            }
            assert_eq!(f.members(), reference.members());
            assert_eq!(f.grants(), reference.grants());
            assert_eq!(f.revocations(), reference.revocations());
        }
    }
}

#[test]
fn admission_checks_the_key_the_fleet_the_expiry_within_the_drift_and_revocations() {
    let lab = Lab::new();
    let (node, other) = (key(1), key(2));
    let mut f = lab.fleet();
    let cert = lab.member(&node, &["sensor"], &[]);
    assert_eq!(
        f.admit(cert.clone(), &other.author(), T0)
            .unwrap_err()
            .reason(),
        "bad_cert"
    );
    f.admit(cert.clone(), &node.author(), T0).unwrap();
    // Expired, but within the drift limit (60 s): still admitted; past it: refused.
    let expiry = cert.body.expires_ms;
    f.admit(cert.clone(), &node.author(), expiry + 59_000)
        .unwrap();
    assert_eq!(
        f.admit(cert.clone(), &node.author(), expiry + 61_000)
            .unwrap_err()
            .reason(),
        "expired"
    );
    // Revoked.
    f.apply(lab.rule(
        Rule::Revoke {
            subject: node.author(),
            reason: "gone".into(),
            effective_ms: T0 + 5,
        },
        T0,
    ))
    .unwrap();
    f.still_admitted(&node.author(), T0 + 4).unwrap();
    assert_eq!(
        f.admit(cert, &node.author(), T0 + 5).unwrap_err().reason(),
        "revoked"
    );
    // Another fleet.
    let stranger = key(99);
    let c = Cert::issue(
        body(&stranger, Kind::Member, &other, &[], &[]),
        &stranger,
        None,
    );
    assert_eq!(
        f.admit(c, &other.author(), T0).unwrap_err().reason(),
        "bad_cert"
    );
}

#[test]
fn the_policy_topic_takes_only_valid_entries_from_members_or_a_nodes_own_certificate() {
    let lab = Lab::new();
    let (node, stranger) = (key(1), key(2));
    let mut f = lab.fleet();
    let own = Entry::Member(lab.member(&node, &[], &[]));
    // A node not yet known publishes its own certificate: allowed.
    let ev = event(&node, POLICY_TOPIC, T0, own.payload());
    f.may_write(&ev).unwrap();
    f.apply_event(&ev).unwrap();
    // A stranger carrying a valid rule: refused; the member carrying it: allowed.
    let rule = lab.rule(grant("a", &["#"], true, true), T0);
    assert_eq!(
        f.may_write(&event(&stranger, POLICY_TOPIC, T0, rule.payload()))
            .unwrap_err()
            .reason(),
        "not_a_member"
    );
    f.may_write(&event(&node, POLICY_TOPIC, T0, rule.payload()))
        .unwrap();
    // A forged rule, or garbage, or plain data: refused even from a member.
    let mut forged = lab.rule(grant("a", &["#"], true, true), T0);
    if let Entry::Rule(r) = &mut forged {
        r.body.issued_ms += 1;
    }
    for body in [
        forged.payload(),
        Payload::data(&b"hello"[..]),
        Payload::Data {
            content_type: Some(CONTENT_TYPE.into()),
            data: bytes::Bytes::from_static(b"\xff\xff"),
        },
    ] {
        assert_eq!(
            f.may_write(&event(&node, POLICY_TOPIC, T0, body))
                .unwrap_err()
                .reason(),
            "reserved"
        );
    }
    // Other reserved topics: nobody.
    assert_eq!(
        f.may_write(&data(&node, "$fleet/other", T0))
            .unwrap_err()
            .reason(),
        "reserved"
    );
}

/// Heartbeats: any member in standing writes its own (no grant needed), data of the
/// heartbeat type and size only; a stranger or a revoked member cannot.
#[test]
fn a_member_writes_heartbeats_without_a_grant_and_a_stranger_cannot() {
    use crate::health::{CONTENT_TYPE as HB, HEALTH_TOPIC, MAX_BYTES};
    let lab = Lab::new();
    let (node, stranger, gone) = (key(1), key(2), key(3));
    let mut f = lab.fleet();
    f.apply(Entry::Member(lab.member(&node, &[], &[]))).unwrap();
    f.apply(Entry::Member(lab.member(&gone, &[], &[]))).unwrap();
    f.apply(lab.rule(
        Rule::Revoke {
            subject: gone.author(),
            reason: "stolen".into(),
            effective_ms: T0,
        },
        T0,
    ))
    .unwrap();
    let beat = |by: &Keypair, ct: Option<&str>, len: usize| {
        event(
            by,
            HEALTH_TOPIC,
            T0 + 1,
            Payload::Data {
                content_type: ct.map(str::to_owned),
                data: bytes::Bytes::from(vec![b' '; len]),
            },
        )
    };
    f.may_write(&beat(&node, Some(HB), 100)).unwrap();
    f.may_write(&beat(&node, Some(HB), MAX_BYTES)).unwrap();
    for (ev, why) in [
        (beat(&stranger, Some(HB), 100), "not_a_member"),
        (beat(&node, Some(HB), MAX_BYTES + 1), "reserved"),
        (beat(&node, Some("text/plain"), 100), "reserved"),
        (beat(&node, None, 100), "reserved"),
    ] {
        assert_eq!(f.may_write(&ev).unwrap_err().reason(), why);
    }
    // Publishing it locally goes through the daemon's own path, never `may_author`.
    assert_eq!(
        f.may_author(
            &node.author(),
            &crate::Topic::new(HEALTH_TOPIC).unwrap(),
            false,
            T0
        )
        .unwrap_err()
        .reason(),
        "reserved"
    );
    assert_eq!(
        f.may_write(&beat(&gone, Some(HB), 100))
            .unwrap_err()
            .reason(),
        "revoked"
    );
}

#[test]
fn a_range_is_judged_as_its_events_one_by_one() {
    let lab = Lab::new();
    let (m, thief, stranger) = (key(1), key(2), key(3));
    let mut f = lab.fleet();
    f.apply(Entry::Member(lab.member(&m, &["sensor"], &[])))
        .unwrap();
    f.apply(Entry::Member(lab.member(&thief, &["sensor"], &[])))
        .unwrap();
    f.apply(lab.rule(grant("sensor", &["sensors/#"], true, false), T0))
        .unwrap();
    f.apply(lab.rule(
        Rule::Revoke {
            subject: thief.author(),
            reason: "r".into(),
            effective_ms: T0 + 3,
        },
        T0,
    ))
    .unwrap();
    let one_by_one = |evs: &[Event]| {
        evs.iter()
            .enumerate()
            .find_map(|(i, e)| f.may_write(e).err().map(|r| (i, r)))
    };
    // testing::chain times its events at 1_700_000_000_000 + seq.
    let cases = vec![
        crate::testing::chain(&m, "sensors/a", 5, "x"),
        crate::testing::chain(&m, "cmd/a", 3, "x"),
        crate::testing::chain(&thief, "sensors/a", 6, "x"),
        crate::testing::chain(&stranger, "sensors/a", 2, "x"),
        // Mixed logs: asked one by one.
        [
            crate::testing::chain(&m, "sensors/a", 2, "x"),
            crate::testing::chain(&thief, "cmd/a", 2, "y"),
        ]
        .concat(),
        Vec::new(),
    ];
    for evs in cases {
        assert_eq!(f.first_refused(&evs), one_by_one(&evs), "{evs:?}");
    }
    assert_eq!(
        f.first_refused(&crate::testing::chain(&thief, "sensors/a", 6, "x"))
            .map(|r| r.0),
        Some(3)
    );
}

#[test]
fn a_revoked_admin_cannot_undo_its_revocation_or_push_the_roots_entries_out() {
    let lab = Lab::new();
    let member = key(1);
    let mut f = lab.fleet();
    f.apply(Entry::Member(lab.member(&member, &["sensor"], &[])))
        .unwrap();
    let by_root = |rule: Rule, at: u64| {
        Entry::Rule(SignedRule::issue(
            lab.root.author(),
            rule,
            at,
            &lab.root,
            None,
        ))
    };
    // The root revokes the admin from T0 + 10, and the member from T0 + 500.
    f.apply(by_root(
        Rule::Revoke {
            subject: lab.admin.author(),
            reason: "leaked".into(),
            effective_ms: T0 + 10,
        },
        T0 + 20,
    ))
    .unwrap();
    f.apply(by_root(
        Rule::Revoke {
            subject: member.author(),
            reason: "stolen".into(),
            effective_ms: T0 + 500,
        },
        T0 + 20,
    ))
    .unwrap();
    // The leaked admin key floods: revocations of itself from time 0 (which would have
    // flipped the old fixed point), later revocations of the member, grants, certs.
    for i in 0..40 {
        f.apply(lab.rule(
            Rule::Revoke {
                subject: lab.admin.author(),
                reason: "undo".into(),
                effective_ms: 0,
            },
            T0 + 30 + i,
        ))
        .unwrap();
        f.apply(lab.rule(
            Rule::Revoke {
                subject: member.author(),
                reason: "later".into(),
                effective_ms: T0 + 900 + i,
            },
            T0 + 30 + i,
        ))
        .unwrap();
        let mut b = body(&lab.root, Kind::Member, &member, &["admin-made"], &[]);
        b.issued_ms = T0 + 30 + i;
        f.apply(Entry::Member(Cert::issue(
            b,
            &lab.admin,
            Some(lab.admin_cert.clone()),
        )))
        .unwrap();
    }
    assert_eq!(f.revocations()[&lab.admin.author()].effective_ms, T0 + 10);
    assert_eq!(f.revocations()[&member.author()].reason, "stolen");
    // The member's certificate is the one from before the admin's revocation.
    assert_eq!(
        f.members()[&member.author()].body.roles,
        vec!["sensor".to_string()]
    );
}

#[test]
fn a_revoked_or_expired_node_cannot_keep_publishing_its_own_certificate() {
    let lab = Lab::new();
    let node = key(1);
    let mut f = lab.fleet();
    let own = Entry::Member(lab.member(&node, &[], &[]));
    f.may_write(&event(&node, POLICY_TOPIC, T0, own.payload()))
        .unwrap();
    f.apply(lab.rule(
        Rule::Revoke {
            subject: node.author(),
            reason: "gone".into(),
            effective_ms: T0 + 5,
        },
        T0,
    ))
    .unwrap();
    let r = f
        .may_write(&event(&node, POLICY_TOPIC, T0 + 5, own.payload()))
        .unwrap_err();
    assert_eq!(r.reason(), "revoked");
    let r = f
        .may_write(&event(&node, POLICY_TOPIC, T0 + 400 * DAY, own.payload()))
        .unwrap_err();
    assert_eq!(r.reason(), "revoked");
}

#[test]
fn one_node_writes_at_most_max_policy_events_on_the_policy_topic() {
    let lab = Lab::new();
    let node = key(1);
    let mut f = lab.fleet();
    f.apply(Entry::Member(lab.member(&node, &[], &[]))).unwrap();
    let entry = lab.rule(grant("a", &["#"], true, false), T0);
    let at = |seq: u64| {
        Event::sign(
            &Draft {
                topic: Topic::new(POLICY_TOPIC).unwrap(),
                seq: Seq(seq),
                prev: (seq > 0).then_some(crate::id::EventId([0; 32])),
                time: Timestamp::from_ms(T0),
                body: entry.payload(),
            },
            &node,
        )
        .unwrap()
    };
    f.may_write(&at(MAX_POLICY_EVENTS - 1)).unwrap();
    assert_eq!(
        f.may_write(&at(MAX_POLICY_EVENTS)).unwrap_err().reason(),
        "reserved"
    );
}
