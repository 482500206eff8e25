//! Document snapshots as events: how a document topic is compacted, and how a node
//! that joins after the compaction gets its documents.
//!
//! A snapshot is a data event (content type [`CONTENT_TYPE`]) in the document's own
//! topic, signed by the node that made it like any event it writes. Its payload names
//! the document, the automerge save of the document, and what it covers: the topic's
//! version vector when it was made, so that for every author listed, every change it
//! made to the document up to that seq is in the save.
//!
//! - A node compacts a document topic only behind snapshots it published itself, of
//!   every document of the topic, covering the cut: a log's events go only up to what
//!   the snapshots cover (`retention::Policy::plan_docs`), and its own log keeps the
//!   snapshots (they come after what they cover).
//! - A node whose log of such a topic is behind a peer's base may start it over there
//!   only if a snapshot it holds (or the range's first event, when that is a snapshot
//!   by the log's author) covers the log up to the base.
//! - A node applies a snapshot's content only when its own copy of the document has
//!   a gap that the history it holds cannot fill (see the daemon's document thread):
//!   a node that holds the whole history never takes a snapshot's word for it.
//!
//! Being a data event, a snapshot replicates, verifies and is stored as any event, and
//! a node that predates snapshots stores and forwards it as ordinary data.

use serde::{Deserialize, Serialize};

use crate::event::{Body, Event, MAX_EVENT_BYTES};
use crate::id::{AuthorId, EventId, Seq};
use crate::vv::VersionVector;

/// Content type of a snapshot event. Local publishing refuses it: only the node's
/// document thread writes snapshots.
pub const CONTENT_TYPE: &str = "application/vnd.murmur.doc-snapshot";

/// Largest automerge save a snapshot event carries: what fits in an event with the
/// rest of the payload and the envelope. A larger document is not compacted.
pub const MAX_SAVE_BYTES: usize = MAX_EVENT_BYTES - 256 * 1024;

/// What a snapshot covers of one author's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cover {
    /// The author.
    pub author: AuthorId,
    /// Every change of the author's up to this seq is in the snapshot.
    pub seq: Seq,
    /// The id of the author's event at `seq`: a log started over just past it must
    /// link to it.
    pub id: EventId,
}

/// A snapshot's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSnapshot {
    /// The document.
    pub doc: String,
    /// What it covers, one entry per author of the topic.
    pub covers: Vec<Cover>,
    /// `Automerge::save` of the document.
    pub save: Vec<u8>,
}

/// Why a payload is not a snapshot.
#[derive(Debug, thiserror::Error)]
#[error("not a document snapshot: {0}")]
pub struct SnapshotError(String);

impl DocSnapshot {
    /// A snapshot of `doc` covering `vv`.
    pub fn new(doc: &str, vv: &VersionVector, save: Vec<u8>) -> Self {
        DocSnapshot {
            doc: doc.to_owned(),
            covers: vv
                .iter()
                .map(|(author, e)| Cover {
                    author: *author,
                    seq: e.seq,
                    id: e.id,
                })
                .collect(),
            save,
        }
    }

    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising owned bytes, strings and fixed arrays to a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A payload, bounded by the event it came in.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let s: DocSnapshot =
            postcard::from_bytes(bytes).map_err(|e| SnapshotError(e.to_string()))?;
        crate::event::DocId::new(&s.doc).map_err(|e| SnapshotError(e.to_string()))?;
        Ok(s)
    }

    /// The snapshot an event carries: `None` for any other event, an error for a
    /// snapshot event whose payload does not decode.
    pub fn of(ev: &Event) -> Option<Result<Self, SnapshotError>> {
        match ev.body() {
            Body::Data {
                content_type: Some(CONTENT_TYPE),
                data,
            } => Some(Self::decode(data)),
            _ => None,
        }
    }

    /// What it covers of `author`'s log.
    pub fn cover(&self, author: &AuthorId) -> Option<&Cover> {
        self.covers.iter().find(|c| c.author == *author)
    }

    /// Per author, the highest seq this snapshot, carried by the event `by`, covers:
    /// its covers, and its own author's log up to the event before it (see
    /// [`DocSnapshot::covers_below`]).
    pub fn cover_map(&self, by: &Event) -> crate::retention::DocCover {
        let mut map: crate::retention::DocCover =
            self.covers.iter().map(|c| (c.author, c.seq)).collect();
        match by.seq().0.checked_sub(1) {
            Some(before) => map.insert(by.author(), Seq(before)),
            None => map.remove(&by.author()),
        };
        map
    }

    /// Whether this snapshot, carried by the event `by`, covers the log of `first`'s
    /// author up to the event before `first` (so the log may start at `first`).
    /// - The snapshot's own author's log: up to the snapshot itself, always. Every
    ///   document change its author made before it was applied to the document it
    ///   saved (a node makes its changes in its document thread, which also makes the
    ///   snapshots), so a compacting node's log starts at its snapshots, and a log that
    ///   starts at a snapshot by its own author is covered by it.
    /// - Another author's: its cover is at least `first - 1`, and if exactly that,
    ///   `first` links to the event it names.
    pub fn covers_below(&self, by: &Event, first: &Event) -> bool {
        let Some(before) = first.seq().0.checked_sub(1) else {
            return true;
        };
        if by.author() == first.author() && by.topic() == first.topic() {
            return first.seq() <= by.seq();
        }
        self.cover(&first.author())
            .is_some_and(|c| c.seq.0 > before || (c.seq.0 == before && first.prev() == Some(c.id)))
    }
}

/// The document an event belongs to, and whether it is a snapshot of it: a change's
/// document, or a snapshot event's (whose payload decodes; one that does not is
/// ordinary data). Stores index both among the document's changes.
pub fn document_of(ev: &Event) -> Option<(crate::DocId, bool)> {
    match ev.body() {
        Body::Doc { doc, .. } => crate::DocId::new(doc).ok().map(|d| (d, false)),
        _ => match DocSnapshot::of(ev)? {
            Ok(s) => crate::DocId::new(s.doc).ok().map(|d| (d, true)),
            Err(_) => None,
        },
    }
}

/// Whether an event is a snapshot event (by its content type alone).
pub fn is_snapshot(ev: &Event) -> bool {
    matches!(
        ev.body(),
        Body::Data {
            content_type: Some(CONTENT_TYPE),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{chain, key};
    use crate::vv;

    #[test]
    fn a_snapshot_round_trips_and_says_what_it_covers() {
        let k = key(1);
        let c = chain(&k, "d", 5, "x");
        let mut v = VersionVector::new();
        v.insert(
            k.author(),
            vv::Entry {
                seq: c[2].seq(),
                id: c[2].id(),
            },
        );
        let s = DocSnapshot::new("cfg", &v, b"saved".to_vec());
        let back = DocSnapshot::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        // Carried by another author's event: covers k's log up to seq 2, so it may
        // start at 3 (linking to 2), or lower, not at 4.
        let by = &chain(&key(3), "d", 8, "s")[7];
        assert!(s.covers_below(by, &c[3]));
        assert!(s.covers_below(by, &c[1]));
        assert!(!s.covers_below(by, &c[4]));
        // Another author is not covered; seq 0 needs nothing.
        let other = chain(&key(2), "d", 3, "y");
        assert!(!s.covers_below(by, &other[2]));
        assert!(s.covers_below(by, &other[0]));
        // Its own author's log is covered up to the snapshot event itself (key 3's
        // log may start at the snapshot, seq 7, not past it).
        let own = chain(&key(3), "d", 9, "s");
        assert!(s.covers_below(by, &own[7]));
        assert!(!s.covers_below(by, &own[8]));
        // Garbage is an error, not a panic; a bad document id too.
        assert!(DocSnapshot::decode(&[0xff; 40]).is_err());
        let bad = DocSnapshot {
            doc: String::new(),
            ..s
        };
        assert!(DocSnapshot::decode(&bad.encode()).is_err());
    }
}
