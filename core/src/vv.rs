//! Version vectors: per topic, what a node holds of each author's log.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{AuthorId, EventId, Seq};

/// blake3 `derive_key` context for version vector digests.
pub const DIGEST_CONTEXT: &str = "murmur version vector v1 digest";

/// The head of one author's log as recorded in a version vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Head seq.
    pub seq: Seq,
    /// Head id (pins the whole log up to `seq`).
    pub id: EventId,
}

/// author → head of that author's log in one topic. Ordered by author so that encodings
/// and digests are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<AuthorId, Entry>);

/// A 32-byte digest of a version vector: two nodes with equal digests hold the same logs
/// of a topic (up to blake3 collisions), so they can skip exchanging the vectors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// A range of a log one side lacks: `from..=to` of `author`'s log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// The log's author.
    pub author: AuthorId,
    /// First missing seq.
    pub from: Seq,
    /// Last seq the other side holds.
    pub to: Seq,
}

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `author`'s head (replacing any older entry).
    pub fn insert(&mut self, author: AuthorId, entry: Entry) {
        self.0.insert(author, entry);
    }

    /// The head recorded for `author`.
    pub fn get(&self, author: &AuthorId) -> Option<&Entry> {
        self.0.get(author)
    }

    /// Number of authors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no author is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in author order.
    pub fn iter(&self) -> impl Iterator<Item = (&AuthorId, &Entry)> {
        self.0.iter()
    }

    /// Total events covered (sum of head seq + 1).
    pub fn total_events(&self) -> u64 {
        self.0.values().map(|e| e.seq.0.saturating_add(1)).sum()
    }

    /// The digest: blake3 (derive_key [`DIGEST_CONTEXT`]) over, per author in order,
    /// `author (32) || seq (8, big-endian) || id (32)`.
    pub fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
        for (a, e) in &self.0 {
            h.update(&a.0);
            h.update(&e.seq.0.to_be_bytes());
            h.update(&e.id.0);
        }
        Digest(*h.finalize().as_bytes())
    }

    /// The ranges `theirs` holds and `self` lacks, in author order.
    pub fn wants_from(&self, theirs: &VersionVector) -> Vec<Want> {
        theirs
            .0
            .iter()
            .filter_map(|(author, t)| {
                let from = match self.0.get(author) {
                    None => Seq(0),
                    Some(o) if o.seq < t.seq => Seq(o.seq.0 + 1),
                    Some(_) => return None,
                };
                Some(Want {
                    author: *author,
                    from,
                    to: t.seq,
                })
            })
            .collect()
    }

    /// Events `theirs` holds beyond `self` (summed over authors). Saturating: a peer's
    /// vector may claim any seq, up to `u64::MAX`.
    pub fn lacking(&self, theirs: &VersionVector) -> u64 {
        self.wants_from(theirs)
            .iter()
            .map(|w| w.to.0.saturating_sub(w.from.0).saturating_add(1))
            .fold(0, u64::saturating_add)
    }

    /// Authors whose logs both sides hold at the same seq under different ids: evidence
    /// of a fork that a sync round should fetch and prove.
    pub fn diverged(&self, theirs: &VersionVector) -> Vec<AuthorId> {
        self.0
            .iter()
            .filter(|(a, o)| matches!(theirs.0.get(a), Some(t) if t.seq == o.seq && t.id != o.id))
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, id: u8) -> Entry {
        Entry {
            seq: Seq(seq),
            id: EventId([id; 32]),
        }
    }

    #[test]
    fn digest_is_order_independent_and_content_sensitive() {
        let mut a = VersionVector::new();
        a.insert(AuthorId([1; 32]), e(5, 1));
        a.insert(AuthorId([2; 32]), e(3, 2));
        let mut b = VersionVector::new();
        b.insert(AuthorId([2; 32]), e(3, 2));
        b.insert(AuthorId([1; 32]), e(5, 1));
        assert_eq!(a.digest(), b.digest());
        b.insert(AuthorId([2; 32]), e(4, 2));
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.insert(AuthorId([2; 32]), e(3, 9));
        assert_ne!(a.digest(), c.digest());
        assert_ne!(VersionVector::new().digest(), a.digest());
    }

    #[test]
    fn wants_and_divergence() {
        let mut ours = VersionVector::new();
        ours.insert(AuthorId([1; 32]), e(5, 1));
        ours.insert(AuthorId([2; 32]), e(9, 2));
        ours.insert(AuthorId([4; 32]), e(2, 4));
        let mut theirs = VersionVector::new();
        theirs.insert(AuthorId([1; 32]), e(8, 1));
        theirs.insert(AuthorId([2; 32]), e(3, 2));
        theirs.insert(AuthorId([3; 32]), e(0, 3));
        theirs.insert(AuthorId([4; 32]), e(2, 5));
        assert_eq!(
            ours.wants_from(&theirs),
            vec![
                Want {
                    author: AuthorId([1; 32]),
                    from: Seq(6),
                    to: Seq(8)
                },
                Want {
                    author: AuthorId([3; 32]),
                    from: Seq(0),
                    to: Seq(0)
                },
            ]
        );
        assert_eq!(ours.diverged(&theirs), vec![AuthorId([4; 32])]);
        assert_eq!(ours.total_events(), 6 + 10 + 3);
    }
}
