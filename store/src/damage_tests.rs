//! Damaged disks (issue 12): a flipped byte anywhere is an error naming the file, never
//! a store that opens with acknowledged events missing and never "another daemon is
//! running"; the lock held by another process still is; `murmur repair` keeps a copy,
//! salvages what verifies, and what peers send afterwards fills the logs back up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_core::storage::{Durability, Outcome, ReadStore, Store};
use murmur_core::testing::{chain_with, key};
use murmur_core::{Event, Offset, Seq, Topic};
use rocksdb::ErrorKind;

use crate::error::{OpenFailure, classify, named_file};
use crate::rocks::write_mark_file;
use crate::{RocksConfig, RocksStore, StoreError, check, repair};

const FAMILIES: [&str; 7] = [
    "docs", "events", "heads", "by_id", "arrivals", "forks", "meta",
];

fn cfg() -> RocksConfig {
    RocksConfig::default()
}

/// 1,000 bytes that do not compress, so WALs and SSTs are mostly event payloads.
fn noise(seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(1008);
    while v.len() < 1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(1000);
    Bytes::from(v)
}

fn log_of(n: u8, topic: &str, len: usize) -> Vec<Event> {
    chain_with(&key(n), topic, len, noise)
}

/// Inserts `events` in synced batches of 10, as the daemon acknowledges them.
fn insert_synced(s: &RocksStore, events: &[Event]) {
    for batch in events.chunks(10) {
        for o in s.insert(batch, Durability::Sync).unwrap() {
            assert!(matches!(o, Outcome::Appended(_)), "{o:?}");
        }
    }
}

fn files(db: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted))
        .collect();
    out.sort();
    out
}

/// WAL files (`000012.log`; `LOG` and `LOG.old.*` are RocksDB's info logs).
fn wals(db: &Path) -> Vec<PathBuf> {
    files(db, |n| {
        n.ends_with(".log") && n.starts_with(|c: char| c.is_ascii_digit())
    })
}

fn ssts(db: &Path) -> Vec<PathBuf> {
    files(db, |n| n.ends_with(".sst"))
}

/// Flips one byte; returns the file's new contents.
fn flip(path: &Path, at: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// The middle of a file, moved off the last bytes of a 32 KiB WAL block (block
/// trailers are padding that RocksDB skips).
fn middle(path: &Path) -> usize {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let mut at = len / 2;
    if at % 32_768 > 32_768 - 16 {
        at -= 32;
    }
    at
}

/// An open that must fail as damage: never Ok with fewer events, never Locked.
fn open_damaged(db: &Path, expected_events: u64) -> StoreError {
    match RocksStore::open(db, &cfg()) {
        Ok(s) => panic!(
            "a damaged store opened with {} of {expected_events} acknowledged events",
            s.next_offset().0
        ),
        Err(e) => {
            assert!(e.is_corruption(), "not reported as damage: {e:?}");
            assert!(!matches!(e, StoreError::Locked(_)), "{e}");
            let text = e.to_string();
            assert!(!text.contains("in use by another process"), "{text}");
            assert!(text.contains("murmur repair"), "{text}");
            e
        }
    }
}

#[test]
fn errors_are_classified_by_kind_not_by_text() {
    let db = Path::new("/d/db");
    let sst = "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 1  in \
               /d/db/000009.sst offset 0 size 100, block_type = data";
    assert_eq!(classify(ErrorKind::Corruption, sst), OpenFailure::Damaged);
    assert_eq!(
        named_file(Some(db), sst),
        Some(PathBuf::from("/d/db/000009.sst"))
    );
    assert_eq!(
        classify(
            ErrorKind::IOError,
            "IO error: While lock file: /d/db/LOCK: Resource temporarily unavailable"
        ),
        OpenFailure::Locked
    );
    assert_eq!(
        classify(
            ErrorKind::IOError,
            "IO error: lock hold by current process, acquire time 1 acquiring thread 2: \
             /d/db/LOCK: No locks available"
        ),
        OpenFailure::Locked
    );
    // Not being able to create LOCK is not another daemon.
    assert_eq!(
        classify(
            ErrorKind::IOError,
            "IO error: while open a file for lock: /d/db/LOCK: Permission denied"
        ),
        OpenFailure::Other
    );
    let gone = "IO error: No such file or directory: While opening a file for sequentially \
                reading: /d/db/MANIFEST-000009: No such file or directory";
    assert_eq!(classify(ErrorKind::IOError, gone), OpenFailure::Damaged);
    assert_eq!(
        named_file(Some(db), gone),
        Some(PathBuf::from("/d/db/MANIFEST-000009"))
    );
    assert_eq!(
        classify(
            ErrorKind::IOError,
            "IO error: No such file or directory: While mkdir if missing: /d/db: No such file or directory"
        ),
        OpenFailure::Other
    );
    assert_eq!(
        named_file(Some(db), "Corruption: Missing WAL with log number: 12."),
        Some(PathBuf::from("/d/db/000012.log"))
    );
    assert_eq!(
        named_file(Some(db), "Corruption: CURRENT file corrupted"),
        Some(PathBuf::from("/d/db/CURRENT"))
    );
    assert_eq!(named_file(Some(db), "Corruption: checksum mismatch"), None);
}

/// Finding 1 of issue 12: acknowledged events only in the WAL, one byte flipped in the
/// middle of it. RocksDB's default recovery opened the store without them.
#[test]
fn a_flipped_wal_byte_is_an_error_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let events = log_of(1, "disk/wal", 200);
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &events);
    }
    // Still in the WAL only (RocksDB does not flush memtables at close when the WAL
    // is on), and big enough that its middle is not in the last 32 KiB block.
    assert!(ssts(&db).is_empty(), "{:?}", ssts(&db));
    let wal = wals(&db).pop().unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() > 96 << 10);
    let damaged = flip(&wal, middle(&wal));

    let err = open_damaged(&db, 200);
    assert_eq!(
        err.damaged_file().and_then(Path::file_name),
        wal.file_name(),
        "{err}"
    );
    // The failed open destroyed nothing, and it fails the same way again.
    assert_eq!(std::fs::read(&wal).unwrap(), damaged);
    open_damaged(&db, 200);
}

/// A power cut in the middle of an append leaves an incomplete last record (a write
/// whose fsync never returned, never acknowledged): the store opens with every
/// earlier commit. (`AbsoluteConsistency` would refuse to open here.)
#[test]
fn a_torn_wal_tail_opens_with_every_earlier_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let events = log_of(1, "disk/torn", 200);
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &events[..190]);
        // The last commit is the one torn by the power cut: not synced, not acknowledged.
        s.insert(&events[190..], Durability::Buffered).unwrap();
    }
    let wal = wals(&db).pop().unwrap();
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let s = RocksStore::open(&db, &cfg()).unwrap();
    assert_eq!(s.next_offset(), Offset(190));
    assert!(check::verify(&s).unwrap().is_clean());
}

/// Finding 2 of issue 12: "block checksum mismatch" contains "lock" and was reported as
/// another daemon holding the database.
#[test]
fn a_flipped_sst_byte_is_damage_not_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let events = log_of(1, "disk/sst", 200);
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &events);
        for name in FAMILIES {
            s.db().flush_cf(s.cf(name)).unwrap();
        }
    }
    let sst = ssts(&db)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    flip(&sst, middle(&sst));

    // The bad block may be read at open (startup check) or only by a full scan.
    // The daemon's background scan after start reads every block too.
    let err = match RocksStore::open(&db, &cfg()) {
        Err(e) => e,
        Ok(s) => {
            let scanned = check::scan(&s, &Default::default())
                .expect_err("the scan missed a flipped SST byte");
            assert_eq!(
                scanned.damaged_file().and_then(Path::file_name),
                sst.file_name(),
                "{scanned}"
            );
            match check::verify(&s) {
                Err(e) => e,
                Ok(r) => panic!("a flipped SST byte went unnoticed: {r:?}"),
            }
        }
    };
    assert!(err.is_corruption(), "{err:?}");
    assert!(!matches!(err, StoreError::Locked(_)), "{err}");
    assert!(
        !err.to_string().contains("in use by another process"),
        "{err}"
    );
    assert_eq!(
        err.damaged_file().and_then(Path::file_name),
        sst.file_name(),
        "{err}"
    );
}

#[test]
fn a_damaged_current_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &log_of(1, "disk/current", 20));
    }
    let current = db.join("CURRENT");
    let good = std::fs::read(&current).unwrap();

    // A flipped byte in the name: CURRENT no longer names a MANIFEST.
    flip(&current, 0);
    let err = open_damaged(&db, 20);
    assert_eq!(err.damaged_file(), Some(current.as_path()), "{err}");

    // CURRENT names a MANIFEST that is not there.
    std::fs::write(&current, b"MANIFEST-999999\n").unwrap();
    let err = open_damaged(&db, 20);
    assert_eq!(
        err.damaged_file().and_then(Path::file_name),
        Some(std::ffi::OsStr::new("MANIFEST-999999")),
        "{err}"
    );

    std::fs::write(&current, &good).unwrap();
    assert_eq!(
        RocksStore::open(&db, &cfg()).unwrap().next_offset(),
        Offset(20)
    );
}

/// Without CURRENT, RocksDB's `create_if_missing` would start a new, empty database
/// over the old files (and then delete the SSTs it does not know).
#[test]
fn a_missing_current_is_refused_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &log_of(1, "disk/nocurrent", 20));
    }
    let before = wals(&db);
    std::fs::remove_file(db.join("CURRENT")).unwrap();
    let err = open_damaged(&db, 20);
    assert_eq!(err.damaged_file(), Some(db.join("CURRENT").as_path()));
    assert!(!db.join("CURRENT").exists());
    assert_eq!(wals(&db), before);
}

#[test]
fn a_flipped_manifest_byte_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &log_of(1, "disk/manifest", 20));
    }
    let name = std::fs::read_to_string(db.join("CURRENT")).unwrap();
    let manifest = db.join(name.trim());
    let bytes = std::fs::read(&manifest).unwrap();
    // Inside a record's payload (the comparator's name), so the record's checksum
    // fails; a damaged length field at the end of the MANIFEST is a limit of RocksDB
    // (read as a torn tail), covered by the durability mark instead.
    let needle = b"BytewiseComparator";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    flip(&manifest, at + 3);
    let err = open_damaged(&db, 20);
    assert_eq!(
        err.damaged_file().and_then(Path::file_name),
        manifest.file_name(),
        "{err}"
    );
}

/// A store that comes back with fewer events than it had made durable is refused,
/// whatever made RocksDB drop them; a damaged mark is ignored.
#[test]
fn the_durability_mark_catches_a_store_that_lost_durable_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        assert!(s.created());
        insert_synced(&s, &log_of(1, "disk/mark", 30));
        s.flush().unwrap();
    }
    let mark = db.join(crate::MARK_FILE);
    assert!(mark.exists());
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        assert!(!s.created());
        assert_eq!(s.next_offset(), Offset(30));
    }

    // As if RocksDB had come back without the last event.
    write_mark_file(&db, 31).unwrap();
    let err = open_damaged(&db, 31);
    assert!(err.to_string().contains("holds 30 events"), "{err}");

    // A damaged mark must not stop a healthy node.
    std::fs::write(&mark, b"31 0\n").unwrap();
    assert_eq!(
        RocksStore::open(&db, &cfg()).unwrap().next_offset(),
        Offset(30)
    );
}

const HOLDER_ENV: &str = "MURMUR_STORE_TEST_HOLD_LOCK";

/// Run by `another_process_holding_the_database_is_locked` in a child process: opens
/// the store, says so, and holds it until its stdin closes.
#[test]
#[ignore = "helper process of another_process_holding_the_database_is_locked"]
fn hold_the_lock_for_another_test() {
    let Some(db) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let db = PathBuf::from(db);
    let store = RocksStore::open(&db, &cfg()).unwrap();
    std::fs::write(db.with_extension("ready"), b"").unwrap();
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    drop(store);
}

/// A real second daemon: RocksDB's lock is an fcntl lock, held per process.
#[test]
fn another_process_holding_the_database_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "damage_tests::hold_the_lock_for_another_test",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLDER_ENV, &db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = db.with_extension("ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process holding the lock exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the process holding the lock did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = RocksStore::open(&db, &cfg()).unwrap_err();
    let repair_err = repair::set_aside(&db, &cfg(), 1).unwrap_err();
    drop(child.stdin.take());
    let _ = child.wait();
    assert!(matches!(err, StoreError::Locked(_)), "{err:?}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    assert!(
        matches!(repair_err, StoreError::Locked(_)),
        "{repair_err:?}"
    );
    assert!(!dir.path().join("db.damaged-1").exists());
}

/// The whole path of issue 12: a flipped WAL byte, the store refuses to open, `murmur
/// repair` keeps a copy and salvages what verifies (including what RocksDB replays
/// past the bad record), and the events a peer sends back fill the log again.
#[test]
fn repair_after_a_wal_flip_keeps_a_copy_and_peers_fill_the_hole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let first = log_of(1, "disk/first", 200);
    let second = log_of(2, "disk/second", 20);
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &first);
        insert_synced(&s, &second);
    }
    let wal = wals(&db).pop().unwrap();
    let damaged = flip(&wal, middle(&wal));
    open_damaged(&db, 220);

    let backup = repair::set_aside(&db, &cfg(), 1234).unwrap();
    assert_eq!(backup, dir.path().join("db.damaged-1234"));
    let copy = backup.join(wal.file_name().unwrap());
    assert_eq!(std::fs::read(copy).unwrap(), damaged);

    let report = repair::rebuild(&db, &cfg(), 1234).unwrap();
    assert!(report.verify.is_clean(), "{:?}", report.verify.problems);
    assert!(report.kept >= 50 && report.kept < 220, "{report:?}");
    assert!(report.unlinked > 0, "{report:?}");
    assert!(report.offsets_changed_from.is_some(), "{report:?}");
    assert!(!dir.path().join("db.repair-tmp").exists());
    assert!(!dir.path().join("db.repair-old").exists());

    let s = RocksStore::open(&db, &cfg()).unwrap();
    assert_eq!(s.own_logs_unconfirmed().unwrap(), Some(1234));
    assert_eq!(s.next_offset(), Offset(report.kept));
    // The first log ends before the hole; the second, written after it, is whole.
    let topic = Topic::new("disk/first").unwrap();
    let head = s.log_state(&key(1).author(), &topic).unwrap().head.unwrap();
    assert!(head.seq.0 < 199);
    assert_eq!(
        s.log_range(&key(1).author(), &topic, Seq(0), 1000)
            .unwrap()
            .len() as u64,
        head.seq.0 + 1
    );
    let second_topic = Topic::new("disk/second").unwrap();
    assert_eq!(
        s.log_state(&key(2).author(), &second_topic)
            .unwrap()
            .head
            .unwrap()
            .seq,
        Seq(19)
    );

    // What a peer sends back: the whole first log. Nothing conflicts.
    for o in s.insert(&first, Durability::Sync).unwrap() {
        assert!(
            matches!(o, Outcome::Appended(_) | Outcome::Duplicate),
            "{o:?}"
        );
    }
    assert_eq!(s.next_offset(), Offset(220));
    assert!(check::verify(&s).unwrap().is_clean());
    s.confirm_own_logs().unwrap();
    assert_eq!(s.own_logs_unconfirmed().unwrap(), None);
}

/// Repair keeps each log up to its first missing event (so anti-entropy can fill it;
/// a hole below a head is never fetched), re-adds events whose arrival entry was lost,
/// and keeps fork proofs.
#[test]
fn repair_cuts_logs_at_a_hole_and_rebuilds_lost_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let a = chain_with(&key(1), "r/a", 10, noise);
    let b = chain_with(&key(2), "r/b", 10, noise);
    let fork = chain_with(&key(1), "r/a", 2, |seq| Bytes::from(format!("other {seq}")));
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &a);
        insert_synced(&s, &b);
        assert_eq!(
            s.insert(&fork[1..2], Durability::Sync).unwrap(),
            vec![Outcome::Fork(Seq(1))]
        );
        let lk = crate::keys::log_key(a[0].topic(), &key(1).author());
        s.db()
            .delete_cf(s.cf("events"), crate::keys::event_key(&lk, Seq(4)))
            .unwrap();
        // b's seq 2 arrived at offset 12.
        s.db()
            .delete_cf(s.cf("arrivals"), 12u64.to_be_bytes())
            .unwrap();
    }
    repair::set_aside(&db, &cfg(), 7).unwrap();
    let report = repair::rebuild(&db, &cfg(), 7).unwrap();
    assert!(report.verify.is_clean(), "{:?}", report.verify.problems);
    assert_eq!(
        (report.kept, report.unlinked, report.dangling, report.forks),
        (14, 5, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.offsets_changed_from, Some(4));

    let s = RocksStore::open(&db, &cfg()).unwrap();
    let st = s.log_state(&key(1).author(), a[0].topic()).unwrap();
    assert_eq!(st.head.unwrap().seq, Seq(3));
    assert_eq!(st.frozen_at, Some(Seq(1)));
    let st = s.log_state(&key(2).author(), b[0].topic()).unwrap();
    assert_eq!(st.head.unwrap().seq, Seq(9));
    assert_eq!(s.forks().unwrap().len(), 1);
}

/// Without CURRENT, RocksDB's own repair would rebuild from SST files only, and every
/// column family here lives in the WAL: CURRENT is pointed at the newest MANIFEST and
/// everything is kept.
#[test]
fn repair_restores_a_missing_current_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &log_of(1, "disk/current", 20));
    }
    std::fs::remove_file(db.join("CURRENT")).unwrap();
    open_damaged(&db, 20);
    repair::set_aside(&db, &cfg(), 5).unwrap();
    let report = repair::rebuild(&db, &cfg(), 5).unwrap();
    assert!(report.verify.is_clean(), "{:?}", report.verify.problems);
    assert_eq!(report.kept, 20, "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("CURRENT")),
        "{report:?}"
    );
    assert_eq!(
        RocksStore::open(&db, &cfg()).unwrap().next_offset(),
        Offset(20)
    );
}

/// A pruned store repairs to what it held: each pruned log starts at its base again
/// (not cut as if its first events were a hole), and its base stays.
#[test]
fn repair_keeps_pruned_logs_from_their_base() {
    use murmur_core::storage::Cut;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let c = log_of(1, "disk/pruned", 30);
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &c);
        let cut = Cut {
            topic: c[0].topic().clone(),
            author: c[0].author(),
            below: Seq(12),
        };
        assert_eq!(s.prune(&[cut]).unwrap().events, 12);
    }
    repair::set_aside(&db, &cfg(), 6).unwrap();
    let report = repair::rebuild(&db, &cfg(), 6).unwrap();
    assert!(report.verify.is_clean(), "{:?}", report.verify.problems);
    assert_eq!((report.kept, report.unlinked), (18, 0), "{report:?}");
    let s = RocksStore::open(&db, &cfg()).unwrap();
    let st = s.log_state(&c[0].author(), c[0].topic()).unwrap();
    assert_eq!((st.base, st.head.unwrap().id), (Seq(12), c[29].id()));
}

/// A repair interrupted between its two renames leaves no database where the daemon
/// looks: the daemon must not create an empty one there, and repair resumes.
#[test]
fn an_interrupted_repair_is_not_taken_for_a_new_node() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let s = RocksStore::open(&db, &cfg()).unwrap();
        insert_synced(&s, &log_of(1, "disk/interrupted", 20));
    }
    std::fs::rename(&db, dir.path().join("db.repair-old")).unwrap();
    let err = RocksStore::open(&db, &cfg()).unwrap_err();
    assert!(err.is_corruption(), "{err:?}");
    assert!(err.to_string().contains("interrupted"), "{err}");
    assert!(!db.exists());

    repair::set_aside(&db, &cfg(), 9).unwrap();
    let report = repair::rebuild(&db, &cfg(), 9).unwrap();
    assert!(report.verify.is_clean(), "{:?}", report.verify.problems);
    assert_eq!(report.kept, 20, "{report:?}");
    assert!(!dir.path().join("db.repair-old").exists());
}

/// Finding 5 of issue 12: a torn copy served events that its arrival index had lost,
/// and nothing said so. The scan's counts disagree.
#[test]
fn the_scan_catches_lost_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let s = RocksStore::open(&db, &cfg()).unwrap();
    insert_synced(&s, &log_of(1, "scan/a", 100));
    insert_synced(&s, &log_of(2, "scan/b", 50));
    let clean = check::scan(&s, &Default::default()).unwrap().unwrap();
    assert_eq!(
        clean,
        check::Scan {
            events: 150,
            ids: 150,
            arrivals: 150,
            in_heads: 150
        }
    );
    assert_eq!(clean.problem(), None);

    // Seven arrival entries gone, as in a copy taken file by file from a live store.
    for offset in 40u64..47 {
        s.db()
            .delete_cf(s.cf(crate::rocks::CF_ARRIVALS), offset.to_be_bytes())
            .unwrap();
    }
    let torn = check::scan(&s, &Default::default()).unwrap().unwrap();
    assert_eq!(torn.arrivals, 143);
    let problem = torn.problem().expect("a problem");
    assert!(problem.contains("143 arrival entries"), "{problem}");
}
