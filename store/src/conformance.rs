//! One conformance suite, run against every [`Store`] implementation.

use bytes::Bytes;
use murmur_core::storage::{Durability, Outcome, ReadStore, Store};
use murmur_core::{DocId, Draft, Payload, Timestamp};
use murmur_core::{Event, Offset, Pattern, Seq, Topic};

use murmur_core::testing::key;

pub(crate) fn chain(key: &murmur_core::Keypair, topic: &str, len: usize) -> Vec<Event> {
    chain_with(key, topic, len, "e")
}

pub(crate) fn chain_with(
    key: &murmur_core::Keypair,
    topic: &str,
    len: usize,
    tag: &str,
) -> Vec<Event> {
    murmur_core::testing::chain(key, topic, len, tag)
}

fn appended(o: &[Outcome]) -> Vec<u64> {
    o.iter()
        .filter_map(|o| match o {
            Outcome::Appended(off) => Some(off.0),
            _ => None,
        })
        .collect()
}

pub(crate) fn append_and_read<S: Store>(s: &S) {
    let k = key(1);
    let c = chain(&k, "a/b", 10);
    let out = s.insert(&c, Durability::Sync).unwrap();
    assert_eq!(appended(&out), (0..10).collect::<Vec<_>>());
    assert_eq!(s.next_offset(), Offset(10));
    let st = s.log_state(&k.author(), c[0].topic()).unwrap();
    assert_eq!(st.head.unwrap().seq, Seq(9));
    assert_eq!(st.head.unwrap().id, c[9].id());
    assert_eq!(st.frozen_at, None);
    let r = s.log_range(&k.author(), c[0].topic(), Seq(3), 4).unwrap();
    assert_eq!(
        r.iter().map(Event::seq).collect::<Vec<_>>(),
        vec![Seq(3), Seq(4), Seq(5), Seq(6)]
    );
    assert_eq!(
        s.log_range(&k.author(), c[0].topic(), Seq(10), 5)
            .unwrap()
            .len(),
        0
    );
    assert_eq!(s.event(&c[7].id()).unwrap().unwrap().id(), c[7].id());
    assert!(s.event(&murmur_core::EventId([0; 32])).unwrap().is_none());
    // An unknown log is empty, not an error.
    let other = Topic::new("a").unwrap();
    assert!(
        s.log_range(&k.author(), &other, Seq(0), 5)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.log_state(&k.author(), &other).unwrap().head, None);
}

pub(crate) fn duplicates_and_gaps_store_nothing<S: Store>(s: &S) {
    let k = key(2);
    let c = chain(&k, "t", 6);
    s.insert(&c[..3], Durability::Sync).unwrap();
    let out = s
        .insert(
            &[c[1].clone(), c[2].clone(), c[5].clone()],
            Durability::Sync,
        )
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Gap { expected: Seq(3) }
        ]
    );
    assert_eq!(s.next_offset(), Offset(3));
    // Within one call: an event and its copy, then the rest of the chain.
    let out = s
        .insert(
            &[c[3].clone(), c[3].clone(), c[4].clone(), c[5].clone()],
            Durability::Buffered,
        )
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Appended(Offset(3)),
            Outcome::Duplicate,
            Outcome::Appended(Offset(4)),
            Outcome::Appended(Offset(5))
        ]
    );
}

pub(crate) fn forks_freeze_the_log<S: Store>(s: &S) {
    let k = key(3);
    let c = chain(&k, "f", 5);
    let alt = chain_with(&k, "f", 5, "other");
    s.insert(&c[..4], Durability::Sync).unwrap();
    // A second statement at seq 2: fork proof stored, log frozen at 2.
    let out = s.insert(&[alt[2].clone()], Durability::Sync).unwrap();
    assert_eq!(out, vec![Outcome::Fork(Seq(2))]);
    let st = s.log_state(&k.author(), c[0].topic()).unwrap();
    assert_eq!(st.frozen_at, Some(Seq(2)));
    let forks = s.forks().unwrap();
    assert_eq!(forks.len(), 1);
    forks[0].check().unwrap();
    assert_eq!(forks[0].ours.id(), c[2].id());
    assert_eq!(forks[0].theirs.id(), alt[2].id());
    // Past the fork nothing more is accepted.
    assert_eq!(
        s.insert(&[c[4].clone()], Durability::Sync).unwrap(),
        vec![Outcome::Frozen]
    );
    assert_eq!(s.next_offset(), Offset(4));
    // An earlier fork lowers the freeze point.
    assert_eq!(
        s.insert(&[alt[1].clone()], Durability::Sync).unwrap(),
        vec![Outcome::Fork(Seq(1))]
    );
    assert_eq!(
        s.log_state(&k.author(), c[0].topic()).unwrap().frozen_at,
        Some(Seq(1))
    );
    let logs = s.logs().unwrap();
    assert_eq!(logs[0].frozen_at, Some(Seq(1)));
}

pub(crate) fn prev_mismatch_is_refused<S: Store>(s: &S) {
    let k = key(4);
    let c = chain(&k, "p", 3);
    let alt = chain_with(&k, "p", 3, "x");
    s.insert(&c[..2], Durability::Sync).unwrap();
    // alt[2] continues alt[1], not our c[1].
    assert_eq!(
        s.insert(&[alt[2].clone()], Durability::Sync).unwrap(),
        vec![Outcome::PrevMismatch]
    );
}

pub(crate) fn arrivals_filter_and_page<S: Store>(s: &S) {
    let (k1, k2) = (key(5), key(6));
    let a = chain(&k1, "sensors/kitchen/temp", 5);
    let b = chain(&k2, "sensors/hall/hum", 5);
    let mut mixed = Vec::new();
    for i in 0..5 {
        mixed.push(a[i].clone());
        mixed.push(b[i].clone());
    }
    s.insert(&mixed, Durability::Sync).unwrap();
    let all = s.arrivals(Offset(0), None, 100, 1000).unwrap();
    assert_eq!(all.events.len(), 10);
    assert_eq!(all.next, Offset(10));
    for (i, (off, ev)) in all.events.iter().enumerate() {
        assert_eq!(off.0, i as u64);
        assert_eq!(ev.id(), mixed[i].id());
    }
    let temp = Pattern::new("sensors/+/temp").unwrap();
    let p = s.arrivals(Offset(0), Some(&temp), 100, 1000).unwrap();
    assert_eq!(
        p.events.iter().map(|(o, _)| o.0).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );
    // limit: stops after 2 matches, next is after the last examined.
    let p = s.arrivals(Offset(0), Some(&temp), 2, 1000).unwrap();
    assert_eq!(p.events.len(), 2);
    assert_eq!(p.next, Offset(3));
    // max_scan: a sparse filter examines at most max_scan offsets.
    let hum = Pattern::new("sensors/hall/#").unwrap();
    let p = s.arrivals(Offset(0), Some(&hum), 100, 1).unwrap();
    assert_eq!(p.events.len(), 0);
    assert_eq!(p.next, Offset(1));
    let p = s.arrivals(p.next, Some(&hum), 100, 1000).unwrap();
    assert_eq!(p.events.len(), 5);
    // Past the end: empty, next unchanged.
    let p = s.arrivals(Offset(10), None, 100, 1000).unwrap();
    assert!(p.events.is_empty());
    assert_eq!(p.next, Offset(10));
}

pub(crate) fn logs_and_version_vectors<S: Store>(s: &S) {
    let (k1, k2) = (key(7), key(8));
    s.insert(&chain(&k1, "x/y", 3), Durability::Sync).unwrap();
    s.insert(&chain(&k2, "x/y", 5), Durability::Sync).unwrap();
    s.insert(&chain(&k1, "x", 2), Durability::Sync).unwrap();
    s.insert(&chain(&k1, "x/yz", 1), Durability::Sync).unwrap();
    let logs = s.logs().unwrap();
    let names: Vec<_> = logs
        .iter()
        .map(|l| (l.topic.as_str().to_owned(), l.head.seq.0))
        .collect();
    assert_eq!(names.len(), 4);
    assert_eq!(names[0], ("x".to_owned(), 1));
    assert_eq!(names[3], ("x/yz".to_owned(), 0));
    let vv = s.version_vector(&Topic::new("x/y").unwrap()).unwrap();
    assert_eq!(vv.len(), 2);
    assert_eq!(vv.get(&k1.author()).unwrap().seq, Seq(2));
    assert_eq!(vv.get(&k2.author()).unwrap().seq, Seq(4));
    assert_eq!(vv.total_events(), 8);
    assert!(
        s.version_vector(&Topic::new("nope").unwrap())
            .unwrap()
            .is_empty()
    );
}

fn doc_event(
    k: &murmur_core::Keypair,
    topic: &str,
    doc: &str,
    seq: u64,
    prev: Option<&Event>,
) -> Event {
    Event::sign(
        &Draft {
            topic: Topic::new(topic).unwrap(),
            seq: Seq(seq),
            prev: prev.map(Event::id),
            time: Timestamp {
                ms: 1,
                logical: seq as u32,
            },
            body: Payload::Doc {
                doc: DocId::new(doc).unwrap(),
                change: Bytes::from(format!("change {seq}")),
            },
        },
        k,
    )
    .unwrap()
}

/// Every document change is indexed with its event (per document and by arrival), and a
/// snapshot replaces the previous one.
pub(crate) fn documents_are_indexed<S: Store>(s: &S) {
    let k = key(1);
    let a0 = doc_event(&k, "t/x", "a", 0, None);
    let b1 = doc_event(&k, "t/x", "b", 1, Some(&a0));
    let a2 = doc_event(&k, "t/x", "a", 2, Some(&b1));
    let data = murmur_core::testing::chain(&key(2), "t/x", 1, "plain");
    s.insert(&[a0.clone(), b1.clone()], Durability::Sync)
        .unwrap();
    s.insert(&data, Durability::Sync).unwrap();
    s.insert(std::slice::from_ref(&a2), Durability::Sync)
        .unwrap();
    let topic = Topic::new("t/x").unwrap();
    let a = DocId::new("a").unwrap();
    let got = s.doc_changes(&topic, &a, Offset(0), 10).unwrap();
    assert_eq!(got.iter().map(|(o, _)| o.0).collect::<Vec<_>>(), vec![0, 3]);
    assert_eq!(got[1].1.id(), a2.id());
    assert_eq!(s.doc_last_change(&topic, &a).unwrap(), Some(Offset(3)));
    assert_eq!(
        s.doc_last_change(&topic, &DocId::new("b").unwrap())
            .unwrap(),
        Some(Offset(1))
    );
    assert_eq!(
        s.doc_last_change(&topic, &DocId::new("zz").unwrap())
            .unwrap(),
        None
    );
    let tail = s.doc_changes(&topic, &a, Offset(1), 10).unwrap();
    assert_eq!(tail.len(), 1);
    let (arr, next) = s.doc_arrivals(Offset(1), 10).unwrap();
    assert_eq!(
        arr.iter()
            .map(|(o, _, d)| (o.0, d.as_str().to_owned()))
            .collect::<Vec<_>>(),
        vec![(1, "b".into()), (3, "a".into())]
    );
    assert_eq!(next, Offset(4));
    assert_eq!(
        s.docs_of(&topic, 10).unwrap(),
        vec![a.clone(), DocId::new("b").unwrap()]
    );
    assert!(s.docs_of(&Topic::new("t").unwrap(), 10).unwrap().is_empty());
    assert_eq!(s.load_snapshot(&topic, &a).unwrap(), None);
    let snap = murmur_core::Snapshot {
        through: Offset(3),
        bytes: b"saved".to_vec(),
    };
    s.save_snapshot(&topic, &a, &snap).unwrap();
    assert_eq!(s.load_snapshot(&topic, &a).unwrap(), Some(snap));
}

/// Retention's prefix cut: the events below the cut go with their indexes, the head
/// and the chain stay, nothing below the base is stored again, and readers skip the
/// offsets that went.
pub(crate) fn prune_cuts_a_prefix<S: Store>(s: &S) {
    use murmur_core::storage::Cut;
    let (k, j) = (key(1), key(2));
    let a = chain(&k, "s/a", 10);
    let b = chain(&j, "s/b", 4);
    // Interleaved arrivals: a0..a4, b0..b3, a5..a9 at offsets 0..=13.
    s.insert(&a[..5], Durability::Sync).unwrap();
    s.insert(&b, Durability::Sync).unwrap();
    s.insert(&a[5..], Durability::Sync).unwrap();
    let cut = |c: &[Event], below| Cut {
        topic: c[0].topic().clone(),
        author: c[0].author(),
        below: Seq(below),
    };
    let done = s.prune(&[cut(&a, 7)]).unwrap();
    assert_eq!(done.events, 7);
    assert_eq!(
        done.bytes,
        a[..7].iter().map(|e| e.bytes().len() as u64).sum::<u64>()
    );
    let size = |c: &[Event]| c.iter().map(|e| e.bytes().len() as u64).sum::<u64>();
    let st = s.log_state(&k.author(), a[0].topic()).unwrap();
    assert_eq!(st.base, Seq(7));
    assert_eq!(st.head.unwrap().id, a[9].id());
    // The bytes held count what stays (what `max_bytes` rules read), and the bytes
    // pruned what went; a log this node cut is not one that started over.
    assert_eq!(st.bytes, size(&a[7..]));
    assert_eq!(st.pruned_bytes, size(&a[..7]));
    assert!(!st.restarted);
    assert_eq!(
        s.log_state(&j.author(), b[0].topic()).unwrap().bytes,
        size(&b)
    );
    // a5 and a6 were at offsets 9 and 10: a reader from below 11 may have missed some.
    assert_eq!((st.pruned_to, s.pruned_to()), (Offset(11), Offset(11)));
    // Reads start at the base; ids below it are gone.
    let r = s.log_range(&k.author(), a[0].topic(), Seq(0), 100).unwrap();
    assert_eq!(
        r.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    assert!(s.event(&a[3].id()).unwrap().is_none());
    assert!(s.event(&a[8].id()).unwrap().is_some());
    // Arrivals skip the pruned offsets; the other log is untouched.
    let page = s.arrivals(Offset(0), None, 100, 100).unwrap();
    let offs: Vec<u64> = page.events.iter().map(|(o, _)| o.0).collect();
    assert_eq!(offs, vec![5, 6, 7, 8, 11, 12, 13]);
    assert_eq!(s.next_offset(), Offset(14));
    // Nothing below the base comes back, by any path; the chain continues.
    let again = s.insert(&a[..7], Durability::Sync).unwrap();
    assert!(again.iter().all(|o| *o == Outcome::Pruned), "{again:?}");
    let more = murmur_core::testing::chain(&k, "s/a", 12, "e");
    assert_eq!(
        s.insert(&more[10..], Durability::Sync).unwrap(),
        vec![Outcome::Appended(Offset(14)), Outcome::Appended(Offset(15))]
    );
    // The head event always stays: a cut past it stops at it.
    let done = s.prune(&[cut(&a, 1000), cut(&b, 2)]).unwrap();
    assert_eq!(done.events, 4 + 2);
    let st = s.log_state(&k.author(), a[0].topic()).unwrap();
    assert_eq!((st.base, st.head.unwrap().seq), (Seq(11), Seq(11)));
    // A cut at or below the base, or of an unknown log, does nothing.
    assert_eq!(
        s.prune(&[cut(&a, 3), cut(&chain(&key(3), "x", 1), 5)])
            .unwrap()
            .events,
        0
    );
    let logs = s.logs().unwrap();
    let base_of = |t: &str| logs.iter().find(|l| l.topic.as_str() == t).unwrap().base;
    assert_eq!((base_of("s/a"), base_of("s/b")), (Seq(11), Seq(2)));
    let bytes_of = |t: &str| logs.iter().find(|l| l.topic.as_str() == t).unwrap().bytes;
    assert_eq!(
        (bytes_of("s/a"), bytes_of("s/b")),
        (size(&more[11..]), size(&b[2..]))
    );
    let vv = s.version_vector(a[0].topic()).unwrap();
    assert_eq!(vv.get(&k.author()).unwrap().seq, Seq(11));
}

/// A log started over past its head (its peers pruned what lies between): what it
/// held goes, the new range is its start, and the chain goes on from there.
pub(crate) fn restart_log_starts_a_log_over<S: Store>(s: &S) {
    let k = key(1);
    let c = chain(&k, "r/a", 12);
    s.insert(&c[..5], Durability::Sync).unwrap();
    let out = s.restart_log(&c[8..10], Durability::Sync).unwrap();
    assert_eq!(
        out,
        vec![Outcome::Appended(Offset(5)), Outcome::Appended(Offset(6))]
    );
    let st = s.log_state(&k.author(), c[0].topic()).unwrap();
    assert_eq!((st.base, st.head.unwrap().id), (Seq(8), c[9].id()));
    let size = |c: &[Event]| c.iter().map(|e| e.bytes().len() as u64).sum::<u64>();
    assert_eq!(
        st.bytes,
        size(&c[8..10]),
        "what it held before is not counted"
    );
    assert_eq!(st.pruned_bytes, size(&c[..5]), "what it dropped is");
    assert!(st.restarted);
    let held = s.log_range(&k.author(), c[0].topic(), Seq(0), 100).unwrap();
    assert_eq!(
        held.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        vec![8, 9]
    );
    assert!(s.event(&c[2].id()).unwrap().is_none());
    let page = s.arrivals(Offset(0), None, 100, 100).unwrap();
    assert_eq!(
        page.events.iter().map(|(o, _)| o.0).collect::<Vec<_>>(),
        vec![5, 6]
    );
    // What lay between is below the base now; the chain continues; a range that
    // continues the log is an ordinary insert.
    assert_eq!(
        s.insert(&c[6..7], Durability::Sync).unwrap(),
        vec![Outcome::Pruned]
    );
    assert_eq!(
        s.restart_log(&c[10..11], Durability::Sync).unwrap(),
        vec![Outcome::Appended(Offset(7))]
    );
    assert_eq!(s.log_state(&k.author(), c[0].topic()).unwrap().base, Seq(8));
    // A fresh log can start at a peer's base too.
    let j = key(2);
    let d = chain(&j, "r/b", 30);
    s.restart_log(&d[20..], Durability::Sync).unwrap();
    let st = s.log_state(&j.author(), d[0].topic()).unwrap();
    assert_eq!((st.base, st.head.unwrap().seq), (Seq(20), Seq(29)));
    assert_eq!(st.bytes, size(&d[20..]));
}

/// `truncate` takes a log's suffix back: the head goes back, the events, their ids
/// and arrivals go, the byte counts follow, offsets are not reused, and the log
/// continues from its new head. The first held event always stays.
pub fn truncate_takes_a_suffix_back<S: Store>(s: &S) {
    let (k, other) = (key(1), key(2));
    let c = chain(&k, "t", 8);
    let o = chain(&other, "t", 2);
    s.insert(&c[..6], Durability::Sync).unwrap();
    s.insert(&o, Durability::Sync).unwrap();
    let (a, t) = (k.author(), c[0].topic().clone());
    let size = |evs: &[Event]| evs.iter().map(|e| e.bytes().len() as u64).sum::<u64>();
    let next = s.next_offset();
    // Nothing past the head, nothing of an unknown log.
    assert_eq!(s.truncate(&t, &a, Seq(6)).unwrap().events, 0);
    assert_eq!(
        s.truncate(&Topic::new("none").unwrap(), &a, Seq(0))
            .unwrap()
            .events,
        0
    );
    let done = s.truncate(&t, &a, Seq(3)).unwrap();
    assert_eq!((done.events, done.bytes), (3, size(&c[3..6])));
    let st = s.log_state(&a, &t).unwrap();
    assert_eq!(st.head.map(|h| (h.seq, h.id)), Some((Seq(2), c[2].id())));
    assert_eq!(st.bytes, size(&c[..3]));
    assert_eq!(st.pruned_bytes, size(&c[3..6]));
    assert_eq!(s.log_range(&a, &t, Seq(0), 100).unwrap(), c[..3].to_vec());
    for e in &c[3..6] {
        assert_eq!(s.event(&e.id()).unwrap(), None);
    }
    assert_eq!(
        s.version_vector(&t).unwrap().get(&a).map(|e| e.seq),
        Some(Seq(2))
    );
    // Arrivals skip what went; the other author's stay; no offset is reused.
    let page = s.arrivals(Offset(0), None, 100, 100).unwrap();
    assert_eq!(page.events.len(), 5);
    assert!(
        page.events
            .iter()
            .all(|(_, e)| e.seq() < Seq(3) || e.author() != a)
    );
    assert_eq!(s.next_offset(), next);
    // The log continues from its new head (the same events, or others).
    assert_eq!(
        appended(&s.insert(&c[3..], Durability::Sync).unwrap()),
        vec![next.0, next.0 + 1, next.0 + 2, next.0 + 3, next.0 + 4]
    );
    // Each event is read once in arrival order: the old offsets of seq 3-5 do not
    // name the events now stored there.
    let page = s.arrivals(Offset(0), None, 100, 100).unwrap();
    let ids: Vec<_> = page.events.iter().map(|(_, e)| e.id()).collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (10, 10));
    // A cut at or below the first held event keeps it.
    let done = s.truncate(&t, &a, Seq(0)).unwrap();
    assert_eq!(done.events, 7);
    let st = s.log_state(&a, &t).unwrap();
    assert_eq!(st.head.map(|h| h.seq), Some(Seq(0)));
    assert_eq!(s.log_range(&a, &t, Seq(0), 100).unwrap(), c[..1].to_vec());
}

macro_rules! conformance_tests {
    ($make:expr) => {
        #[test]
        fn truncate_takes_a_suffix_back() {
            let s = $make;
            $crate::conformance::truncate_takes_a_suffix_back(&*s);
        }
        #[test]
        fn restart_log_starts_a_log_over() {
            let s = $make;
            $crate::conformance::restart_log_starts_a_log_over(&*s);
        }
        #[test]
        fn prune_cuts_a_prefix() {
            let s = $make;
            $crate::conformance::prune_cuts_a_prefix(&*s);
        }
        #[test]
        fn append_and_read() {
            let s = $make;
            $crate::conformance::append_and_read(&*s);
        }
        #[test]
        fn duplicates_and_gaps_store_nothing() {
            let s = $make;
            $crate::conformance::duplicates_and_gaps_store_nothing(&*s);
        }
        #[test]
        fn forks_freeze_the_log() {
            let s = $make;
            $crate::conformance::forks_freeze_the_log(&*s);
        }
        #[test]
        fn prev_mismatch_is_refused() {
            let s = $make;
            $crate::conformance::prev_mismatch_is_refused(&*s);
        }
        #[test]
        fn arrivals_filter_and_page() {
            let s = $make;
            $crate::conformance::arrivals_filter_and_page(&*s);
        }
        #[test]
        fn logs_and_version_vectors() {
            let s = $make;
            $crate::conformance::logs_and_version_vectors(&*s);
        }
        #[test]
        fn documents_are_indexed() {
            let s = $make;
            $crate::conformance::documents_are_indexed(&*s);
        }
    };
}

mod memory {
    conformance_tests!(Box::new(crate::MemoryStore::new()));
}

mod rocks {
    use super::*;
    use crate::{RocksConfig, RocksStore, StoreError};

    /// A store in a temp dir that lives as long as the store.
    pub(crate) struct Tmp {
        pub store: RocksStore,
        pub _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Tmp {
        type Target = RocksStore;
        fn deref(&self) -> &RocksStore {
            &self.store
        }
    }

    pub(crate) fn tmp() -> Tmp {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        Tmp { store, _dir: dir }
    }

    conformance_tests!(tmp());

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let c = chain(&k, "r", 50);
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            s.insert(&c[..30], Durability::Sync).unwrap();
            s.insert(&c[30..], Durability::Buffered).unwrap();
            s.flush().unwrap();
        }
        let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        assert_eq!(s.next_offset(), Offset(50));
        assert_eq!(
            s.log_state(&k.author(), c[0].topic())
                .unwrap()
                .head
                .unwrap()
                .id,
            c[49].id()
        );
        assert_eq!(
            s.log_range(&k.author(), c[0].topic(), Seq(0), 100)
                .unwrap()
                .len(),
            50
        );
        let more = chain(&k, "r", 51);
        assert_eq!(
            s.insert(&more[50..], Durability::Sync).unwrap(),
            vec![Outcome::Appended(Offset(50))]
        );
        let report = crate::check::verify(&s).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.logs, report.events, report.arrivals), (1, 51, 51));
    }

    /// A truncated store reopens where it was: the newest arrivals were taken back, and
    /// the next offset does not fall back to reuse theirs; `murmur verify` is clean.
    #[test]
    fn a_truncated_store_reopens_without_reusing_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let c = chain(&k, "r", 10);
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            s.insert(&c, Durability::Sync).unwrap();
            assert_eq!(
                s.truncate(c[0].topic(), &k.author(), Seq(4))
                    .unwrap()
                    .events,
                6
            );
            s.flush().unwrap();
        }
        let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        assert_eq!(s.next_offset(), Offset(10));
        let head = s.log_state(&k.author(), c[0].topic()).unwrap().head;
        assert_eq!(head.map(|h| h.seq), Some(Seq(3)));
        let report = crate::check::verify(&s).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.logs, report.events, report.arrivals), (1, 4, 4));
        assert_eq!(
            s.insert(&c[4..5], Durability::Sync).unwrap(),
            vec![Outcome::Appended(Offset(10))]
        );
    }

    /// Idempotency keys are written with their events, answer with the event and its
    /// offset after a reopen, and only keys older than the cutoff are deleted.
    #[test]
    fn idempotency_keys_are_durable_with_their_events_and_pruned_by_age() {
        use crate::rocks::KeyOf;
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let c = chain(&k, "i", 3);
        let of = |key: &str, e: &Event| KeyOf {
            key: key.into(),
            id: e.id(),
            request: [7; 32],
        };
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            s.insert_keyed(&c[..2], &[of("old", &c[0])], 1_000, Durability::Sync)
                .unwrap();
            s.insert_keyed(&c[2..], &[of("new", &c[2])], 5_000, Durability::Sync)
                .unwrap();
            // A key whose event the acceptance rules refuse is not recorded.
            let stranger = chain(&key(2), "i", 2);
            let out = s
                .insert_keyed(
                    &stranger[1..],
                    &[of("gap", &stranger[1])],
                    5_000,
                    Durability::Sync,
                )
                .unwrap();
            assert!(!matches!(out[0], Outcome::Appended(_)), "{out:?}");
            assert!(s.idempotency("gap").unwrap().is_none());
            assert!(s.idempotency("none").unwrap().is_none());
        }
        let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        let old = s.idempotency("old").unwrap().unwrap();
        assert_eq!(
            (old.at_ms, old.id, old.request),
            (1_000, c[0].id(), [7; 32])
        );
        let (off, ev) = old.event.unwrap();
        assert_eq!((off, ev.id()), (Offset(0), c[0].id()));
        let new = s.idempotency("new").unwrap().unwrap();
        assert_eq!(new.event.map(|(o, _)| o), Some(Offset(2)));
        // Keys from before 2,000 ms go, a budget at a time, going on where it stopped:
        // "new" sorts first and stays, then "old" goes.
        assert_eq!(
            s.prune_idempotency(2_000, 1, None).unwrap(),
            (0, Some("old".into()))
        );
        assert_eq!(
            s.prune_idempotency(2_000, 1, Some("old")).unwrap(),
            (1, None)
        );
        assert!(s.idempotency("old").unwrap().is_none());
        assert!(s.idempotency("new").unwrap().is_some());
        // Keys are not events: verify knows nothing of them.
        assert!(crate::check::verify(&s).unwrap().is_clean());
    }

    /// Rolling back to an older murmur over a store a newer one wrote: the open is
    /// refused with a message that names both versions, and nothing is changed (the
    /// newer binary opens it again as it was).
    #[test]
    fn a_store_from_a_newer_murmur_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let c = chain(&k, "v", 3);
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            s.insert(&c, Durability::Sync).unwrap();
            let db = s.db();
            db.put_cf(
                db.cf_handle("meta").unwrap(),
                b"schema",
                (crate::rocks::SCHEMA_VERSION + 1).to_be_bytes(),
            )
            .unwrap();
        }
        let Err(err) = RocksStore::open(dir.path(), &RocksConfig::default()) else {
            panic!("a store from a newer murmur was opened");
        };
        let text = err.to_string();
        let newer = crate::rocks::SCHEMA_VERSION + 1;
        assert!(
            text.contains(&format!("schema version {newer} is newer"))
                && text.contains(&format!("({})", crate::rocks::SCHEMA_VERSION))
                && text.contains("upgrade murmur"),
            "{text}"
        );
        // Refused twice the same way: the failed open wrote nothing over it.
        let again = RocksStore::open(dir.path(), &RocksConfig::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(again.as_deref(), Some(text.as_str()));
        // Back under the version that wrote it (here: the marker put back), it opens
        // with every event and verifies clean.
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(false);
            let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            let db = rocksdb::DB::open_cf(&opts, dir.path(), &cfs).unwrap();
            db.put_cf(
                db.cf_handle("meta").unwrap(),
                b"schema",
                crate::rocks::SCHEMA_VERSION.to_be_bytes(),
            )
            .unwrap();
        }
        let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        assert_eq!(s.next_offset(), Offset(3));
        let r = crate::check::verify(&s).unwrap();
        assert!(r.is_clean() && r.events == 3, "{:?}", r.problems);
    }

    /// A schema 1 store (the id index without offsets, 52-byte head records) is
    /// upgraded at open, counting each log's bytes; a pruned store reopens with its
    /// bases and byte counts and verifies clean.
    #[test]
    fn schema_1_is_upgraded_and_a_pruned_store_reopens_and_verifies() {
        use murmur_core::storage::Cut;
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let c = chain(&k, "u", 40);
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            s.insert(&c, Durability::Sync).unwrap();
            // Back to schema 1: id index values are bare event keys.
            let db = s.db();
            let by_id = db.cf_handle("by_id").unwrap();
            let lk = crate::keys::log_key(c[0].topic(), &k.author());
            for e in &c {
                db.put_cf(by_id, e.id().0, crate::keys::event_key(&lk, e.seq()))
                    .unwrap();
            }
            let heads = db.cf_handle("heads").unwrap();
            let record = db.get_cf(heads, &lk).unwrap().unwrap();
            db.put_cf(heads, &lk, &record[..52]).unwrap();
            db.put_cf(db.cf_handle("meta").unwrap(), b"schema", 1u32.to_be_bytes())
                .unwrap();
        }
        let size = |c: &[Event]| c.iter().map(|e| e.bytes().len() as u64).sum::<u64>();
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            let r = crate::check::verify(&s).unwrap();
            assert!(r.is_clean(), "{:?}", r.problems);
            assert_eq!(
                s.log_state(&k.author(), c[0].topic()).unwrap().bytes,
                size(&c)
            );
            let cut = Cut {
                topic: c[0].topic().clone(),
                author: k.author(),
                below: Seq(30),
            };
            assert_eq!(s.prune(&[cut]).unwrap().events, 30);
            let page = s.arrivals(Offset(0), None, 100, 100).unwrap();
            assert_eq!(page.events.len(), 10, "the arrival entries went too");
        }
        let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        let st = s.log_state(&k.author(), c[0].topic()).unwrap();
        assert_eq!((st.base, st.head.unwrap().seq), (Seq(30), Seq(39)));
        assert_eq!(st.bytes, size(&c[30..]));
        assert_eq!(s.next_offset(), Offset(40));
        let report = crate::check::verify(&s).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.events, report.arrivals), (10, 10));
        let scan = crate::check::scan(&s, &std::sync::atomic::AtomicBool::new(false))
            .unwrap()
            .unwrap();
        assert!(scan.problem().is_none(), "{:?}", scan.problem());
    }

    #[test]
    fn second_open_is_refused_with_a_clear_error() {
        let s = tmp();
        let err = RocksStore::open(s._dir.path(), &RocksConfig::default()).unwrap_err();
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        assert!(err.to_string().contains("in use by another process"));
    }

    /// A document snapshot event is indexed among its document's changes and as a
    /// snapshot of its topic; pruning it takes it out of both.
    #[test]
    fn snapshot_events_are_indexed_and_pruned_with_their_event() {
        use murmur_core::snapshot::{CONTENT_TYPE, DocSnapshot};
        let s = tmp();
        let k = key(1);
        let a0 = doc_event(&k, "t/d", "a", 0, None);
        let snap = DocSnapshot::new(
            "a",
            &murmur_core::VersionVector::new(),
            b"automerge".to_vec(),
        );
        let ev = |seq: u64, prev: &Event| {
            Event::sign(
                &Draft {
                    topic: Topic::new("t/d").unwrap(),
                    seq: Seq(seq),
                    prev: Some(prev.id()),
                    time: Timestamp::from_ms(2 + seq),
                    body: Payload::Data {
                        content_type: Some(CONTENT_TYPE.into()),
                        data: Bytes::from(snap.encode()),
                    },
                },
                &k,
            )
            .unwrap()
        };
        let s1 = ev(1, &a0);
        let s2 = ev(2, &s1);
        let a3 = doc_event(&k, "t/d", "a", 3, Some(&s2));
        s.insert(&[a0, s1.clone(), s2.clone(), a3], Durability::Sync)
            .unwrap();
        let topic = Topic::new("t/d").unwrap();
        let doc = DocId::new("a").unwrap();
        let changes = s.doc_changes(&topic, &doc, Offset(0), 10).unwrap();
        assert_eq!(changes.len(), 4, "the snapshots are among the changes");
        let held = |doc: Option<&DocId>| {
            let mut out = Vec::new();
            s.snapshot_events(&topic, doc, 10, |e, snap| {
                out.push((e, snap));
                true
            })
            .unwrap();
            out
        };
        assert_eq!(
            held(None).iter().map(|(e, _)| e.id()).collect::<Vec<_>>(),
            vec![s2.id(), s1.id()],
            "newest first"
        );
        assert_eq!(held(None)[0].1, snap);
        assert_eq!(held(Some(&doc)).len(), 2);
        assert!(held(Some(&DocId::new("b").unwrap())).is_empty());
        // The visit stops when asked to.
        let mut n = 0;
        s.snapshot_events(&topic, None, 10, |_, _| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
        s.prune(&[murmur_core::storage::Cut {
            topic: topic.clone(),
            author: k.author(),
            below: Seq(2),
        }])
        .unwrap();
        let held = held(None);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0.id(), s2.id());
        assert_eq!(s.doc_changes(&topic, &doc, Offset(0), 10).unwrap().len(), 2);
        assert!(crate::check::verify(&s).unwrap().is_clean());
    }

    #[test]
    fn verify_finds_a_wrong_byte_count() {
        let s = tmp();
        let k = key(1);
        let c = chain(&k, "w", 5);
        s.insert(&c, Durability::Sync).unwrap();
        let db = s.db();
        let heads = db.cf_handle("heads").unwrap();
        let lk = crate::keys::log_key(c[0].topic(), &k.author());
        let mut rec = crate::rocks::decode_head(&db.get_cf(heads, &lk).unwrap().unwrap()).unwrap();
        rec.bytes += 1;
        db.put_cf(heads, &lk, crate::rocks::encode_head(&rec))
            .unwrap();
        let r = crate::check::verify(&s).unwrap();
        assert!(
            r.problems.iter().any(|p| p.contains("bytes held")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn verify_finds_tampering_and_broken_indexes() {
        let s = tmp();
        let k = key(1);
        let c = chain(&k, "v", 20);
        s.insert(&c, Durability::Sync).unwrap();
        s.insert(&chain_with(&k, "v", 20, "fork")[7..8], Durability::Sync)
            .unwrap();
        assert!(crate::check::verify(&s).unwrap().is_clean());
        let db = s.db();
        let events = db.cf_handle("events").unwrap();
        // Replace event 5 with a bit-flipped copy (signature region) and drop event 9's
        // id index entry.
        let lk = crate::keys::log_key(c[0].topic(), &k.author());
        let mut bytes = c[5].bytes().to_vec();
        let n = bytes.len();
        bytes[n - 3] ^= 0x10;
        db.put_cf(events, crate::keys::event_key(&lk, Seq(5)), &bytes)
            .unwrap();
        db.delete_cf(db.cf_handle("by_id").unwrap(), c[9].id().0)
            .unwrap();
        let r = crate::check::verify(&s).unwrap();
        assert!(!r.is_clean());
        let text = r.problems.join("\n");
        assert!(text.contains("seq 6: prev does not link"), "{text}");
        assert!(text.contains("seq 5: signature"), "{text}");
        assert!(text.contains("seq 9: missing from the id index"), "{text}");
        assert!(
            text.contains("seq 5: id index points elsewhere") || text.contains("seq 5: missing"),
            "{text}"
        );
    }

    #[test]
    fn startup_check_catches_a_head_past_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        let c = chain(&k, "h", 5);
        {
            let s = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
            s.insert(&c, Durability::Sync).unwrap();
            let lk = crate::keys::log_key(c[0].topic(), &k.author());
            s.db()
                .delete_cf(
                    s.db().cf_handle("events").unwrap(),
                    crate::keys::event_key(&lk, Seq(4)),
                )
                .unwrap();
        }
        let err = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
