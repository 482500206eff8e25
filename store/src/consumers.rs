//! Named consumers' cursors (RocksDB only), in the `meta` column family under the
//! prefix `cons\0` (no new column family: an older murmur opens the store and ignores
//! them).
//!
//! | key | value |
//! |---|---|
//! | `cons\0` · name | next (8, BE) · created ms (8) · acked ms (8) · pattern (rest; empty: every topic) |
//!
//! `next` is the first offset not yet acknowledged: everything below it that matches
//! the pattern was delivered and acknowledged. A cursor is written with a WAL write
//! but, unless asked, no fsync of its own: a daemon killed right after an ack keeps it
//! (the WAL write is in the kernel's hands), and a power cut can only move a cursor
//! back, which redelivers and never loses; the next event commit's fsync covers it.
//! Offsets are this node's own arrival numbers: `murmur repair` renumbers them and
//! keeps no consumer.

use murmur_core::{Offset, Pattern};
use rocksdb::WriteOptions;

use crate::keys::topic_of;
use crate::rocks::{CF_ARRIVALS, CF_META, RocksStore, StoreError, corrupt};

type Result<T> = std::result::Result<T, StoreError>;

const PREFIX: &[u8] = b"cons\0";
const FIXED: usize = 24;

/// A named consumer as stored ([`RocksStore::consumers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic pattern it reads (`None`: every topic).
    pub pattern: Option<String>,
    /// The first offset not acknowledged.
    pub next: u64,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// When its cursor last moved, ms since the epoch.
    pub acked_ms: u64,
}

fn key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + name.len());
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

fn encode(r: &ConsumerRecord) -> Vec<u8> {
    let p = r.pattern.as_deref().unwrap_or("");
    let mut v = Vec::with_capacity(FIXED + p.len());
    v.extend_from_slice(&r.next.to_be_bytes());
    v.extend_from_slice(&r.created_ms.to_be_bytes());
    v.extend_from_slice(&r.acked_ms.to_be_bytes());
    v.extend_from_slice(p.as_bytes());
    v
}

fn decode(v: &[u8]) -> Result<ConsumerRecord> {
    if v.len() < FIXED {
        return Err(corrupt("consumer record shorter than 24 bytes"));
    }
    let u = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let pattern =
        std::str::from_utf8(&v[FIXED..]).map_err(|_| corrupt("consumer pattern is not UTF-8"))?;
    Ok(ConsumerRecord {
        pattern: (!pattern.is_empty()).then(|| pattern.to_owned()),
        next: u(0),
        created_ms: u(8),
        acked_ms: u(16),
    })
}

impl RocksStore {
    /// Every named consumer, by name, and how many records were unreadable (skipped:
    /// a damaged cursor must not keep the node from starting; its consumer is gone).
    pub fn consumers(&self) -> Result<(Vec<(String, ConsumerRecord)>, usize)> {
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut it = self.db().raw_iterator_cf(self.cf(CF_META));
        it.seek(PREFIX);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let Some(name) = k.strip_prefix(PREFIX) else {
                break;
            };
            match (std::str::from_utf8(name), decode(v)) {
                (Ok(name), Ok(r)) => out.push((name.to_owned(), r)),
                _ => skipped += 1,
            }
            it.next();
        }
        it.status()?;
        Ok((out, skipped))
    }

    /// Writes a consumer's record; `sync` fsyncs the WAL before returning.
    pub fn put_consumer(&self, name: &str, record: &ConsumerRecord, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db()
            .put_cf_opt(self.cf(CF_META), key(name), encode(record), &wo)?;
        Ok(())
    }

    /// How many events at offsets from `from` match `pattern`, reading the arrival index
    /// only (no event), at most `max_scan` entries: `(count, complete)`, where
    /// `complete` is false when the scan stopped before the end.
    pub fn count_arrivals(
        &self,
        from: Offset,
        pattern: Option<&Pattern>,
        max_scan: usize,
    ) -> Result<(u64, bool)> {
        let mut it = self.db().raw_iterator_cf(self.cf(CF_ARRIVALS));
        it.seek(from.0.to_be_bytes());
        let (mut count, mut scanned) = (0u64, 0usize);
        while let Some(v) = it.value() {
            if scanned == max_scan {
                it.status()?;
                return Ok((count, false));
            }
            let keep = match pattern {
                None => true,
                Some(p) => p.matches_str(topic_of(v).ok_or_else(|| corrupt("arrival value"))?),
            };
            count += u64::from(keep);
            scanned += 1;
            it.next();
        }
        it.status()?;
        Ok((count, true))
    }

    /// Deletes a consumer, durably.
    pub fn delete_consumer(&self, name: &str) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db().delete_cf_opt(self.cf(CF_META), key(name), &wo)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_round_trip_survive_a_reopen_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let a = ConsumerRecord {
            pattern: Some("sensors/#".into()),
            next: 42,
            created_ms: 1,
            acked_ms: 2,
        };
        let b = ConsumerRecord {
            pattern: None,
            next: 0,
            created_ms: 3,
            acked_ms: 3,
        };
        {
            let s = RocksStore::open(dir.path(), &Default::default()).unwrap();
            assert!(s.consumers().unwrap().0.is_empty());
            s.put_consumer("billing", &a, false).unwrap();
            s.put_consumer("all", &b, true).unwrap();
            // Another meta key after the prefix range is not read as a consumer.
            s.put_consumer(
                "billing",
                &ConsumerRecord {
                    next: 43,
                    ..a.clone()
                },
                false,
            )
            .unwrap();
        }
        let s = RocksStore::open(dir.path(), &Default::default()).unwrap();
        // A damaged record is skipped, not fatal.
        s.db()
            .put_cf(s.cf(CF_META), key("broken"), [1u8, 2, 3])
            .unwrap();
        let (got, skipped) = s.consumers().unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(
            got,
            vec![
                ("all".to_owned(), b),
                ("billing".to_owned(), ConsumerRecord { next: 43, ..a })
            ]
        );
        s.delete_consumer("all").unwrap();
        assert_eq!(s.consumers().unwrap().0.len(), 1);
        assert!(decode(&[0u8; 5]).is_err());
    }

    #[test]
    fn count_arrivals_counts_matching_offsets_within_the_scan() {
        use murmur_core::{Durability, Store};
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStore::open(dir.path(), &Default::default()).unwrap();
        let k = murmur_core::Keypair::from_seed(&[7; 32]);
        let a = crate::conformance::chain(&k, "a/x", 5);
        let b = crate::conformance::chain(&k, "b/y", 3);
        s.insert(&a, Durability::Sync).unwrap();
        s.insert(&b, Durability::Sync).unwrap();
        let p = Pattern::new("a/#").unwrap();
        assert_eq!(
            s.count_arrivals(Offset(0), Some(&p), 100).unwrap(),
            (5, true)
        );
        assert_eq!(
            s.count_arrivals(Offset(2), Some(&p), 100).unwrap(),
            (3, true)
        );
        assert_eq!(s.count_arrivals(Offset(0), None, 100).unwrap(), (8, true));
        assert_eq!(s.count_arrivals(Offset(0), None, 4).unwrap(), (4, false));
        assert_eq!(s.count_arrivals(Offset(8), None, 4).unwrap(), (0, true));
    }
}
