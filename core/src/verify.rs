//! Verifying many events at once.
//!
//! **Range verification.** Every event's `prev` is the id of the event before it, and an
//! id is a hash over the whole encoding *including the signature*. So if the newest event
//! of a contiguous run is validly signed and every `prev` link in the run holds, the
//! author vouches for every byte of the run: one signature check per range instead of one
//! per event. This is what makes catch-up storage-bound rather than signature-bound.
//!
//! **Batch verification.** Unrelated single events (live gossip that queued up) are
//! checked with ed25519 batch verification, falling back to one-by-one checks to find the
//! culprit when a batch fails.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::event::{Event, EventError};
use crate::id::{AuthorId, EventId, Seq};
use crate::topic::Topic;

/// Why a range was refused. The first bad position is reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// No events.
    #[error("empty range")]
    Empty,
    /// An event belongs to another log than the first one.
    #[error("event {index} belongs to another log (author or topic differs)")]
    MixedLogs {
        /// Position in the range.
        index: usize,
    },
    /// Sequence numbers are not contiguous and increasing.
    #[error("event {index} has seq {got}, expected {expected}")]
    NotContiguous {
        /// Position in the range.
        index: usize,
        /// Expected seq.
        expected: Seq,
        /// Found seq.
        got: Seq,
    },
    /// A `prev` link does not name the event before it.
    #[error("event {index} (seq {seq}) does not link to the event before it")]
    BrokenLink {
        /// Position in the range.
        index: usize,
        /// Its seq.
        seq: Seq,
    },
    /// The first event does not continue from the given anchor (our head).
    #[error("range starts at seq {got} with prev {prev:?}; it does not continue the known head")]
    DoesNotContinue {
        /// The first seq.
        got: Seq,
        /// The first event's prev.
        prev: Option<EventId>,
    },
    /// The newest event's signature (which vouches for the whole range) is invalid.
    #[error("signature over the range: {0}")]
    Signature(#[from] EventError),
}

/// Where a range must attach: the seq and id of the event just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Seq of the event before the range.
    pub seq: Seq,
    /// Its id.
    pub id: EventId,
}

/// Checks that `events` is a contiguous, hash-linked run of one log whose newest event is
/// validly signed. With `anchor`, the run must continue right after it; without, a run
/// starting at seq 0 is checked to have no `prev` (the decoder already ensures that) and
/// a run starting later is accepted as a detached segment.
///
/// Costs one signature verification and one comparison per event (the ids were hashed at
/// decode time).
pub fn verify_range(events: &[Event], anchor: Option<Anchor>) -> Result<(), RangeError> {
    let first = events.first().ok_or(RangeError::Empty)?;
    if let Some(a) = anchor
        && (a.seq.next() != Some(first.seq()) || first.prev() != Some(a.id))
    {
        return Err(RangeError::DoesNotContinue {
            got: first.seq(),
            prev: first.prev(),
        });
    }
    check_links(first.author(), first.topic(), events)?;
    // The last event vouches for all the others through the hash links.
    events[events.len() - 1].verify()?;
    Ok(())
}

fn check_links(author: AuthorId, topic: &Topic, events: &[Event]) -> Result<(), RangeError> {
    for (index, pair) in events.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        let index = index + 1;
        if b.author() != author || b.topic() != topic {
            return Err(RangeError::MixedLogs { index });
        }
        let expected = a.seq().next().unwrap_or(a.seq());
        if b.seq() != expected || a.seq().next().is_none() {
            return Err(RangeError::NotContiguous {
                index,
                expected,
                got: b.seq(),
            });
        }
        if b.prev() != Some(a.id()) {
            return Err(RangeError::BrokenLink {
                index,
                seq: b.seq(),
            });
        }
    }
    Ok(())
}

/// Verifies the signatures of many independent events. Returns one result per event, in
/// order. A batch that verifies as a whole costs roughly half of one-by-one checks; when
/// it fails, each event is checked alone (strictly) to find the bad ones.
pub fn verify_batch(events: &[Event]) -> Vec<Result<(), EventError>> {
    if events.len() >= 2 && batch_ok(events) {
        return events.iter().map(|_| Ok(())).collect();
    }
    events.iter().map(Event::verify).collect()
}

fn batch_ok(events: &[Event]) -> bool {
    let mut keys: Vec<VerifyingKey> = Vec::with_capacity(events.len());
    for e in events {
        match e.author().verifying_key() {
            Ok(k) => keys.push(k),
            Err(_) => return false,
        }
    }
    let digests: Vec<[u8; 32]> = events.iter().map(Event::digest).collect();
    let msgs: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
    let sigs: Vec<Signature> = events
        .iter()
        .map(|e| Signature::from_bytes(&e.signature()))
        .collect();
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::{chain, key};
    use crate::event::{Draft, MAX_EVENT_BYTES, Payload};
    use crate::hlc::Timestamp;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn anchor(e: &Event) -> Anchor {
        Anchor {
            seq: e.seq(),
            id: e.id(),
        }
    }

    #[test]
    fn accepts_a_valid_chain_and_sub_ranges() {
        let c = chain(&key(1), "r", 20);
        verify_range(&c, None).unwrap();
        verify_range(&c[5..12], Some(anchor(&c[4]))).unwrap();
        verify_range(&c[5..12], None).unwrap();
        assert_eq!(verify_range(&[], None), Err(RangeError::Empty));
    }

    #[test]
    fn wrong_anchor_is_refused() {
        let c = chain(&key(1), "r", 10);
        assert!(matches!(
            verify_range(&c[5..], Some(anchor(&c[3]))),
            Err(RangeError::DoesNotContinue { .. })
        ));
        let other = chain(&key(2), "r", 10);
        assert!(matches!(
            verify_range(&c[5..], Some(anchor(&other[4]))),
            Err(RangeError::DoesNotContinue { .. })
        ));
    }

    #[test]
    fn substituted_event_breaks_the_chain() {
        // The author signs a different event 3 (a fork): splicing it in breaks the link
        // from event 4, even though the spliced event is itself validly signed.
        let k = key(1);
        let mut c = chain(&k, "r", 8);
        let alt = Event::sign(
            &Draft {
                topic: c[3].topic().clone(),
                seq: c[3].seq(),
                prev: c[3].prev(),
                time: Timestamp::from_ms(1),
                body: Payload::data(&b"other"[..]),
            },
            &k,
        )
        .unwrap();
        alt.verify().unwrap();
        c[3] = alt;
        assert_eq!(
            verify_range(&c, None),
            Err(RangeError::BrokenLink {
                index: 4,
                seq: Seq(4)
            })
        );
    }

    #[test]
    fn mixed_logs_are_refused() {
        let mut c = chain(&key(1), "r", 4);
        let d = chain(&key(2), "r", 4);
        c[2] = d[2].clone();
        assert_eq!(
            verify_range(&c, None),
            Err(RangeError::MixedLogs { index: 2 })
        );
        let mut e = chain(&key(1), "r", 4);
        e[2] = chain(&key(1), "s", 4)[2].clone();
        assert_eq!(
            verify_range(&e, None),
            Err(RangeError::MixedLogs { index: 2 })
        );
    }

    #[test]
    fn forged_tail_signature_is_refused() {
        let mut c = chain(&key(1), "r", 4);
        let mut v = c[3].bytes().to_vec();
        let n = v.len();
        v[n - 10] ^= 0x40;
        c[3] = Event::decode(Bytes::from(v), MAX_EVENT_BYTES).unwrap();
        assert!(matches!(
            verify_range(&c, None),
            Err(RangeError::Signature(_))
        ));
    }

    #[test]
    fn batch_finds_the_bad_one() {
        let mut evs: Vec<Event> = (0..10).map(|i| chain(&key(i), "b", 1).remove(0)).collect();
        assert!(verify_batch(&evs).iter().all(Result::is_ok));
        let mut v = evs[6].bytes().to_vec();
        let n = v.len();
        v[n - 1] ^= 1;
        evs[6] = Event::decode(Bytes::from(v), MAX_EVENT_BYTES).unwrap();
        let r = verify_batch(&evs);
        for (i, res) in r.iter().enumerate() {
            assert_eq!(res.is_ok(), i != 6, "event {i}");
        }
    }

    proptest! {
        /// Any change to a valid range (swap two events, drop one, alter one's bytes)
        /// is refused.
        #[test]
        fn any_tampering_is_refused(op in 0u8..3, i in 0usize..12, j in 0usize..12, bit in 0usize..2000) {
            let c = chain(&key(7), "p", 12);
            let mut r = c.clone();
            match op {
                0 => { prop_assume!(i != j); r.swap(i, j); }
                1 => { prop_assume!(i > 0 && i < 11); r.remove(i); }
                _ => {
                    let mut v = r[i].bytes().to_vec();
                    let pos = bit % v.len();
                    v[pos] ^= 1;
                    match Event::decode(Bytes::from(v), MAX_EVENT_BYTES) {
                        Ok(e) => r[i] = e,
                        Err(_) => return Ok(()), // refused even earlier
                    }
                }
            }
            prop_assert!(verify_range(&r, None).is_err());
        }
    }
}
