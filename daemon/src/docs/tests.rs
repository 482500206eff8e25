//! Convergence: any set of concurrent changes, applied in any order and with
//! duplicates, gives the same document on every replica.

use automerge::{ActorId, Automerge, Change, ReadDoc};
use proptest::prelude::*;
use serde_json::json;

use super::ops::{self, Op};

/// A small space of operations that conflict a lot: a few keys, one list, one text, one
/// counter.
fn op() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        (key.clone(), any::<i32>()).prop_map(|(k, v)| Op::Set {
            path: k.into(),
            value: json!(v)
        }),
        key.clone().prop_map(|k| Op::Set {
            path: k.into(),
            value: json!({"nested": [k]})
        }),
        (0usize..4, any::<u8>()).prop_map(|(i, v)| Op::Insert {
            path: "list".into(),
            index: i,
            value: json!(v)
        }),
        (0usize..4).prop_map(|i| Op::Remove {
            path: "list".into(),
            index: i,
            count: 1
        }),
        (0usize..6, 0usize..3, "[a-z]{0,3}").prop_map(|(i, d, s)| Op::Splice {
            path: "text".into(),
            index: i,
            delete: d,
            insert: s
        }),
        (-5i64..5).prop_map(|by| Op::Increment {
            path: "hits".into(),
            by
        }),
        key.prop_map(|k| Op::Delete { path: k.into() }),
    ]
}

fn base() -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from([0u8; 32].as_slice()));
    doc.transact::<_, _, ops::OpError>(|tx| {
        for o in [
            Op::Set {
                path: "list".into(),
                value: json!([1, 2]),
            },
            Op::Text {
                path: "text".into(),
                value: "hello".into(),
            },
            Op::Counter {
                path: "hits".into(),
                value: 0,
            },
        ] {
            ops::apply(tx, &o)?;
        }
        Ok(())
    })
    .unwrap();
    doc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn replicas_converge_whatever_the_order(
        writes in prop::collection::vec((0usize..3, prop::collection::vec(op(), 1..4)), 1..24),
        orders in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..80), 3),
    ) {
        // Three writers edit concurrently from the same base, each seeing only its own
        // changes (a partition); invalid operations (out of range, missing key) fail
        // their whole change, as through the API.
        let base = base();
        let mut writers: Vec<Automerge> = (1..=3u8)
            .map(|i| base.fork().with_actor(ActorId::from([i; 32].as_slice())))
            .collect();
        let mut changes: Vec<Change> = base.get_changes(&[]).into_iter().collect();
        for (w, batch) in &writes {
            let doc = &mut writers[*w];
            let ok = doc.transact::<_, _, ops::OpError>(|tx| {
                for o in batch { ops::apply(tx, o)?; }
                Ok(())
            });
            if let Ok(s) = ok && let Some(h) = s.hash {
                changes.push(doc.get_change_by_hash(&h).unwrap().clone());
            }
        }
        // Each replica receives every change at least once, in its own order, with
        // duplicates, one change per apply call or in batches.
        let mut results = Vec::new();
        for order in &orders {
            let mut r = Automerge::new();
            let mut feed: Vec<Change> = changes.clone();
            for idx in order {
                feed.push(changes[idx.index(changes.len())].clone());
            }
            // Shuffle deterministically by the drawn indexes.
            for (i, idx) in order.iter().enumerate() {
                let a = i % feed.len();
                let b = idx.index(feed.len());
                feed.swap(a, b);
            }
            for chunk in feed.chunks(1 + order.len() % 5) {
                r.apply_changes(chunk.to_vec()).unwrap();
            }
            prop_assert!(r.get_missing_deps(&[]).is_empty());
            results.push((serde_json::to_string(&ops::to_json(&r, "").unwrap()).unwrap(), r.get_heads()));
        }
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// The change application path on hostile bytes: a mutated or truncated change
    /// either fails the check that gates storage, or applies without panicking and
    /// leaves a readable document.
    #[test]
    fn hostile_change_bytes_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let doc = base();
        let mut writer = doc.fork().with_actor(ActorId::from([7u8; 32].as_slice()));
        writer.transact::<_, _, ops::OpError>(|tx| {
            ops::apply(tx, &Op::Set { path: "a".into(), value: json!({"x": [1, 2, 3]}) })?;
            ops::apply(tx, &Op::Splice { path: "text".into(), index: 2, delete: 1, insert: "zz".into() })
        }).unwrap();
        let good = writer.get_last_local_change().unwrap().raw_bytes().to_vec();
        let mut bad = good.clone();
        for (i, b) in &flips {
            let i = i.index(bad.len());
            bad[i] ^= b | 1;
        }
        let truncated = good[..cut.index(good.len())].to_vec();
        for bytes in [bad, truncated] {
            if let Ok(c) = Change::from_bytes(bytes) {
                // automerge 0.12 can panic on such input; the guard turns that into an
                // error, after which the manager rebuilds the document without it.
                let mut trial = doc.fork();
                if let Ok(_applied) = super::apply_guarded(&mut trial, vec![c]) {
                    prop_assert!(ops::to_json(&trial, "").is_ok());
                }
            }
        }
        prop_assert!(ops::to_json(&doc, "").is_ok());
    }
}

/// The merge rules the README states, checked.
#[test]
fn merge_rules_are_as_documented() {
    let mut base = Automerge::new().with_actor(ActorId::from([0u8; 32].as_slice()));
    base.transact::<_, _, ops::OpError>(|tx| {
        ops::apply(
            tx,
            &Op::Set {
                path: "k".into(),
                value: json!(1),
            },
        )?;
        ops::apply(
            tx,
            &Op::Set {
                path: "list".into(),
                value: json!(["a"]),
            },
        )?;
        ops::apply(
            tx,
            &Op::Counter {
                path: "n".into(),
                value: 0,
            },
        )?;
        ops::apply(
            tx,
            &Op::Text {
                path: "t".into(),
                value: "ab".into(),
            },
        )
    })
    .unwrap();
    let mut a = base.fork().with_actor(ActorId::from([1u8; 32].as_slice()));
    let mut b = base.fork().with_actor(ActorId::from([2u8; 32].as_slice()));
    a.transact::<_, _, ops::OpError>(|tx| {
        ops::apply(tx, &Op::Delete { path: "k".into() })?;
        ops::apply(
            tx,
            &Op::Insert {
                path: "list".into(),
                index: 1,
                value: json!("from-a"),
            },
        )?;
        ops::apply(
            tx,
            &Op::Increment {
                path: "n".into(),
                by: 1,
            },
        )?;
        ops::apply(
            tx,
            &Op::Splice {
                path: "t".into(),
                index: 0,
                delete: 0,
                insert: "X".into(),
            },
        )?;
        ops::apply(
            tx,
            &Op::Set {
                path: "same".into(),
                value: json!("a"),
            },
        )
    })
    .unwrap();
    b.transact::<_, _, ops::OpError>(|tx| {
        ops::apply(
            tx,
            &Op::Set {
                path: "k".into(),
                value: json!(2),
            },
        )?;
        ops::apply(
            tx,
            &Op::Insert {
                path: "list".into(),
                index: 1,
                value: json!("from-b"),
            },
        )?;
        ops::apply(
            tx,
            &Op::Increment {
                path: "n".into(),
                by: 1,
            },
        )?;
        ops::apply(
            tx,
            &Op::Splice {
                path: "t".into(),
                index: 2,
                delete: 0,
                insert: "Y".into(),
            },
        )?;
        ops::apply(
            tx,
            &Op::Set {
                path: "same".into(),
                value: json!("b"),
            },
        )
    })
    .unwrap();
    let mut ab = a.fork();
    ab.merge(&mut b.clone()).unwrap();
    let mut ba = b.fork();
    ba.merge(&mut a.clone()).unwrap();
    let v = ops::to_json(&ab, "").unwrap();
    assert_eq!(v, ops::to_json(&ba, "").unwrap(), "same on every replica");
    assert_eq!(
        v["k"],
        json!(2),
        "an update concurrent with a delete wins: {v}"
    );
    assert_eq!(v["n"], json!(2), "concurrent increments add up");
    let list = v["list"].as_array().unwrap();
    assert_eq!(list.len(), 3, "both inserts at one position are kept: {v}");
    assert_eq!(
        v["t"],
        json!("XabY"),
        "edits to different parts of a text both apply"
    );
    assert!(
        v["same"] == json!("a") || v["same"] == json!("b"),
        "one value wins: {v}"
    );
}
