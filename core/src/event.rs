//! Events, their canonical encoding, signing and bounded decoding.
//!
//! See the crate documentation for the byte-by-byte format.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;
use crate::id::{AuthorId, EventId, Seq};
use crate::keys::{KeyError, Keypair};
use crate::topic::{Topic, TopicError};

/// The event format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Protocol cap on one encoded event, in bytes. Nodes refuse anything larger before
/// decoding it. (The local API applies a smaller, configurable payload limit.)
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 127;
/// Longest document id, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 255;
/// Length of the trailing ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// blake3 `derive_key` context for the digest that the signature covers. Domain
/// separation: the node key also signs libp2p handshakes, and a signature made for one
/// purpose must never verify for another.
pub const SIGNING_CONTEXT: &str = "murmur event v1 signing digest";

/// The identifier of a CRDT document within a topic: 1 to [`MAX_DOC_ID_BYTES`] bytes of
/// UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DocId(String);

impl DocId {
    /// Validates a document id.
    pub fn new(id: impl Into<String>) -> Result<Self, EventError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_DOC_ID_BYTES || id.chars().any(char::is_control) {
            return Err(EventError::BadDocId);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DocId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DocId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({:?})", self.0)
    }
}

/// Everything that can be wrong with an event's bytes or fields. Each variant is the
/// fault of whoever produced the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// Larger than the limit; refused before decoding.
    #[error("event is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Shorter than any valid event.
    #[error("event is truncated")]
    Truncated,
    /// A format version this node does not read.
    #[error("unsupported event format version {0}")]
    UnsupportedVersion(u8),
    /// The bytes do not parse as the event structure.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// Bytes after the signature.
    #[error("{0} unexpected bytes after the signature")]
    TrailingBytes(usize),
    /// Parses, but is not the canonical encoding of its own contents.
    #[error("event is not canonically encoded")]
    NonCanonical,
    /// The topic field is not a valid topic.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// `prev` must be absent exactly at seq 0.
    #[error("seq {seq} with prev {}: prev must be absent at seq 0 and present after it", if *.has_prev { "present" } else { "absent" })]
    BadLink {
        /// The event's seq.
        seq: Seq,
        /// Whether `prev` was present.
        has_prev: bool,
    },
    /// Content type too long or not printable ASCII.
    #[error("content type must be 1..={MAX_CONTENT_TYPE_BYTES} bytes of printable ASCII")]
    BadContentType,
    /// Document id empty, too long or containing control characters.
    #[error("document id must be 1..={MAX_DOC_ID_BYTES} bytes without control characters")]
    BadDocId,
    /// The author is not a valid public key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signature does not verify.
    #[error("signature of event {0} does not verify")]
    BadSignature(EventId),
}

/// The body of an event, borrowed from its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// Opaque application data.
    Data {
        /// Optional MIME type, e.g. `application/json`.
        content_type: Option<&'a str>,
        /// The bytes.
        data: &'a [u8],
    },
    /// An automerge change to a document in this topic.
    Doc {
        /// The document id.
        doc: &'a str,
        /// The automerge change bytes.
        change: &'a [u8],
    },
}

/// An owned body, for building events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Opaque application data.
    Data {
        /// Optional MIME type.
        content_type: Option<String>,
        /// The bytes.
        data: Bytes,
    },
    /// An automerge change.
    Doc {
        /// The document.
        doc: DocId,
        /// The change bytes.
        change: Bytes,
    },
}

impl Payload {
    /// Plain data without a content type.
    pub fn data(data: impl Into<Bytes>) -> Self {
        Payload::Data {
            content_type: None,
            data: data.into(),
        }
    }
}

/// The unsigned contents of a new event, ready to be signed by its author.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The topic.
    pub topic: Topic,
    /// Position in the author's log for this topic.
    pub seq: Seq,
    /// Id of the event at `seq - 1`; `None` exactly when `seq` is 0.
    pub prev: Option<EventId>,
    /// Hybrid logical clock time.
    pub time: Timestamp,
    /// The body.
    pub body: Payload,
}

// --- wire structures (postcard) -------------------------------------------------------

/// Bytes that serialize as one postcard byte string (varint length + bytes), not as a
/// sequence of u8 elements.
#[derive(Clone, Copy)]
pub(crate) struct Raw<'a>(pub(crate) &'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a [u8]>::deserialize(d).map(Raw)
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Wire<'a> {
    pub(crate) version: u8,
    pub(crate) author: [u8; 32],
    pub(crate) topic: &'a str,
    pub(crate) seq: u64,
    pub(crate) prev: Option<[u8; 32]>,
    pub(crate) time_ms: u64,
    pub(crate) time_logical: u32,
    #[serde(borrow)]
    pub(crate) body: WireBody<'a>,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum WireBody<'a> {
    Data {
        content_type: Option<&'a str>,
        #[serde(borrow)]
        data: Raw<'a>,
    },
    Doc {
        doc: &'a str,
        #[serde(borrow)]
        change: Raw<'a>,
    },
}

// --- the event ------------------------------------------------------------------------

/// A decoded event together with its canonical encoding and id.
///
/// Invariants: `bytes` is the canonical encoding of the fields; `id` is blake3 of
/// `bytes`; the fields passed every structural check. Construction is only through
/// [`Event::decode`] and [`Event::sign`]. A decoded event is *not* yet known to be
/// authentic: call [`Event::verify`] or verify it as part of a range
/// ([`crate::verify::verify_range`]).
#[derive(Clone)]
pub struct Event {
    id: EventId,
    bytes: Bytes,
    signed_len: usize,
    author: AuthorId,
    topic: Topic,
    seq: Seq,
    prev: Option<EventId>,
    time: Timestamp,
    kind: Kind,
    payload: Range<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Data { content_type: Option<String> },
    Doc { doc: String },
}

impl Event {
    /// Decodes `bytes`, refusing more than `max_len` bytes before looking inside.
    /// Checks structure, limits and canonical form; does not check the signature.
    pub fn decode(bytes: Bytes, max_len: usize) -> Result<Event, EventError> {
        let max = max_len.min(MAX_EVENT_BYTES);
        if bytes.len() > max {
            return Err(EventError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        match bytes.first() {
            None => return Err(EventError::Truncated),
            Some(&v) if v != FORMAT_VERSION => return Err(EventError::UnsupportedVersion(v)),
            Some(_) => {}
        }
        let (wire, rest) = postcard::take_from_bytes::<Wire<'_>>(&bytes).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => EventError::Truncated,
            other => EventError::Malformed(other.to_string()),
        })?;
        if rest.len() < SIGNATURE_BYTES {
            return Err(EventError::Truncated);
        }
        if rest.len() > SIGNATURE_BYTES {
            return Err(EventError::TrailingBytes(rest.len() - SIGNATURE_BYTES));
        }
        let signed_len = bytes.len() - SIGNATURE_BYTES;
        // postcard accepts some non-minimal forms (e.g. over-long varints). Re-encoding
        // and comparing makes "one event, one encoding, one id" hold for any input.
        let canonical =
            postcard::to_allocvec(&wire).map_err(|e| EventError::Malformed(e.to_string()))?;
        if canonical.as_slice() != &bytes[..signed_len] {
            return Err(EventError::NonCanonical);
        }
        let topic = Topic::new(wire.topic)?;
        let seq = Seq(wire.seq);
        check_link(seq, wire.prev.is_some())?;
        let (kind, payload) = match wire.body {
            WireBody::Data { content_type, data } => {
                if let Some(ct) = content_type {
                    check_content_type(ct)?;
                }
                let kind = Kind::Data {
                    content_type: content_type.map(str::to_owned),
                };
                (kind, subrange(&bytes, data.0))
            }
            WireBody::Doc { doc, change } => {
                DocId::new(doc)?;
                (
                    Kind::Doc {
                        doc: doc.to_owned(),
                    },
                    subrange(&bytes, change.0),
                )
            }
        };
        let author = AuthorId(wire.author);
        let prev = wire.prev.map(EventId);
        let time = Timestamp {
            ms: wire.time_ms,
            logical: wire.time_logical,
        };
        Ok(Event {
            id: EventId::hash(&bytes),
            bytes,
            signed_len,
            author,
            topic,
            seq,
            prev,
            time,
            kind,
            payload,
        })
    }

    /// Signs `draft` with `key`, producing the event and its encoding.
    pub fn sign(draft: &Draft, key: &Keypair) -> Result<Event, EventError> {
        check_link(draft.seq, draft.prev.is_some())?;
        let body = match &draft.body {
            Payload::Data { content_type, data } => {
                if let Some(ct) = content_type {
                    check_content_type(ct)?;
                }
                WireBody::Data {
                    content_type: content_type.as_deref(),
                    data: Raw(data),
                }
            }
            Payload::Doc { doc, change } => WireBody::Doc {
                doc: doc.as_str(),
                change: Raw(change),
            },
        };
        let wire = Wire {
            version: FORMAT_VERSION,
            author: key.author().0,
            topic: draft.topic.as_str(),
            seq: draft.seq.0,
            prev: draft.prev.map(|p| p.0),
            time_ms: draft.time.ms,
            time_logical: draft.time.logical,
            body,
        };
        let payload_len = match &draft.body {
            Payload::Data { data, .. } => data.len(),
            Payload::Doc { change, .. } => change.len(),
        };
        let mut buf = Vec::with_capacity(payload_len + draft.topic.as_str().len() + 160);
        buf = postcard::to_extend(&wire, buf).map_err(|e| EventError::Malformed(e.to_string()))?;
        if buf.len() + SIGNATURE_BYTES > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge {
                len: buf.len() + SIGNATURE_BYTES,
                max: MAX_EVENT_BYTES,
            });
        }
        let sig = key.sign(&signing_digest(&buf));
        buf.extend_from_slice(&sig);
        Event::decode(Bytes::from(buf), MAX_EVENT_BYTES)
    }

    /// Checks the signature against the author key (strict ed25519 verification).
    pub fn verify(&self) -> Result<(), EventError> {
        let key = self.author.verifying_key()?;
        let sig = Signature::from_bytes(&self.signature());
        key.verify_strict(&self.digest(), &sig)
            .map_err(|_| EventError::BadSignature(self.id))
    }

    /// The 32-byte digest that the signature covers.
    pub fn digest(&self) -> [u8; 32] {
        signing_digest(self.signed_bytes())
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.id
    }
    /// The author.
    pub fn author(&self) -> AuthorId {
        self.author
    }
    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }
    /// Position in the log.
    pub fn seq(&self) -> Seq {
        self.seq
    }
    /// Id of the previous event of the log; `None` exactly at seq 0.
    pub fn prev(&self) -> Option<EventId> {
        self.prev
    }
    /// HLC time at which the author created the event.
    pub fn time(&self) -> Timestamp {
        self.time
    }
    /// The full canonical encoding, signature included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    /// The part of the encoding that the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..self.signed_len]
    }
    /// The signature.
    pub fn signature(&self) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&self.bytes[self.signed_len..]);
        sig
    }
    /// The body, borrowed.
    pub fn body(&self) -> Body<'_> {
        let payload = &self.bytes[self.payload.clone()];
        match &self.kind {
            Kind::Data { content_type } => Body::Data {
                content_type: content_type.as_deref(),
                data: payload,
            },
            Kind::Doc { doc } => Body::Doc {
                doc,
                change: payload,
            },
        }
    }
    /// The payload (data or change bytes) without copying.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(self.payload.clone())
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Event {}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("author", &self.author)
            .field("topic", &self.topic)
            .field("seq", &self.seq)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The digest an author signs for the given signed bytes.
pub fn signing_digest(signed: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(SIGNING_CONTEXT);
    h.update(signed);
    *h.finalize().as_bytes()
}

fn check_link(seq: Seq, has_prev: bool) -> Result<(), EventError> {
    if (seq.0 == 0) == has_prev {
        return Err(EventError::BadLink { seq, has_prev });
    }
    Ok(())
}

fn check_content_type(ct: &str) -> Result<(), EventError> {
    let ok = !ct.is_empty()
        && ct.len() <= MAX_CONTENT_TYPE_BYTES
        && ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok {
        Ok(())
    } else {
        Err(EventError::BadContentType)
    }
}

/// The range that `inner` (a sub-slice borrowed from `outer`) occupies in `outer`.
fn subrange(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    debug_assert!(start + inner.len() <= outer.len());
    start..start + inner.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) use crate::testing::key;

    /// A chain of `len` data events by `key` in `topic`.
    pub(crate) fn chain(key: &Keypair, topic: &str, len: usize) -> Vec<Event> {
        crate::testing::chain(key, topic, len, "event ")
    }

    fn draft(seq: u64, prev: Option<EventId>, body: Payload) -> Draft {
        Draft {
            topic: Topic::new("sensors/kitchen/temp").unwrap(),
            seq: Seq(seq),
            prev,
            time: Timestamp {
                ms: 1_700_000_000_123,
                logical: 4,
            },
            body,
        }
    }

    #[test]
    fn sign_decode_verify() {
        let k = key(1);
        let ev = Event::sign(
            &draft(
                0,
                None,
                Payload::Data {
                    content_type: Some("application/json".into()),
                    data: Bytes::from_static(b"{\"t\":21.5}"),
                },
            ),
            &k,
        )
        .unwrap();
        ev.verify().unwrap();
        let again = Event::decode(ev.bytes().clone(), MAX_EVENT_BYTES).unwrap();
        assert_eq!(again.id(), ev.id());
        assert_eq!(again.author(), k.author());
        assert_eq!(again.seq(), Seq(0));
        assert_eq!(
            again.body(),
            Body::Data {
                content_type: Some("application/json"),
                data: b"{\"t\":21.5}"
            }
        );
        assert_eq!(ev.id(), EventId::hash(ev.bytes()));
    }

    /// The documented layout, checked byte by byte for one small event.
    #[test]
    fn layout_matches_documentation() {
        let k = key(2);
        let ev = Event::sign(
            &draft(1, Some(EventId([7; 32])), Payload::data(&b"hi"[..])),
            &k,
        )
        .unwrap();
        let b = ev.bytes();
        assert_eq!(b[0], 1, "version");
        assert_eq!(&b[1..33], k.author().as_bytes(), "author");
        assert_eq!(b[33], 20, "topic length varint");
        assert_eq!(&b[34..54], b"sensors/kitchen/temp");
        assert_eq!(b[54], 1, "seq varint");
        assert_eq!(b[55], 1, "prev present");
        assert_eq!(&b[56..88], &[7; 32], "prev");
        // time_ms 1_700_000_000_123 as LEB128 varint: 6 bytes
        let mut ms = 1_700_000_000_123u64;
        let mut i = 88;
        loop {
            let byte = (ms & 0x7f) as u8;
            ms >>= 7;
            if ms == 0 {
                assert_eq!(b[i], byte);
                i += 1;
                break;
            }
            assert_eq!(b[i], byte | 0x80);
            i += 1;
        }
        assert_eq!(b[i], 4, "logical");
        assert_eq!(b[i + 1], 0, "body variant Data");
        assert_eq!(b[i + 2], 0, "no content type");
        assert_eq!(b[i + 3], 2, "data length");
        assert_eq!(&b[i + 4..i + 6], b"hi");
        assert_eq!(b.len(), i + 6 + 64, "signature last");
    }

    #[test]
    fn doc_body_round_trip() {
        let ev = Event::sign(
            &draft(
                0,
                None,
                Payload::Doc {
                    doc: DocId::new("site/inventory").unwrap(),
                    change: Bytes::from_static(&[1, 2, 3]),
                },
            ),
            &key(3),
        )
        .unwrap();
        let d = Event::decode(ev.bytes().clone(), MAX_EVENT_BYTES).unwrap();
        assert_eq!(
            d.body(),
            Body::Doc {
                doc: "site/inventory",
                change: &[1, 2, 3]
            }
        );
        d.verify().unwrap();
    }

    #[test]
    fn structural_rejections() {
        let k = key(1);
        assert!(matches!(
            Event::sign(&draft(0, Some(EventId([0; 32])), Payload::data(vec![])), &k),
            Err(EventError::BadLink { .. })
        ));
        assert!(matches!(
            Event::sign(&draft(3, None, Payload::data(vec![])), &k),
            Err(EventError::BadLink { .. })
        ));
        let bad_ct = Payload::Data {
            content_type: Some("a\nb".into()),
            data: Bytes::new(),
        };
        assert_eq!(
            Event::sign(&draft(0, None, bad_ct), &k).unwrap_err(),
            EventError::BadContentType
        );
        let huge = Payload::data(vec![0u8; MAX_EVENT_BYTES]);
        assert!(matches!(
            Event::sign(&draft(0, None, huge), &k),
            Err(EventError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_limits_checked_first() {
        let ev = chain(&key(1), "a", 1).remove(0);
        let len = ev.bytes().len();
        assert_eq!(
            Event::decode(ev.bytes().clone(), len - 1).unwrap_err(),
            EventError::TooLarge { len, max: len - 1 }
        );
        assert_eq!(
            Event::decode(Bytes::new(), 100).unwrap_err(),
            EventError::Truncated
        );
        assert_eq!(
            Event::decode(Bytes::from_static(&[9, 0, 0]), 100).unwrap_err(),
            EventError::UnsupportedVersion(9)
        );
        let mut long = ev.bytes().to_vec();
        long.push(0);
        assert_eq!(
            Event::decode(Bytes::from(long), MAX_EVENT_BYTES).unwrap_err(),
            EventError::TrailingBytes(1)
        );
        let short = ev.bytes().slice(..len - 1);
        assert_eq!(
            Event::decode(short, MAX_EVENT_BYTES).unwrap_err(),
            EventError::Truncated
        );
    }

    #[test]
    fn overlong_varint_is_not_canonical() {
        // seq 1 as the over-long varint [0x81, 0x00] parses with some decoders; it must
        // not give a second encoding (and a second id) for the same event.
        let ev = chain(&key(1), "a", 2).remove(1);
        let b = ev.bytes();
        let seq_at = 1 + 32 + 1 + 1; // version, author, topic len, "a"
        assert_eq!(b[seq_at], 1);
        let mut v = b[..seq_at].to_vec();
        v.extend_from_slice(&[0x81, 0x00]);
        v.extend_from_slice(&b[seq_at + 1..]);
        let err = Event::decode(Bytes::from(v), MAX_EVENT_BYTES).unwrap_err();
        assert!(
            matches!(err, EventError::NonCanonical | EventError::Malformed(_)),
            "{err:?}"
        );
    }

    #[test]
    fn tampered_signature_fails() {
        let ev = chain(&key(1), "a", 1).remove(0);
        let mut v = ev.bytes().to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        let d = Event::decode(Bytes::from(v), MAX_EVENT_BYTES).unwrap();
        assert!(matches!(d.verify(), Err(EventError::BadSignature(_))));
    }

    proptest! {
        #[test]
        fn round_trip_any_content(
            topic in "[a-z]{1,10}(/[a-z0-9]{1,10}){0,4}",
            seq in 0u64..u64::MAX,
            ms in any::<u64>(),
            logical in any::<u32>(),
            data in proptest::collection::vec(any::<u8>(), 0..512),
            ct in proptest::option::of("[a-z]{1,10}/[a-z+.-]{1,20}"),
        ) {
            let k = key(9);
            let d = Draft {
                topic: Topic::new(topic).unwrap(),
                seq: Seq(seq),
                prev: (seq > 0).then_some(EventId([seq as u8; 32])),
                time: Timestamp { ms, logical },
                body: Payload::Data { content_type: ct.clone(), data: Bytes::from(data.clone()) },
            };
            let ev = Event::sign(&d, &k).unwrap();
            let back = Event::decode(ev.bytes().clone(), MAX_EVENT_BYTES).unwrap();
            prop_assert_eq!(back.id(), ev.id());
            prop_assert_eq!(back.seq(), Seq(seq));
            prop_assert_eq!(back.time(), Timestamp { ms, logical });
            prop_assert_eq!(back.body(), Body::Data { content_type: ct.as_deref(), data: &data });
            prop_assert!(back.verify().is_ok());
        }

        /// Flipping any bit of a valid event never yields a different event that still
        /// verifies: it is refused by decoding or by signature verification.
        #[test]
        fn any_mutation_is_rejected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let ev = chain(&key(4), "mut/test", 2).remove(1);
            let mut v = ev.bytes().to_vec();
            let i = pos.index(v.len());
            v[i] ^= 1 << bit;
            match Event::decode(Bytes::from(v), MAX_EVENT_BYTES) {
                Err(_) => {}
                Ok(d) => {
                    prop_assert_ne!(d.id(), ev.id());
                    prop_assert!(d.verify().is_err());
                }
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Event::decode(Bytes::from(bytes), MAX_EVENT_BYTES);
        }

        /// Truncation at any point is refused.
        #[test]
        fn truncation_is_rejected(cut in any::<prop::sample::Index>()) {
            let ev = chain(&key(5), "t", 1).remove(0);
            let n = cut.index(ev.bytes().len());
            prop_assert!(Event::decode(ev.bytes().slice(..n), MAX_EVENT_BYTES).is_err());
        }
    }
}
