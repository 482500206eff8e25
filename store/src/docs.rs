//! Document indexes and snapshots (RocksDB only).
//!
//! One column family, `docs`, three kinds of keys:
//!
//! | key | value | written |
//! |---|---|---|
//! | `c` · topic · 0 · doc · 0 · offset (8, BE) | event key | with the event, same batch |
//! | `a` · offset (8, BE) | topic · 0 · doc | with the event, same batch |
//! | `s` · topic · 0 · doc | through (8, BE) · automerge bytes | by the daemon |
//! | `p` · topic · 0 · offset (8, BE) | event key · doc | with a snapshot event, same batch |
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
            let mut v = ek.to_vec();
            v.extend_from_slice(doc.as_bytes());
            batch.put_cf(cf, snapshot_event_key(topic, offset), v);
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

/// Takes a snapshot event out of its topic's snapshots (it was found false): it no
/// longer lets a log start over or fills a document's gap. The event itself stays (it
/// is its author's, and the evidence). Durable.
pub(crate) fn refuse_snapshot_event(
    store: &RocksStore,
    topic: &Topic,
    offset: Offset,
) -> Result<()> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let mut batch = WriteBatch::default();
    batch.delete_cf(
        store.cf(CF_DOCS),
        snapshot_event_key(topic.as_str(), offset.0),
    );
    store.db().write_opt(batch, &wo)?;
    Ok(())
}

/// The snapshot events held in `topic` (of document `doc` only, if given), newest
/// first, at most `limit`: where each is (offset, author, seq), read from the index
/// alone.
pub(crate) fn snapshot_refs(
    store: &RocksStore,
    topic: &Topic,
    doc: Option<&DocId>,
    limit: usize,
) -> Result<Vec<SnapshotRef>> {
    let prefix = snapshot_event_prefix(topic.as_str());
    // Event key: topic · 0 · author (32) · seq (8).
    let ek_len = topic.as_str().len() + 1 + 32 + 8;
    let mut it = store.db().raw_iterator_cf(store.cf(CF_DOCS));
    it.seek_for_prev(snapshot_event_key(topic.as_str(), u64::MAX));
    let mut out = Vec::new();
    while out.len() < limit {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 || v.len() < ek_len {
            break;
        }
        let (ek, of) = v.split_at(ek_len);
        if doc.is_none_or(|d| d.as_str().as_bytes() == of) {
            let off = u64::from_be_bytes(
                k[prefix.len()..]
                    .try_into()
                    .map_err(|_| corrupt("snapshot index key"))?,
            );
            let (lk, seq) =
                crate::keys::split_event_key(ek).ok_or_else(|| corrupt("snapshot index value"))?;
            let (_, author) =
                crate::keys::split_log_key(lk).ok_or_else(|| corrupt("snapshot index value"))?;
            let doc = std::str::from_utf8(of)
                .ok()
                .and_then(|d| DocId::new(d).ok())
                .ok_or_else(|| corrupt("snapshot index value"))?;
            out.push(SnapshotRef {
                offset: Offset(off),
                author,
                seq,
                doc,
            });
        }
        it.prev();
    }
    it.status()?;
    Ok(out)
}

/// Where a snapshot event is: see [`snapshot_refs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// Its offset here.
    pub offset: Offset,
    /// Its author (the node that made it).
    pub author: murmur_core::AuthorId,
    /// Its seq in the author's log of the topic.
    pub seq: murmur_core::Seq,
    /// The document it is a snapshot of.
    pub doc: DocId,
}

/// Visits the snapshot events held in `topic` (of document `doc` only, if given),
/// newest first, at most `limit` of them, one in memory at a time, until `f` says
/// stop. An index entry whose event is gone meanwhile (pruned) is skipped, as is one
/// whose payload does not decode.
pub(crate) fn snapshot_events(
    store: &RocksStore,
    topic: &Topic,
    doc: Option<&DocId>,
    limit: usize,
    mut f: impl FnMut(Event, murmur_core::snapshot::DocSnapshot) -> bool,
) -> Result<()> {
    for r in snapshot_refs(store, topic, doc, limit)? {
        if let Some((ev, snap)) = snapshot_at(store, topic, &r)?
            && !f(ev, snap)
        {
            break;
        }
    }
    Ok(())
}

/// The snapshot event `r` names, if it is still held and decodes.
pub(crate) fn snapshot_at(
    store: &RocksStore,
    topic: &Topic,
    r: &SnapshotRef,
) -> Result<Option<(Event, murmur_core::snapshot::DocSnapshot)>> {
    let ek = crate::keys::event_key(&crate::keys::log_key(topic, &r.author), r.seq);
    Ok(store
        .event_at(&ek)?
        .and_then(|ev| match murmur_core::snapshot::DocSnapshot::of(&ev) {
            Some(Ok(s)) => Some((ev, s)),
            _ => None,
        }))
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
