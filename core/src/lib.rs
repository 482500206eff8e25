//! # murmur-core
//!
//! The event model of murmur, with no I/O: keys, topics, events and their encoding,
//! signing, hash chains, acceptance rules, range and batch verification, the hybrid
//! logical clock, version vectors, and the storage trait. Nothing here touches a disk, a
//! socket, a clock or a random number generator: time and keys come in as arguments, so
//! the same code runs in the daemon, in tests and in the simulator.
//!
//! ## Walkthrough
//!
//! ```
//! use murmur_core::{Clock, Draft, Event, Head, Keypair, LogState, Payload, Seq, Topic,
//!                   Verdict, accept, verify};
//!
//! // A device key (the daemon loads its 32-byte seed from the data directory).
//! let key = Keypair::from_seed(&[7; 32]);
//! let topic = Topic::new("sensors/kitchen/temp")?;
//! let mut clock = Clock::default();
//!
//! // The author appends two events to its log for this topic.
//! let first = Event::sign(&Draft {
//!     topic: topic.clone(), seq: Seq(0), prev: None,
//!     time: clock.tick(1_700_000_000_000), body: Payload::data(&b"21.5"[..]),
//! }, &key)?;
//! let second = Event::sign(&Draft {
//!     topic: topic.clone(), seq: Seq(1), prev: Some(first.id()),
//!     time: clock.tick(1_700_000_000_500), body: Payload::data(&b"21.7"[..]),
//! }, &key)?;
//!
//! // A receiver decodes the bytes (bounded), checks the range with ONE signature ...
//! let got: Vec<Event> = [&first, &second].iter()
//!     .map(|e| Event::decode(e.bytes().clone(), murmur_core::MAX_EVENT_BYTES))
//!     .collect::<Result<_, _>>()?;
//! verify::verify_range(&got, None)?;
//!
//! // ... and applies the acceptance rules against its view of the log.
//! let empty = LogState::default();
//! assert_eq!(accept::classify(&empty, &got[0], |_| None), Verdict::Append);
//! let after_first = LogState { head: Some(Head::of(&got[0])), ..LogState::default() };
//! assert_eq!(accept::classify(&after_first, &got[1], |_| None), Verdict::Append);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Event format, version 1
//!
//! An event is the [postcard] encoding of the signed fields followed by a 64-byte ed25519
//! signature. postcard writes unsigned integers as LEB128 varints (7 bits per byte,
//! least significant group first, high bit set on every byte but the last), byte strings
//! and UTF-8 strings as a varint length followed by the bytes, `Option` as one byte
//! `0x00` (absent) or `0x01` followed by the value, fixed arrays as their raw bytes, and
//! enum variants as a varint index followed by the fields. In order:
//!
//! | field | encoding | notes |
//! |---|---|---|
//! | version | 1 byte | `0x01` |
//! | author | 32 bytes | ed25519 public key |
//! | topic | varint length + UTF-8 | 1–255 bytes, see [`Topic`] |
//! | seq | varint (u64) | position in the author's log for this topic |
//! | prev | `0x00`, or `0x01` + 32 bytes | blake3 id of the event at `seq - 1`; absent exactly at seq 0 |
//! | time_ms | varint (u64) | HLC physical part, ms since the Unix epoch |
//! | time_logical | varint (u32) | HLC logical counter |
//! | body | varint variant index, then fields | see below |
//! | signature | 64 bytes | ed25519 over the signing digest |
//!
//! Body variant `0` (data): content type as an `Option` of a string (1–127 bytes of
//! printable ASCII), then the data as a byte string. Body variant `1` (document change):
//! the document id as a string (1–255 bytes, no control characters), then the automerge
//! change as a byte string.
//!
//! **Signing digest**: blake3 in `derive_key` mode with context
//! [`SIGNING_CONTEXT`] (`"murmur event v1 signing digest"`) over every byte before the
//! signature. The signature is ed25519 (RFC 8032) over those 32 bytes, verified
//! strictly. Hashing first keeps signing cost flat for large payloads, and the context
//! string keeps an event signature from ever being valid in another protocol that uses
//! the same key.
//!
//! **Event id**: plain blake3 of the whole encoding, signature included. Because `prev`
//! is such an id, one valid signature on the newest event of a hash-linked range
//! authenticates the whole range (see [`verify`]).
//!
//! **Canonical form**: a decoder must refuse any encoding that differs from what an
//! encoder would write for the same fields (over-long varints, for example), so that one
//! event has exactly one encoding and one id. This crate re-encodes and compares.
//!
//! **Limits**: a decoder refuses input longer than [`MAX_EVENT_BYTES`] (4 MiB) before
//! looking inside it; all lengths inside are bounded by the input length, so decoding
//! never allocates more than the input.
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod accept;
pub mod channel;
pub mod event;
pub mod fleet;
pub mod health;
pub mod hlc;
pub mod id;
pub mod keys;
pub mod push;
pub mod replicate;
pub mod retention;
pub mod run;
pub mod snapshot;
pub mod storage;
pub mod sync;
pub mod testing;
pub mod topic;
pub mod verify;
pub mod vv;

pub use accept::{ForkProof, Head, LogState, Verdict};
pub use event::{Body, DocId, Draft, Event, EventError, MAX_EVENT_BYTES, Payload, SIGNING_CONTEXT};
pub use hlc::{Ahead, Clock, ClockError, Timestamp};
pub use id::{AuthorId, EventId, Offset, Seq};
pub use keys::{KeyError, Keypair};
pub use storage::{
    ArrivalPage, Cut, DocArrival, Durability, LogSummary, Outcome, Pruned, ReadStore, Snapshot,
    Store,
};
pub use topic::{Pattern, Topic, TopicError};
pub use vv::VersionVector;
