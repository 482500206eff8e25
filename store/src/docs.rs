//! Document indexes and snapshots (RocksDB only).
//!
//! One column family, `docs`, three kinds of keys:
//!
//! | key | value | written |
//! |---|---|---|
//! | `c` · topic · 0 · doc · 0 · offset (8, BE) | event key | with the event, same batch |
//! | `a` · offset (8, BE) | topic · 0 · doc | with the event, same batch |
//! | `s` · topic · 0 · doc | through (8, BE) · automerge bytes | by the daemon |
//!
//! `c` lists one document's changes in arrival order (a document's tail after a
//! snapshot, its history); `a` lists document changes by arrival (what changed since a
//! point); `s` is the newest snapshot with the offset it covers: every change of the
//! document with a smaller offset is in it. Topics and document ids never contain NUL.

use murmur_core::{DocId, Event, Offset, Topic};
use rocksdb::WriteBatch;

use crate::rocks::{RocksStore, StoreError, corrupt};

type Result<T> = std::result::Result<T, StoreError>;

pub(crate) const CF_DOCS: &str = "docs";

fn doc_name(topic: &str, doc: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + doc.len() + 1);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(doc.as_bytes());
    k
}

fn change_prefix(topic: &str, doc: &str) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(&doc_name(topic, doc));
    k.push(0);
    k
}

fn change_key(topic: &str, doc: &str, offset: u64) -> Vec<u8> {
    let mut k = change_prefix(topic, doc);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn arrival_key(offset: u64) -> [u8; 9] {
    let mut k = [b'a'; 9];
    k[1..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn snapshot_key(topic: &str, doc: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(&doc_name(topic, doc));
    k
}

fn split_name(v: &[u8]) -> Option<(Topic, DocId)> {
    let nul = v.iter().position(|b| *b == 0)?;
    let topic = Topic::new(std::str::from_utf8(&v[..nul]).ok()?).ok()?;
    let doc = DocId::new(std::str::from_utf8(&v[nul + 1..]).ok()?).ok()?;
    Some((topic, doc))
}

/// Adds the index entries of a document change stored at `offset` under `event_key`.
pub(crate) fn index(
    batch: &mut WriteBatch,
    store: &RocksStore,
    ev: &Event,
    offset: u64,
    ek: &[u8],
) {
    if let murmur_core::Body::Doc { doc, .. } = ev.body() {
        let cf = store.cf(CF_DOCS);
        let topic = ev.topic().as_str();
        batch.put_cf(cf, change_key(topic, doc, offset), ek);
        batch.put_cf(cf, arrival_key(offset), doc_name(topic, doc));
    }
}

/// A document change in arrival order: its offset, topic and document.
pub type DocArrival = (Offset, Topic, DocId);

/// A document snapshot: automerge's saved form and the offset it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every change of the document stored below this offset is in `bytes`.
    pub through: Offset,
    /// `Automerge::save` output.
    pub bytes: Vec<u8>,
}

impl RocksStore {
    /// Up to `limit` changes of one document with offsets from `from` on, in arrival
    /// order.
    pub fn doc_changes(
        &self,
        topic: &Topic,
        doc: &DocId,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<(Offset, Event)>> {
        let prefix = change_prefix(topic.as_str(), doc.as_str());
        let mut it = self.db().raw_iterator_cf(self.cf(CF_DOCS));
        it.seek(change_key(topic.as_str(), doc.as_str(), from.0));
        let mut keys: Vec<(Offset, Vec<u8>)> = Vec::new();
        while keys.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            let off = u64::from_be_bytes(
                k[prefix.len()..]
                    .try_into()
                    .map_err(|_| corrupt("doc change key"))?,
            );
            keys.push((Offset(off), v.to_vec()));
            it.next();
        }
        it.status()?;
        let mut out = Vec::with_capacity(keys.len());
        for (off, ek) in keys {
            let ev = self
                .event_at(&ek)?
                .ok_or_else(|| corrupt(format!("doc index names a missing event at {off}")))?;
            out.push((off, ev));
        }
        Ok(out)
    }

    /// The offset of a document's newest change, if it has any.
    pub fn doc_last_change(&self, topic: &Topic, doc: &DocId) -> Result<Option<Offset>> {
        let prefix = change_prefix(topic.as_str(), doc.as_str());
        let mut it = self.db().raw_iterator_cf(self.cf(CF_DOCS));
        it.seek_for_prev(change_key(topic.as_str(), doc.as_str(), u64::MAX));
        let found = match it.key() {
            Some(k) if k.starts_with(&prefix) && k.len() == prefix.len() + 8 => {
                Some(Offset(u64::from_be_bytes(
                    k[prefix.len()..]
                        .try_into()
                        .map_err(|_| corrupt("doc change key"))?,
                )))
            }
            _ => None,
        };
        it.status()?;
        Ok(found)
    }

    /// Documents changed at offsets from `from` on (up to `limit` changes), in arrival
    /// order, and where to continue.
    pub fn doc_arrivals(&self, from: Offset, limit: usize) -> Result<(Vec<DocArrival>, Offset)> {
        let mut it = self.db().raw_iterator_cf(self.cf(CF_DOCS));
        it.seek(arrival_key(from.0));
        let mut out = Vec::new();
        let mut next = from;
        while out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if k.len() != 9 || k[0] != b'a' {
                break;
            }
            let off = u64::from_be_bytes(k[1..].try_into().map_err(|_| corrupt("doc arrival"))?);
            let (topic, doc) = split_name(v).ok_or_else(|| corrupt("doc arrival value"))?;
            out.push((Offset(off), topic, doc));
            next = Offset(off + 1);
            it.next();
        }
        it.status()?;
        Ok((out, next))
    }

    /// The documents of a topic that have at least one change, in id order.
    pub fn docs_of(&self, topic: &Topic, limit: usize) -> Result<Vec<DocId>> {
        let mut prefix = vec![b'c'];
        prefix.extend_from_slice(topic.as_str().as_bytes());
        prefix.push(0);
        let mut it = self.db().raw_iterator_cf(self.cf(CF_DOCS));
        it.seek(&prefix);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(k) = it.key() else { break };
            if !k.starts_with(&prefix) || k.len() < prefix.len() + 10 {
                break;
            }
            let name = &k[prefix.len()..k.len() - 9];
            let doc = std::str::from_utf8(name)
                .ok()
                .and_then(|d| DocId::new(d).ok())
                .ok_or_else(|| corrupt("doc change key"))?;
            // Skip the rest of this document's changes in one seek.
            let mut past = change_prefix(topic.as_str(), doc.as_str());
            past.extend_from_slice(&[0xff; 9]);
            out.push(doc);
            it.seek(&past);
        }
        it.status()?;
        Ok(out)
    }

    /// Stores a snapshot of a document (replacing the previous one), durably.
    pub fn save_snapshot(&self, topic: &Topic, doc: &DocId, snap: &Snapshot) -> Result<()> {
        let mut v = Vec::with_capacity(8 + snap.bytes.len());
        v.extend_from_slice(&snap.through.0.to_be_bytes());
        v.extend_from_slice(&snap.bytes);
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_DOCS),
            snapshot_key(topic.as_str(), doc.as_str()),
            v,
        );
        self.db().write_opt(batch, &wo)?;
        Ok(())
    }

    /// The newest snapshot of a document, if any.
    pub fn load_snapshot(&self, topic: &Topic, doc: &DocId) -> Result<Option<Snapshot>> {
        let Some(v) = self
            .db()
            .get_cf(self.cf(CF_DOCS), snapshot_key(topic.as_str(), doc.as_str()))?
        else {
            return Ok(None);
        };
        if v.len() < 8 {
            return Err(corrupt("doc snapshot"));
        }
        let through = u64::from_be_bytes(v[..8].try_into().map_err(|_| corrupt("snapshot"))?);
        Ok(Some(Snapshot {
            through: Offset(through),
            bytes: v[8..].to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use murmur_core::testing::key;
    use murmur_core::{Draft, Durability, Payload, Seq, Store, Timestamp};

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

    #[test]
    fn changes_are_indexed_per_document_and_by_arrival() {
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStore::open(dir.path(), &Default::default()).unwrap();
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
        let snap = Snapshot {
            through: Offset(3),
            bytes: b"saved".to_vec(),
        };
        s.save_snapshot(&topic, &a, &snap).unwrap();
        assert_eq!(s.load_snapshot(&topic, &a).unwrap(), Some(snap));
    }
}
