//! Document indexes and snapshots (RocksDB only).
//!
//! One column family, `docs`, three kinds of keys:
//!
//! | key | value | written |
//! |---|---|---|
//! | `c` · topic · 0 · doc · 0 · offset (8, BE) | event key | with the event, same batch |
//! | `a` · offset (8, BE) | topic · 0 · doc | with the event, same batch |
//! | `s` · topic · 0 · doc | through (8, BE) · automerge bytes | by the daemon |
//! | `p` · topic · 0 · offset (8, BE) | event key | with a snapshot event, same batch |
//!
//! `c` lists one document's changes in arrival order (a document's tail after a
//! snapshot, its history); `a` lists document changes by arrival (what changed since a
//! point); `s` is the newest snapshot with the offset it covers: every change of the
//! document with a smaller offset is in it. Topics and document ids never contain NUL.
//!
//! A snapshot event (`murmur_core::snapshot`: a data event carrying a document's
//! automerge save, published by a node that compacts the topic) is indexed among its
//! document's changes (`c`, `a`), so the document thread sees it in order, and under
//! `p`, so the snapshots a topic's logs may start over on are one prefix scan.

use murmur_core::storage::{DocArrival, Snapshot};
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

fn snapshot_event_prefix(topic: &str) -> Vec<u8> {
    let mut k = vec![b'p'];
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

fn snapshot_event_key(topic: &str, offset: u64) -> Vec<u8> {
    let mut k = snapshot_event_prefix(topic);
    k.extend_from_slice(&offset.to_be_bytes());
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
    if let Some((doc, snapshot)) = murmur_core::snapshot::document_of(ev) {
        let doc = doc.as_str();
        let cf = store.cf(CF_DOCS);
        let topic = ev.topic().as_str();
        batch.put_cf(cf, change_key(topic, doc, offset), ek);
        batch.put_cf(cf, arrival_key(offset), doc_name(topic, doc));
        if snapshot {
            batch.put_cf(cf, snapshot_event_key(topic, offset), ek);
        }
    }
}

/// Removes a pruned document change from the indexes (the other half of [`index`]).
pub(crate) fn unindex(deletes: &mut crate::rocks::Deletes, ev: &Event, offset: u64) {
    if let Some((doc, snapshot)) = murmur_core::snapshot::document_of(ev) {
        let doc = doc.as_str();
        let topic = ev.topic().as_str();
        deletes.key(CF_DOCS, change_key(topic, doc, offset));
        deletes.key(CF_DOCS, arrival_key(offset).to_vec());
        if snapshot {
            deletes.key(CF_DOCS, snapshot_event_key(topic, offset));
        }
    }
}

/// Most snapshot events [`snapshot_events`] reads.
pub const MAX_SNAPSHOT_EVENTS: usize = 4096;

/// The snapshot events held in a topic (at most [`MAX_SNAPSHOT_EVENTS`], newest
/// last), decoded.
pub(crate) fn snapshot_events(
    store: &RocksStore,
    topic: &Topic,
) -> Result<Vec<(Event, murmur_core::snapshot::DocSnapshot)>> {
    let prefix = snapshot_event_prefix(topic.as_str());
    let mut it = store.db().raw_iterator_cf(store.cf(CF_DOCS));
    it.seek_for_prev(snapshot_event_key(topic.as_str(), u64::MAX));
    let mut keys = Vec::new();
    while keys.len() < MAX_SNAPSHOT_EVENTS {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
            break;
        }
        keys.push(v.to_vec());
        it.prev();
    }
    it.status()?;
    let mut out = Vec::with_capacity(keys.len());
    for ek in keys.into_iter().rev() {
        let Some(ev) = store.event_at(&ek)? else {
            return Err(corrupt("snapshot index names a missing event"));
        };
        if let Some(Ok(s)) = murmur_core::snapshot::DocSnapshot::of(&ev) {
            out.push((ev, s));
        }
    }
    Ok(out)
}

/// Up to `limit` changes of one document with offsets from `from` on, in arrival
/// order.
pub(crate) fn changes(
    store: &RocksStore,
    topic: &Topic,
    doc: &DocId,
    from: Offset,
    limit: usize,
) -> Result<Vec<(Offset, Event)>> {
    let prefix = change_prefix(topic.as_str(), doc.as_str());
    let mut it = store.db().raw_iterator_cf(store.cf(CF_DOCS));
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
        let ev = store
            .event_at(&ek)?
            .ok_or_else(|| corrupt(format!("doc index names a missing event at {off}")))?;
        out.push((off, ev));
    }
    Ok(out)
}

/// The offset of a document's newest change, if it has any.
pub(crate) fn last_change(
    store: &RocksStore,
    topic: &Topic,
    doc: &DocId,
) -> Result<Option<Offset>> {
    let prefix = change_prefix(topic.as_str(), doc.as_str());
    let mut it = store.db().raw_iterator_cf(store.cf(CF_DOCS));
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
pub(crate) fn arrivals(
    store: &RocksStore,
    from: Offset,
    limit: usize,
) -> Result<(Vec<DocArrival>, Offset)> {
    let mut it = store.db().raw_iterator_cf(store.cf(CF_DOCS));
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
pub(crate) fn of_topic(store: &RocksStore, topic: &Topic, limit: usize) -> Result<Vec<DocId>> {
    let mut prefix = vec![b'c'];
    prefix.extend_from_slice(topic.as_str().as_bytes());
    prefix.push(0);
    let mut it = store.db().raw_iterator_cf(store.cf(CF_DOCS));
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
pub(crate) fn save_snapshot(
    store: &RocksStore,
    topic: &Topic,
    doc: &DocId,
    snap: &Snapshot,
) -> Result<()> {
    let mut v = Vec::with_capacity(8 + snap.bytes.len());
    v.extend_from_slice(&snap.through.0.to_be_bytes());
    v.extend_from_slice(&snap.bytes);
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let mut batch = WriteBatch::default();
    batch.put_cf(
        store.cf(CF_DOCS),
        snapshot_key(topic.as_str(), doc.as_str()),
        v,
    );
    store.db().write_opt(batch, &wo)?;
    Ok(())
}

/// The newest snapshot of a document, if any.
pub(crate) fn load_snapshot(
    store: &RocksStore,
    topic: &Topic,
    doc: &DocId,
) -> Result<Option<Snapshot>> {
    let Some(v) = store.db().get_cf(
        store.cf(CF_DOCS),
        snapshot_key(topic.as_str(), doc.as_str()),
    )?
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
