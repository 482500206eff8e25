//! Document endpoints: state (now or at a point), changes, history, listing, follow.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use murmur_core::{Body as EventBody, DocId, EventId, Offset, ReadStore, Topic};
use serde::Deserialize;

use super::{ApiError, ApiResult, JsonBody, Shared, blocking, parse_topic};
pub use crate::api::{
    ChangeJson, ChangeRequest, DocJson, DocUpdate, DocsList, History, HistoryEntry,
};
use crate::docs::{DocError, Point};

/// Most changes listed by one history request.
const HISTORY_MAX: usize = 10_000;
/// Most documents listed for one topic.
const LIST_MAX: usize = 10_000;

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        use crate::docs::ops::OpError;
        match e {
            DocError::Op(op) => {
                let (status, code) = match &op {
                    OpError::NotFound(_) => (StatusCode::NOT_FOUND, "no_such_path"),
                    OpError::WrongType { .. } => (StatusCode::CONFLICT, "wrong_type"),
                    OpError::OutOfRange { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "out_of_range")
                    }
                    OpError::Unreadable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    _ => (StatusCode::BAD_REQUEST, "bad_operation"),
                };
                ApiError::new(status, code, op.to_string())
            }
            DocError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_document", e.to_string())
            }
            DocError::NoSuchPoint(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_point", e.to_string())
            }
            DocError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            DocError::Ingest(i) => i.into(),
            DocError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
            DocError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            DocError::Store(_) => ApiError::internal(e),
        }
    }
}

fn parse_doc(s: &str) -> ApiResult<DocId> {
    DocId::new(s)
        .map_err(|e| ApiError::bad("invalid_doc", format!("invalid document id {s:?}: {e}")))
}

pub(super) async fn change(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<ChangeRequest>,
) -> ApiResult<Json<ChangeJson>> {
    let topic = parse_topic(&req.topic)?;
    super::check_reserved(&topic)?;
    let doc = parse_doc(&req.doc)?;
    if let Some(g) = &st.fleet {
        g.may_publish(&topic, true)
            .map_err(|r| super::refuse(&st, super::fleet::forbidden(&r)))?;
    }
    if let Some(m) = &req.message
        && m.len() > 1024
    {
        return Err(ApiError::bad(
            "bad_message",
            "a change message is at most 1,024 bytes",
        ));
    }
    let done = st
        .docs
        .change(topic.clone(), doc.clone(), req.ops, req.message)
        .await?;
    Ok(Json(ChangeJson {
        topic: topic.to_string(),
        doc: doc.to_string(),
        seq: done.event.seq().0,
        offset: done.offset.0,
        id: done.event.id().to_string(),
        hash: done.hash,
    }))
}

/// Which document, and optionally where in it and when.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocQuery {
    topic: String,
    doc: String,
    #[serde(default)]
    path: String,
    /// As of this local offset.
    at_offset: Option<u64>,
    /// As of this event (id, hex).
    at_event: Option<String>,
    /// As of this time: RFC 3339, or milliseconds since the epoch.
    at_time: Option<String>,
}

fn point(q: &DocQuery) -> ApiResult<Option<Point>> {
    let given = [
        q.at_offset.is_some(),
        q.at_event.is_some(),
        q.at_time.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ApiError::bad(
            "bad_query",
            "give at most one of at_offset, at_event, at_time",
        ));
    }
    if let Some(o) = q.at_offset {
        return Ok(Some(Point::Offset(Offset(o))));
    }
    if let Some(e) = &q.at_event {
        let id = e.parse::<EventId>().map_err(|_| {
            ApiError::bad(
                "bad_query",
                format!("{e:?} is not an event id (64 hex digits)"),
            )
        })?;
        return Ok(Some(Point::Event(id)));
    }
    if let Some(t) = &q.at_time {
        let ms = match t.parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .ok_or_else(|| {
                    ApiError::bad("bad_query", format!("{t:?} is not a time (RFC 3339, e.g. 2026-11-22T08:00:00Z, or ms since the epoch)"))
                })?,
        };
        return Ok(Some(Point::Time(ms)));
    }
    Ok(None)
}

pub(super) async fn get_doc(
    State(st): State<Shared>,
    q: Result<Query<DocQuery>, QueryRejection>,
) -> ApiResult<Json<DocJson>> {
    let Query(q) = q?;
    let topic = parse_topic(&q.topic)?;
    let doc = parse_doc(&q.doc)?;
    let at = point(&q)?;
    let s = st.docs.get(topic, doc, q.path.clone(), at).await?;
    Ok(Json(DocJson {
        topic: q.topic,
        doc: q.doc,
        path: q.path,
        value: s.json,
        heads: s.heads,
        missing: s.missing,
    }))
}

/// Topic query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicQuery {
    topic: String,
}

pub(super) async fn list(
    State(st): State<Shared>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult<Json<DocsList>> {
    let Query(q) = q?;
    let topic = parse_topic(&q.topic)?;
    let store = st.store.clone();
    let t = topic.clone();
    let docs = blocking(move || store.docs_of(&t, LIST_MAX)).await?;
    Ok(Json(DocsList {
        topic: topic.to_string(),
        docs: docs.iter().map(ToString::to_string).collect(),
    }))
}

/// History query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    topic: String,
    doc: String,
    /// First offset to list.
    #[serde(default)]
    from: u64,
    /// Most changes to list.
    limit: Option<usize>,
}

pub(super) async fn history(
    State(st): State<Shared>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<History>> {
    let Query(q) = q?;
    let topic = parse_topic(&q.topic)?;
    let doc = parse_doc(&q.doc)?;
    let limit = q.limit.unwrap_or(HISTORY_MAX).clamp(1, HISTORY_MAX);
    let store = st.store.clone();
    let page = blocking(move || store.doc_changes(&topic, &doc, Offset(q.from), limit)).await?;
    let next = page.last().map_or(q.from, |(o, _)| o.0 + 1);
    let changes = page
        .into_iter()
        .filter_map(|(off, ev)| {
            let EventBody::Doc { change, .. } = ev.body() else {
                return None;
            };
            let c = automerge::Change::from_bytes(change.to_vec()).ok()?;
            Some(HistoryEntry {
                offset: off.0,
                id: ev.id().to_string(),
                author: ev.author().to_string(),
                seq: ev.seq().0,
                time: crate::api::time_json(ev.time()),
                hash: c.hash().to_string(),
                deps: c.deps().iter().map(ToString::to_string).collect(),
                ops: c.len(),
                message: c.message().map(str::to_owned),
                bytes: change.len(),
            })
        })
        .collect();
    Ok(Json(History { changes, next }))
}

/// Follow query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowDocQuery {
    topic: String,
    doc: String,
    #[serde(default)]
    path: String,
}

/// Streams the document's state (NDJSON): now, then after every batch of changes. A
/// burst of changes gives one line with the state after all of them.
pub(super) async fn follow(
    State(st): State<Shared>,
    extensions: axum::http::Extensions,
    q: Result<Query<FollowDocQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let topic = parse_topic(&q.topic)?;
    let doc = parse_doc(&q.doc)?;
    let permit = st.followers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_followers",
            "too many follow streams (api.max_followers)",
        )
    })?;
    struct S {
        st: Shared,
        topic: Topic,
        doc: DocId,
        path: String,
        seen: Option<Offset>,
        _permit: tokio::sync::OwnedSemaphorePermit,
        /// Exempts the connection from the idle deadline while the stream lives.
        _streaming: Option<super::listener::Streaming>,
    }
    let s = S {
        st,
        topic,
        doc,
        path: q.path,
        seen: None,
        _permit: permit,
        _streaming: extensions
            .get::<axum::extract::ConnectInfo<super::listener::ConnMeta>>()
            .map(|c| c.0.streaming()),
    };
    let body = futures_util::stream::unfold(s, |mut s| async move {
        let mut offsets = s.st.offsets.clone();
        loop {
            // A change of this document at or after the last offset we showed?
            let store = s.st.store.clone();
            let (t, d) = (s.topic.clone(), s.doc.clone());
            let newer = tokio::task::spawn_blocking(move || store.doc_last_change(&t, &d))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            if let Some(last) = newer.filter(|l| s.seen.is_none_or(|seen| *l >= seen)) {
                s.seen = Some(Offset(last.0 + 1));
                let line = match s
                    .st
                    .docs
                    .get(s.topic.clone(), s.doc.clone(), s.path.clone(), None)
                    .await
                {
                    Ok(state) => serde_json::to_vec(&DocUpdate {
                        through: last.0 + 1,
                        value: state.json,
                    }),
                    Err(e) => serde_json::to_vec(&serde_json::json!({"error": e.to_string()})),
                };
                let mut line = line.unwrap_or_default();
                line.push(b'\n');
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), s));
            }
            tokio::select! {
                changed = offsets.changed() => { changed.ok()?; }
                () = s.st.shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_secs(15)) => {
                    return Some((Ok(Bytes::from_static(b"\n")), s)); // keep-alive
                }
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
