//! Runs: consecutive events of one log in a compact wire form.
//!
//! Gossip and sync move events in runs rather than one by one. Within a run every event
//! has the same author and topic, its seq is the one before plus one, and its `prev` is
//! the id of the event before it — so none of that needs to travel with each event. A
//! run carries them once:
//!
//! | field | encoding |
//! |---|---|
//! | version | 1 byte, `0x01` |
//! | author | 32 bytes |
//! | topic | varint length + UTF-8 |
//! | first seq | varint (u64) |
//! | prev of the first event | `0x00`, or `0x01` + 32 bytes |
//! | count | varint (u32), at least 1 |
//!
//! then, per event: `time_ms` (varint), `time_logical` (varint), the body exactly as in
//! the event format, and the 64-byte signature. With a 256-byte payload that is about
//! 330 bytes per event instead of about 410.
//!
//! Decoding rebuilds each event's canonical encoding (the id of one event becomes the
//! `prev` of the next) and runs the ordinary event decoder on it, so a run yields exactly
//! the events its sender holds — or, if the sender tampered with anything, events whose
//! signatures do not verify. Decoding does not check signatures: verify the result with
//! [`crate::verify::verify_range`], which costs one signature for the whole run.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::{
    Event, EventError, FORMAT_VERSION, MAX_EVENT_BYTES, SIGNATURE_BYTES, Wire, WireBody,
};
use crate::id::{AuthorId, Seq};
use crate::topic::Topic;

/// The run format version.
pub const RUN_VERSION: u8 = 1;
/// Fewest bytes one event can take in a run (times, an empty body, the signature); used
/// to bound allocations by the input length.
const MIN_ITEM_BYTES: usize = 4 + SIGNATURE_BYTES;

/// Why a run cannot be encoded or decoded. Decoding errors are the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Nothing to encode, or a run that claims zero events.
    #[error("empty run")]
    Empty,
    /// An event of another log, or out of order.
    #[error("event {index} does not continue the run (another log, or not the next seq)")]
    NotARun {
        /// Position of the offending event.
        index: usize,
    },
    /// The run is larger than allowed.
    #[error("run of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An unknown run format version.
    #[error("unsupported run version {0}")]
    UnsupportedVersion(u8),
    /// The bytes end early, do not parse, or have bytes left over.
    #[error("malformed run: {0}")]
    Malformed(String),
    /// A rebuilt event is invalid.
    #[error("event {index} of the run: {error}")]
    Event {
        /// Position in the run.
        index: usize,
        /// What is wrong with it.
        error: EventError,
    },
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    version: u8,
    author: [u8; 32],
    topic: &'a str,
    first: u64,
    prev: Option<[u8; 32]>,
    count: u32,
}

#[derive(Serialize, Deserialize)]
struct Item<'a> {
    time_ms: u64,
    time_logical: u32,
    #[serde(borrow)]
    body: WireBody<'a>,
}

/// Encodes consecutive events of one log (same author and topic, seqs increasing by one)
/// as a run. `prev` links after the first event are not written: the decoder rebuilds
/// them, so a run whose links were broken decodes to events that fail verification.
pub fn encode(events: &[Event]) -> Result<Vec<u8>, RunError> {
    let stored: Vec<Bytes> = events.iter().map(|e| e.bytes().clone()).collect();
    encode_stored(&stored)
}

/// Encodes a run from the stored encodings of consecutive events of one log, as
/// [`encode`] does from decoded events, but without decoding them fully: each is parsed
/// for its fields, not checked for canonical form and not hashed. For serving what the
/// store holds (its events were checked when stored); the receiver decodes and
/// verifies the run as always, so a damaged stored event fails there, never silently.
pub fn encode_stored(events: &[bytes::Bytes]) -> Result<Vec<u8>, RunError> {
    let first_bytes = events.first().ok_or(RunError::Empty)?;
    let first = parse_stored(0, first_bytes)?;
    let count = u32::try_from(events.len()).map_err(|_| RunError::TooLarge {
        len: events.len(),
        max: u32::MAX as usize,
    })?;
    let header = Header {
        version: RUN_VERSION,
        author: first.author,
        topic: first.topic,
        first: first.seq,
        prev: first.prev,
        count,
    };
    let size: usize = events.iter().map(bytes::Bytes::len).sum();
    let malformed = |e: postcard::Error| RunError::Malformed(e.to_string());
    let mut out = postcard::to_extend(&header, Vec::with_capacity(size + 64)).map_err(malformed)?;
    for (index, b) in events.iter().enumerate() {
        let w = parse_stored(index, b)?;
        if w.author != first.author
            || w.topic != first.topic
            || Some(w.seq) != first.seq.checked_add(index as u64)
        {
            return Err(RunError::NotARun { index });
        }
        let item = Item {
            time_ms: w.time_ms,
            time_logical: w.time_logical,
            body: w.body,
        };
        out = postcard::to_extend(&item, out).map_err(malformed)?;
        out.extend_from_slice(&b[b.len() - crate::event::SIGNATURE_BYTES..]);
    }
    Ok(out)
}

/// The signed fields of a stored event, parsed (not checked, not hashed).
fn parse_stored(index: usize, b: &[u8]) -> Result<crate::event::Wire<'_>, RunError> {
    let bad = |error: EventError| RunError::Event { index, error };
    let signed = b
        .len()
        .checked_sub(crate::event::SIGNATURE_BYTES)
        .ok_or(bad(EventError::Truncated))?;
    postcard::from_bytes(&b[..signed]).map_err(|e| bad(EventError::Malformed(e.to_string())))
}

/// What a run says about itself, read without rebuilding its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHeader {
    /// The log's author.
    pub author: AuthorId,
    /// The log's topic.
    pub topic: Topic,
    /// Seq of the first event.
    pub first: Seq,
    /// Number of events.
    pub count: u32,
}

/// Reads a run's header (author, topic, first seq, count).
pub fn header(bytes: &[u8]) -> Result<RunHeader, RunError> {
    let (h, _) = read_header(bytes)?;
    Ok(RunHeader {
        author: AuthorId(h.author),
        topic: Topic::new(h.topic).map_err(|e| RunError::Event {
            index: 0,
            error: e.into(),
        })?,
        first: Seq(h.first),
        count: h.count,
    })
}

fn read_header(bytes: &[u8]) -> Result<(Header<'_>, &[u8]), RunError> {
    match bytes.first() {
        None => return Err(RunError::Malformed("no bytes".into())),
        Some(&v) if v != RUN_VERSION => return Err(RunError::UnsupportedVersion(v)),
        Some(_) => {}
    }
    let (h, rest) = postcard::take_from_bytes::<Header<'_>>(bytes)
        .map_err(|e| RunError::Malformed(e.to_string()))?;
    if h.count == 0 {
        return Err(RunError::Empty);
    }
    Ok((h, rest))
}

/// Decodes a run of at most `max_len` bytes into its events, oldest first. Checks the
/// structure and every rebuilt event (limits, canonical form); not the signatures.
pub fn decode(bytes: &[u8], max_len: usize) -> Result<Vec<Event>, RunError> {
    if bytes.len() > max_len {
        return Err(RunError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (h, mut rest) = read_header(bytes)?;
    let count = h.count as usize;
    if count > rest.len() / MIN_ITEM_BYTES {
        return Err(RunError::Malformed(format!(
            "{count} events cannot fit in {} bytes",
            rest.len()
        )));
    }
    let mut events = Vec::with_capacity(count);
    let mut prev = h.prev;
    let mut buf = Vec::new();
    for index in 0..count {
        let bad = |error: EventError| RunError::Event { index, error };
        let (item, after) = postcard::take_from_bytes::<Item<'_>>(rest)
            .map_err(|e| RunError::Malformed(format!("event {index}: {e}")))?;
        if after.len() < SIGNATURE_BYTES {
            return Err(RunError::Malformed(format!("event {index}: truncated")));
        }
        let (sig, after) = after.split_at(SIGNATURE_BYTES);
        rest = after;
        let seq = h
            .first
            .checked_add(index as u64)
            .ok_or_else(|| RunError::Malformed("seq overflows".into()))?;
        let wire = Wire {
            version: FORMAT_VERSION,
            author: h.author,
            topic: h.topic,
            seq,
            prev,
            time_ms: item.time_ms,
            time_logical: item.time_logical,
            body: item.body,
        };
        buf.clear();
        buf = postcard::to_extend(&wire, buf).map_err(|e| RunError::Malformed(e.to_string()))?;
        buf.extend_from_slice(sig);
        if buf.len() > MAX_EVENT_BYTES {
            return Err(bad(EventError::TooLarge {
                len: buf.len(),
                max: MAX_EVENT_BYTES,
            }));
        }
        let ev = Event::decode(Bytes::copy_from_slice(&buf), MAX_EVENT_BYTES).map_err(bad)?;
        prev = Some(ev.id().0);
        events.push(ev);
    }
    if !rest.is_empty() {
        return Err(RunError::Malformed(format!(
            "{} bytes after the last event",
            rest.len()
        )));
    }
    Ok(events)
}

/// Splits consecutive events into runs of at most `max_bytes` (by encoded event size;
/// a single larger event is a run of its own). Events of different logs, or gaps, start
/// a new run. Order is kept.
pub fn split(events: &[Event], max_bytes: usize) -> Vec<&[Event]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, ev) in events.iter().enumerate() {
        let len = ev.bytes().len();
        let continues = i > start && {
            let p = &events[i - 1];
            p.author() == ev.author()
                && p.topic() == ev.topic()
                && p.seq().next() == Some(ev.seq())
                && ev.prev() == Some(p.id())
        };
        if i > start && (!continues || size + len > max_bytes) {
            runs.push(&events[start..i]);
            start = i;
            size = 0;
        }
        size += len;
    }
    if start < events.len() {
        runs.push(&events[start..]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{chain, key};
    use crate::verify::verify_range;
    use proptest::prelude::*;

    #[test]
    fn round_trip_keeps_every_event_exactly() {
        let evs = chain(&key(1), "run/trip", 50, "payload ");
        let bytes = encode(&evs).unwrap();
        let back = decode(&bytes, usize::MAX).unwrap();
        assert_eq!(back.len(), 50);
        for (a, b) in evs.iter().zip(&back) {
            assert_eq!(a.bytes(), b.bytes());
        }
        verify_range(&back, None).unwrap();
        let h = header(&bytes).unwrap();
        assert_eq!((h.first, h.count), (Seq(0), 50));
        // The run is smaller than the events one by one.
        let separate: usize = evs.iter().map(|e| e.bytes().len()).sum();
        assert!(
            bytes.len() + 50 * 60 < separate,
            "{} vs {separate}",
            bytes.len()
        );
    }

    #[test]
    fn a_run_from_stored_encodings_is_the_run_from_events() {
        let evs = chain(&key(1), "run/stored", 40, "payload ");
        let raw: Vec<Bytes> = evs.iter().map(|e| e.bytes().clone()).collect();
        assert_eq!(encode_stored(&raw).unwrap(), encode(&evs).unwrap());
        assert_eq!(
            encode_stored(&raw[7..19]).unwrap(),
            encode(&evs[7..19]).unwrap()
        );
        // Not consecutive, another log, empty, or damaged: refused, never a wrong run.
        let gap = vec![raw[0].clone(), raw[2].clone()];
        assert!(matches!(
            encode_stored(&gap),
            Err(RunError::NotARun { index: 1 })
        ));
        let other = chain(&key(2), "run/stored", 2, "x");
        let mixed = vec![raw[0].clone(), other[1].bytes().clone()];
        assert!(matches!(
            encode_stored(&mixed),
            Err(RunError::NotARun { index: 1 })
        ));
        assert!(matches!(encode_stored(&[]), Err(RunError::Empty)));
        let short = vec![raw[0].slice(..10)];
        assert!(encode_stored(&short).is_err());
    }

    #[test]
    fn a_run_can_start_mid_log() {
        let evs = chain(&key(1), "run/mid", 20, "x");
        let back = decode(&encode(&evs[7..]).unwrap(), usize::MAX).unwrap();
        assert_eq!(back[0].seq(), Seq(7));
        assert_eq!(back[0].prev(), Some(evs[6].id()));
        assert_eq!(back.last().unwrap().id(), evs[19].id());
    }

    #[test]
    fn only_runs_encode() {
        let evs = chain(&key(1), "run/a", 5, "x");
        let other = chain(&key(2), "run/a", 5, "x");
        assert_eq!(encode(&[]), Err(RunError::Empty));
        let gap = [evs[0].clone(), evs[2].clone()];
        assert_eq!(encode(&gap), Err(RunError::NotARun { index: 1 }));
        let mixed = [evs[0].clone(), other[1].clone()];
        assert_eq!(encode(&mixed), Err(RunError::NotARun { index: 1 }));
    }

    #[test]
    fn split_cuts_at_logs_gaps_and_size() {
        let a = chain(&key(1), "run/a", 10, "x");
        let b = chain(&key(2), "run/a", 3, "x");
        let mut evs = a[..6].to_vec();
        evs.extend(b.iter().cloned());
        evs.extend(a[7..].iter().cloned()); // gap at 6
        let runs = split(&evs, usize::MAX);
        let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![6, 3, 3]);
        let one = a[0].bytes().len();
        let runs = split(&a, one * 4);
        assert!(runs.iter().all(|r| r.len() <= 4));
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 10);
        for r in runs {
            encode(r).unwrap();
        }
    }

    #[test]
    fn a_tampered_run_fails_verification_not_decoding_silently() {
        let evs = chain(&key(1), "run/t", 8, "payload");
        let mut bytes = encode(&evs).unwrap();
        // Flip one payload byte of an early event: it rebuilds, but the chain now leads
        // to a different newest event whose signature no longer matches.
        let pos = bytes.len() / 4;
        bytes[pos] ^= 0x01;
        if let Ok(back) = decode(&bytes, usize::MAX) {
            assert!(verify_range(&back, None).is_err());
        }
    }

    #[test]
    fn claims_bounded_by_the_input() {
        let evs = chain(&key(1), "run/b", 2, "x");
        let mut bytes = encode(&evs).unwrap();
        assert!(matches!(decode(&bytes, 10), Err(RunError::TooLarge { .. })));
        // Claim a huge count in a small input: refused before allocating.
        let h = Header {
            version: RUN_VERSION,
            author: evs[0].author().0,
            topic: "run/b",
            first: 0,
            prev: None,
            count: u32::MAX,
        };
        let lying = postcard::to_allocvec(&h).unwrap();
        assert!(matches!(
            decode(&lying, usize::MAX),
            Err(RunError::Malformed(_))
        ));
        bytes.push(0);
        assert!(matches!(
            decode(&bytes, usize::MAX),
            Err(RunError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[9, 1, 2], usize::MAX),
            Err(RunError::UnsupportedVersion(9))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes, usize::MAX);
            let _ = header(&bytes);
        }

        #[test]
        fn truncation_and_mutation_are_caught(cut in 0usize..2000, flip in 0usize..2000) {
            let evs = chain(&key(3), "run/p", 4, "some payload");
            let bytes = encode(&evs).unwrap();
            let cut = cut % bytes.len();
            prop_assert!(decode(&bytes[..cut], usize::MAX).is_err());
            let mut m = bytes.clone();
            let i = flip % m.len();
            m[i] ^= 0x40;
            if let Ok(back) = decode(&m, usize::MAX) {
                // Any change to the author, topic, seqs, links, times, bodies or
                // signatures changes what the newest signature must cover.
                prop_assert!(verify_range(&back, None).is_err());
            }
        }
    }
}
