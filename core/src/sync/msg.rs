//! Sync protocol messages and their wire encoding.
//!
//! A frame on a sync stream is `length (u32, big-endian) || postcard(Message)`. The
//! length is checked against [`MAX_FRAME_BYTES`] before anything is allocated; a frame
//! that does not decode is a protocol violation by the sender.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::MAX_EVENT_BYTES;
use crate::id::{AuthorId, Seq};
use crate::topic::Topic;
use crate::vv::{Digest, VersionVector};

/// Largest frame: a window of events must fit, so it is bounded by the window size
/// times the event size limit in practice; this is the hard cap.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + MAX_EVENT_BYTES;
/// Most authors in one vector message.
pub const MAX_VECTOR_AUTHORS: usize = 100_000;

/// One message of the sync protocol. Every message names its topic: a peer may run
/// rounds for several topics over one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Opens a round: the digest of the sender's version vector for `topic`.
    Hello {
        /// The topic.
        topic: Topic,
        /// Digest of the sender's vector.
        digest: Digest,
    },
    /// Answer to `Hello` when the digests are equal: nothing to do.
    InSync {
        /// The topic.
        topic: Topic,
    },
    /// The sender's full version vector (the digests differed).
    Vector {
        /// The topic.
        topic: Topic,
        /// author → head.
        vv: VersionVector,
    },
    /// Asks for up to `limit` events of one log from `from` on.
    Want {
        /// Request id, echoed in the answer.
        req: u64,
        /// The topic.
        topic: Topic,
        /// The log's author.
        author: AuthorId,
        /// First seq wanted.
        from: Seq,
        /// Most events to send.
        limit: u32,
    },
    /// Answer to `Want`: consecutive events from the wanted seq, oldest first, as one
    /// [`crate::run`]. Fewer than asked means the sender has no more; an empty `run`
    /// means it has none.
    Events {
        /// The `req` of the `Want` this answers.
        req: u64,
        /// The topic.
        topic: Topic,
        /// The log's author.
        author: AuthorId,
        /// The events as a run (compact: author, topic and links are sent once), or
        /// empty.
        run: Bytes,
    },
    /// Two validly signed events at one position of a log.
    Fork {
        /// One event.
        a: Bytes,
        /// The other.
        b: Bytes,
    },
}

impl Message {
    /// The topic the message is about (forks carry theirs inside the events).
    pub fn topic(&self) -> Option<&Topic> {
        match self {
            Message::Hello { topic, .. }
            | Message::InSync { topic }
            | Message::Vector { topic, .. }
            | Message::Want { topic, .. }
            | Message::Events { topic, .. } => Some(topic),
            Message::Fork { .. } => None,
        }
    }

    /// Encodes one frame (length prefix + body).
    pub fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![0u8; 4];
        out = postcard::to_extend(self, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
        let len = out.len() - 4;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        out[..4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(out)
    }

    /// Decodes a frame body (without the length prefix).
    pub fn from_body(body: &[u8]) -> Result<Message, FrameError> {
        if body.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(body.len()));
        }
        let msg: Message =
            postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if let Message::Vector { vv, .. } = &msg
            && vv.len() > MAX_VECTOR_AUTHORS
        {
            return Err(FrameError::Malformed(format!(
                "vector of {} authors",
                vv.len()
            )));
        }
        Ok(msg)
    }

    /// Reads a frame length prefix, refusing lengths over the maximum before any
    /// allocation.
    pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        Ok(len)
    }
}

/// A frame that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Over [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
}
