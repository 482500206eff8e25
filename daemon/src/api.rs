//! The local API's types live in `murmur-client` ([`murmur_client::api`]), shared with
//! every client; this module re-exports them and builds them from core types.

use base64::Engine;
use murmur_core::{Body, Event, Offset, Timestamp};

pub use murmur_client::api::*;

/// The JSON view of a time.
pub fn time_json(t: Timestamp) -> TimeJson {
    TimeJson {
        ms: t.ms,
        logical: t.logical,
    }
}

/// The JSON view of `ev`, at local `offset` if known.
pub fn event_json(ev: &Event, offset: Option<Offset>) -> EventJson {
    let (kind, content_type, doc, bytes) = match ev.body() {
        Body::Data { content_type, data } => ("data", content_type.map(str::to_owned), None, data),
        Body::Doc { doc, change } => ("doc", None, Some(doc.to_owned()), change),
    };
    let (encoding, data) = match std::str::from_utf8(bytes) {
        Ok(s) => ("utf8", s.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    };
    EventJson {
        offset: offset.map(|o| o.0),
        id: ev.id().to_string(),
        author: ev.author().to_string(),
        topic: ev.topic().to_string(),
        seq: ev.seq().0,
        prev: ev.prev().map(|p| p.to_string()),
        time: time_json(ev.time()),
        kind: kind.into(),
        content_type,
        doc,
        encoding: encoding.into(),
        data,
    }
}
