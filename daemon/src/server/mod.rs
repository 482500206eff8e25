//! The local control API: HTTP/1.1 + JSON over a Unix socket. Routes are documented in
//! the README; request and response types are in [`crate::api`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use murmur_core::{AuthorId, EventId, Offset, Pattern, Payload, ReadStore, Seq, Topic};
use murmur_store::RocksStore;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{
    BatchRequest, BatchResponse, EventJson, EventsPage, LogJson, PublishRequest, Published,
    QueueJson, Status, TopicJson, TopicsResponse,
};
use crate::api::{DialRequest, PeerJson, PeersResponse, SyncRequest};
use crate::follow;

mod consumers;
pub mod dashboard;
mod docs;
mod error;
mod fleet;
pub mod health;
pub mod listener;
use crate::ingest::{self, PublishItem};
use crate::metrics::{self, Kind, Metrics};
pub use docs::{ChangeJson, DocJson, DocUpdate, DocsList, History, HistoryEntry};
use error::body_error;
pub use error::{ApiError, ApiResult, JsonBody};

/// Limits the API enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest payload of one event.
    pub max_payload: usize,
    /// Most events per batch request.
    pub max_batch_events: usize,
    /// Largest batch request body.
    pub max_request: usize,
    /// Most events per read.
    pub max_read: usize,
}

/// Everything the handlers share.
pub struct AppState {
    /// The store (reads only; writes go through `ingest`).
    pub store: Arc<RocksStore>,
    /// The ingest pipeline.
    pub ingest: ingest::Handle,
    /// Newest offset, updated after each commit.
    pub offsets: watch::Receiver<crate::ingest::Committed>,
    /// Metrics handles.
    pub metrics: Metrics,
    /// The registry to encode at `/metrics`.
    pub registry: Registry,
    /// Limits.
    pub limits: Limits,
    /// Follow stream slots.
    pub followers: Arc<Semaphore>,
    /// Fired at shutdown: ends follow streams.
    pub shutdown: CancellationToken,
    /// This node's author id.
    pub author: AuthorId,
    /// For status.
    pub data_dir: PathBuf,
    /// For status.
    pub sync: &'static str,
    /// For status.
    pub started: Instant,
    /// The network and the replicator, when replication is on.
    pub net: Option<(murmur_p2p::Handle, crate::replicate::Handle)>,
    /// The document manager.
    pub docs: crate::docs::Handle,
    /// The node's clock.
    pub clock: Arc<crate::clock::NodeClock>,
    /// Set by the store scan after start when it finds damage or disagreeing indexes.
    pub store_problem: Arc<std::sync::OnceLock<String>>,
    /// The writer's state (disk full).
    pub failing: crate::ingest::WriteFailing,
    /// The database's disk budget, bytes (0: none).
    pub disk_budget: u64,
    /// The retention rules in force (replaceable at runtime).
    pub rules: crate::retention::Rules,
    /// The fleet's membership and permissions (`None`: an open fleet).
    pub fleet: Option<crate::fleet::Guard>,
    /// How often this node publishes its heartbeat (zero: never).
    pub heartbeat_interval: std::time::Duration,
    /// Nodes not heard from in this long leave the fleet view.
    pub forget_after: std::time::Duration,
    /// Named consumers.
    pub consumers: Arc<crate::consumers::Consumers>,
    /// The most named consumers (`api.max_consumers`).
    pub consumers_max: usize,
    /// The MQTT listener and bridges as configured, for status.
    pub mqtt: crate::config::MqttConfig,
}

type Shared = Arc<AppState>;

/// Publishes this node's fleet certificate on the policy topic if it is not there yet
/// (logged, not fatal: the next start or join tries again).
pub async fn publish_own_cert(state: &AppState) {
    match fleet::publish_own(state).await {
        Ok(Some(p)) => tracing::info!(seq = p.seq, "published this node's fleet certificate"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e.message, "cannot publish this node's fleet certificate yet")
        }
    }
}

/// Builds the router.
pub fn router(state: Shared) -> Router {
    let limits = state.limits.clone();
    // A single JSON publish carries the payload base64-encoded at worst (4/3) plus fields.
    let single_body = limits.max_payload / 3 * 4 + 64 * 1024;
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/topics", get(topics))
        .route("/v1/events", post(publish).get(read_arrivals))
        .route(
            "/v1/events/batch",
            post(publish_batch).layer(DefaultBodyLimit::max(limits.max_request)),
        )
        .route("/v1/events/{id}", get(event_by_id))
        .route(
            "/v1/raw/{*topic}",
            post(publish_raw).layer(DefaultBodyLimit::max(limits.max_payload)),
        )
        .route("/v1/log", get(read_log))
        .route("/v1/follow", get(follow_stream))
        .route("/v1/consumers", get(consumers::list))
        .route(
            "/v1/consumers/{name}",
            get(consumers::get_one).delete(consumers::delete),
        )
        .route("/v1/consumers/{name}/ack", post(consumers::ack))
        .route("/v1/forks", get(forks))
        .route("/v1/peers", get(peers))
        .route("/v1/dial", post(dial))
        .route("/v1/sync", post(sync_now))
        .route("/v1/replication", get(replication))
        .route("/v1/interest", get(interest_list).post(interest_change))
        .route("/v1/retention", get(retention_list).post(retention_change))
        .route("/v1/docs", get(docs::list))
        .route("/v1/doc", get(docs::get_doc).post(docs::change))
        .route("/v1/doc/history", get(docs::history))
        .route("/v1/doc/follow", get(docs::follow))
        .route("/v1/fleet", get(fleet::status))
        .route("/v1/fleet/nodes", get(health::nodes))
        .route("/v1/fleet/join", post(fleet::join))
        .route("/v1/fleet/policy", post(fleet::policy))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(single_body))
        .layer(axum::middleware::from_fn(utf8_only))
        .with_state(state)
}

/// Refuses a request whose path or query string is not UTF-8 once percent-decoded
/// (`pattern=%FF`). Query parsing would otherwise replace the bad bytes with U+FFFD and
/// answer 200 with nothing found for a topic nobody asked for.
async fn utf8_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let uri = req.uri();
    let bad = |part: &str| {
        // `+` means a space in a query and is ASCII either way.
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .is_err()
    };
    if bad(uri.path()) || uri.query().is_some_and(bad) {
        return Err(ApiError::bad(
            "invalid_utf8",
            "the path or query string is not UTF-8 once percent-decoded; topics and patterns are UTF-8",
        ));
    }
    Ok(next.run(req).await)
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}", uri.path()),
    )
}

/// Runs `f` on the blocking pool (RocksDB calls block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, murmur_store::StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

fn parse_topic(s: &str) -> ApiResult<Topic> {
    Topic::new(s).map_err(|e| ApiError::bad("invalid_topic", format!("invalid topic {s:?}: {e}")))
}

fn parse_pattern(s: &str) -> ApiResult<Pattern> {
    Pattern::new(s)
        .map_err(|e| ApiError::bad("invalid_pattern", format!("invalid pattern {s:?}: {e}")))
}

/// `$fleet/…` topics are written by the node itself.
fn check_reserved(topic: &Topic) -> ApiResult<()> {
    if murmur_core::fleet::is_reserved(topic) {
        return Err(ApiError::bad(
            "reserved_topic",
            format!(
                "topic {topic} is reserved: {}… topics are written by the node itself (the fleet policy: `murmur fleet grant|revoke`)",
                murmur_core::fleet::RESERVED_PREFIX
            ),
        ));
    }
    Ok(())
}

fn check_content_type(ct: &Option<String>) -> ApiResult<()> {
    match ct {
        Some(c)
            if c.is_empty()
                || c.len() > 127
                || !c.bytes().all(|b| b.is_ascii_graphic() || b == b' ') =>
        {
            Err(ApiError::bad(
                "invalid_content_type",
                "content_type must be 1..=127 bytes of printable ASCII",
            ))
        }
        Some(c) if c.eq_ignore_ascii_case(murmur_core::snapshot::CONTENT_TYPE) => {
            Err(ApiError::bad(
                "invalid_content_type",
                format!(
                    "content_type {c} is reserved: document snapshots are written by the node itself"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// An idempotency key: 1–128 bytes of printable ASCII.
fn check_key(key: Option<String>) -> ApiResult<Option<String>> {
    match key {
        Some(k) if k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(ApiError::bad(
                "invalid_idempotency_key",
                "an idempotency key is 1..=128 bytes of printable ASCII, no spaces",
            ))
        }
        k => Ok(k),
    }
}

/// The `Idempotency-Key` header, if any (for single and raw publishes).
fn header_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => check_key(Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad(
                        "invalid_idempotency_key",
                        "the Idempotency-Key header is not printable ASCII",
                    )
                })?
                .to_owned(),
        )),
    }
}

fn item(req: PublishRequest, max_payload: usize) -> ApiResult<PublishItem> {
    let topic = parse_topic(&req.topic)?;
    check_reserved(&topic)?;
    check_content_type(&req.content_type)?;
    let key = check_key(req.idempotency_key)?;
    let data: Bytes = match (req.data, req.data_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "bad_request",
                "give data or data_b64, not both",
            ));
        }
        (Some(s), None) => Bytes::from(s),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map(Bytes::from)
            .map_err(|e| {
                ApiError::bad("bad_base64", format!("data_b64 is not valid base64: {e}"))
            })?,
        (None, None) => Bytes::new(),
    };
    if data.len() > max_payload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "payload is {} bytes; the limit is {max_payload} (api.max_payload_bytes)",
                data.len()
            ),
        ));
    }
    Ok(PublishItem {
        topic,
        payload: Payload::Data {
            content_type: req.content_type,
            data,
        },
        key,
    })
}

fn published(p: &ingest::Published) -> Published {
    Published {
        id: p.event.id().to_string(),
        author: p.event.author().to_string(),
        topic: p.event.topic().to_string(),
        seq: p.event.seq().0,
        offset: p.offset.0,
        time: crate::api::time_json(p.event.time()),
    }
}

/// Queues `items`, waits until they are durable, and counts the request by kind.
async fn commit(
    st: &AppState,
    items: Vec<PublishItem>,
    kind: &str,
) -> ApiResult<Vec<ingest::Published>> {
    // The fleet's permissions, checked here for every local publish (the node's own
    // policy entries excepted: their authority is their own signature; and its
    // heartbeats, which every member writes).
    if let Some(g) = &st.fleet
        && kind != "fleet"
        && kind != "heartbeat"
    {
        for it in &items {
            let docs = matches!(it.payload, Payload::Doc { .. });
            g.may_publish(&it.topic, docs)
                .map_err(|r| refuse(st, fleet::forbidden(&r)))?;
        }
    }
    let done = st
        .ingest
        .publish(items)
        .await
        .map_err(|e| refuse(st, e.into()))?;
    st.metrics
        .publish_requests
        .get_or_create(&Kind { kind: kind.into() })
        .inc();
    Ok(done)
}

/// The acknowledgement of a one-event request.
fn single(mut done: Vec<ingest::Published>) -> ApiResult<Json<Published>> {
    let p = done
        .pop()
        .ok_or_else(|| ApiError::internal("empty commit"))?;
    Ok(Json(published(&p)))
}

fn refuse(state: &AppState, e: ApiError) -> ApiError {
    state.metrics.refused(e.code);
    e
}

async fn publish(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<JsonBody<PublishRequest>, ApiError>,
) -> ApiResult<Json<Published>> {
    let JsonBody(mut req) = body.map_err(|e| refuse(&st, e))?;
    if let Some(k) = header_key(&headers).map_err(|e| refuse(&st, e))? {
        if req.idempotency_key.as_ref().is_some_and(|b| *b != k) {
            return Err(refuse(
                &st,
                ApiError::bad(
                    "invalid_idempotency_key",
                    "the Idempotency-Key header and the body's idempotency_key differ",
                ),
            ));
        }
        req.idempotency_key = Some(k);
    }
    let it = item(req, st.limits.max_payload).map_err(|e| refuse(&st, e))?;
    single(commit(&st, vec![it], "single").await?)
}

async fn publish_batch(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<JsonBody<BatchRequest>, ApiError>,
) -> ApiResult<Json<BatchResponse>> {
    let JsonBody(req) = body.map_err(|e| refuse(&st, e))?;
    if headers.contains_key("idempotency-key") {
        return Err(refuse(
            &st,
            ApiError::bad(
                "invalid_idempotency_key",
                "a batch takes idempotency keys per event (each event's idempotency_key), not the Idempotency-Key header",
            ),
        ));
    }
    let keyed = req
        .events
        .iter()
        .filter(|e| e.idempotency_key.is_some())
        .count();
    if keyed > 0 && keyed < req.events.len() {
        return Err(refuse(
            &st,
            ApiError::bad(
                "invalid_idempotency_key",
                format!(
                    "{keyed} of the batch's {} events have an idempotency key: give every event one, or none (a retry must be recognisable whole)",
                    req.events.len()
                ),
            ),
        ));
    }
    if req.events.is_empty() {
        return Err(refuse(
            &st,
            ApiError::bad("bad_request", "batch has no events"),
        ));
    }
    if req.events.len() > st.limits.max_batch_events {
        return Err(refuse(
            &st,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "batch has {} events; the limit is {} (api.max_batch_events)",
                    req.events.len(),
                    st.limits.max_batch_events
                ),
            ),
        ));
    }
    let items = req
        .events
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            item(r, st.limits.max_payload).map_err(|mut e| {
                e.message = format!("event {i}: {}", e.message);
                e
            })
        })
        .collect::<ApiResult<Vec<_>>>()
        .map_err(|e| refuse(&st, e))?;
    let done = commit(&st, items, "batch").await?;
    Ok(Json(BatchResponse {
        events: done.iter().map(published).collect(),
    }))
}

async fn publish_raw(
    State(st): State<Shared>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Published>> {
    let body = body.map_err(|e| refuse(&st, body_error(e)))?;
    let topic = parse_topic(&topic)
        .and_then(|t| check_reserved(&t).map(|()| t))
        .map_err(|e| refuse(&st, e))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|ct| {
            *ct != "application/octet-stream" && *ct != "application/x-www-form-urlencoded"
        })
        .map(str::to_owned);
    check_content_type(&content_type).map_err(|e| refuse(&st, e))?;
    let key = header_key(&headers).map_err(|e| refuse(&st, e))?;
    let it = PublishItem {
        topic,
        payload: Payload::Data {
            content_type,
            data: body,
        },
        key,
    };
    single(commit(&st, vec![it], "raw").await?)
}

#[derive(Deserialize)]
struct ArrivalsQuery {
    pattern: Option<String>,
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
}

async fn read_arrivals(
    State(st): State<Shared>,
    q: Result<Query<ArrivalsQuery>, QueryRejection>,
) -> ApiResult<Json<EventsPage>> {
    let Query(q) = q?;
    let pattern = q.pattern.as_deref().map(parse_pattern).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, st.limits.max_read);
    let store = st.store.clone();
    let (page, pruned) = blocking(move || {
        let pruned = follow::pruned_since(&store, pattern.as_ref(), Offset(q.from))?;
        let page = store.arrivals(
            Offset(q.from),
            pattern.as_ref(),
            limit,
            limit.max(10_000) * 10,
        )?;
        Ok((page, pruned))
    })
    .await?;
    Ok(Json(EventsPage {
        events: page
            .events
            .iter()
            .map(|(o, e)| crate::api::event_json(e, Some(*o)))
            .collect(),
        next: page.next.0,
        pruned_to: pruned.map(|o| o.0),
    }))
}

#[derive(Deserialize)]
struct LogQuery {
    topic: String,
    author: Option<String>,
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
}

async fn read_log(
    State(st): State<Shared>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult<Json<EventsPage>> {
    let Query(q) = q?;
    let topic = parse_topic(&q.topic)?;
    let author = match q.author {
        Some(a) => a
            .parse::<AuthorId>()
            .map_err(|e| ApiError::bad("invalid_author", format!("author: {e}")))?,
        None => st.author,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, st.limits.max_read);
    let store = st.store.clone();
    let events = blocking(move || store.log_range(&author, &topic, Seq(q.from), limit)).await?;
    let next = events.last().map_or(q.from, |e| e.seq().0 + 1);
    Ok(Json(EventsPage {
        events: events
            .iter()
            .map(|e| crate::api::event_json(e, None))
            .collect(),
        next,
        pruned_to: None,
    }))
}

async fn event_by_id(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<EventJson>> {
    let id: EventId = id
        .parse()
        .map_err(|e| ApiError::bad("invalid_id", format!("event id: {e}")))?;
    let store = st.store.clone();
    match blocking(move || store.event(&id)).await? {
        Some(ev) => Ok(Json(crate::api::event_json(&ev, None))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event {id}"),
        )),
    }
}

async fn topics(State(st): State<Shared>) -> ApiResult<Json<TopicsResponse>> {
    let store = st.store.clone();
    // With each log, the time of its oldest event held (one read at its base).
    let logs = blocking(move || {
        let logs = store.logs()?;
        let mut out = Vec::with_capacity(logs.len());
        for l in logs {
            let oldest = store
                .log_range(&l.author, &l.topic, l.base, 1)?
                .first()
                .map(|e| e.time());
            out.push((l, oldest));
        }
        Ok(out)
    })
    .await?;
    let mut topics: Vec<TopicJson> = Vec::new();
    for (l, oldest) in logs {
        if topics.last().is_none_or(|t| t.topic != l.topic.as_str()) {
            topics.push(TopicJson {
                topic: l.topic.to_string(),
                events: 0,
                pruned: 0,
                oldest_time: None,
                bytes: 0,
                pruned_bytes: 0,
                logs: Vec::new(),
            });
        }
        if let Some(t) = topics.last_mut() {
            t.events += l.held();
            t.pruned += l.base.0;
            t.bytes += l.bytes;
            t.pruned_bytes += l.pruned_bytes;
            let oldest = oldest.map(crate::api::time_json);
            if let Some(o) = oldest
                && t.oldest_time
                    .is_none_or(|t| (o.ms, o.logical) < (t.ms, t.logical))
            {
                t.oldest_time = Some(o);
            }
            t.logs.push(LogJson {
                author: l.author.to_string(),
                base: l.base.0,
                head_seq: l.head.seq.0,
                head_id: l.head.id.to_string(),
                head_time: crate::api::time_json(l.head.time),
                frozen_at: l.frozen_at.map(|s| s.0),
                oldest_time: oldest,
                bytes: l.bytes,
                pruned_bytes: l.pruned_bytes,
            });
        }
    }
    Ok(Json(TopicsResponse { topics }))
}

async fn forks(State(st): State<Shared>) -> ApiResult<Json<Vec<[EventJson; 2]>>> {
    let store = st.store.clone();
    let forks = blocking(move || store.forks()).await?;
    Ok(Json(
        forks
            .iter()
            .map(|f| {
                [
                    crate::api::event_json(&f.ours, None),
                    crate::api::event_json(&f.theirs, None),
                ]
            })
            .collect(),
    ))
}

async fn status(State(st): State<Shared>) -> ApiResult<Json<Status>> {
    let store = st.store.clone();
    let (logs, disk) = blocking(move || Ok((store.logs()?, store.disk_bytes()))).await?;
    let mut topics = 0u64;
    let mut last: Option<&Topic> = None;
    for l in &logs {
        if last != Some(&l.topic) {
            topics += 1;
            last = Some(&l.topic);
        }
    }
    let (queued, capacity) = st.ingest.queue();
    let docs = st.docs.stats().await.ok();
    let mqtt = mqtt_status(&st).await?;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        author: st.author.to_string(),
        data_dir: st.data_dir.display().to_string(),
        uptime_secs: st.started.elapsed().as_secs(),
        sync: st.sync.into(),
        events: st.store.next_offset().0,
        held: logs.iter().map(murmur_core::LogSummary::held).sum(),
        pruned: logs.iter().map(|l| l.base.0).sum(),
        topics,
        logs: logs.len() as u64,
        forks: logs.iter().filter(|l| l.frozen_at.is_some()).count() as u64,
        ingest: QueueJson { queued, capacity },
        followers: st.metrics.followers.get().max(0) as u64,
        disk_bytes: disk,
        resident_bytes: metrics::resident_bytes(),
        peer_id: st.net.as_ref().map(|(n, _)| n.peer_id().to_string()),
        peers: st.metrics.peers.get().max(0) as u64,
        sync_sessions: st.metrics.sync_sessions.get().max(0) as u64,
        docs,
        clock: Some(st.clock.status()),
        publishing_held: st.ingest.held(),
        store_problem: st.store_problem.get().cloned(),
        disk_budget_bytes: st.disk_budget,
        disk_full: st.failing.disk_full(),
        fleet: Some(match &st.fleet {
            None => "open".into(),
            Some(g) => match g.own() {
                Some(c) => format!("closed, admitted (roles: {})", c.body.roles.join(", ")),
                None => format!(
                    "closed, NOT admitted: peers refuse this node until `murmur fleet join CERT` (an admin runs `murmur fleet admit {}`)",
                    st.author
                ),
            },
        }),
        mqtt,
    }))
}

/// The MQTT part of the status, when the listener or a bridge is configured.
async fn mqtt_status(st: &Shared) -> ApiResult<Option<crate::api::MqttStatus>> {
    let m = &st.mqtt;
    if m.listen.is_none() && m.bridge.is_empty() {
        return Ok(None);
    }
    let views = st.consumers.list().await;
    let mut out = Vec::with_capacity(m.bridge.len());
    for b in &m.bridge {
        let (name, broker, pattern) = (&b.name, &b.broker, &b.pattern);
        let label = metrics::BridgeLabel {
            bridge: name.clone(),
        };
        let consumer = format!("{}{name}", crate::consumers::BRIDGE_PREFIX);
        let record = views
            .iter()
            .find(|v| v.name == consumer)
            .map(|v| v.record.clone());
        // A bridge that never connected has everything of its pattern to send.
        let record = record.unwrap_or_else(|| murmur_store::ConsumerRecord {
            pattern: Some(pattern.clone()),
            next: 0,
            created_ms: 0,
            acked_ms: 0,
        });
        let store = st.store.clone();
        let (pending, pending_exact) = blocking(move || {
            Ok(crate::consumers::Consumers::pending(
                &store, &record, 100_000,
            ))
        })
        .await?;
        out.push(crate::api::BridgeStatus {
            name: name.clone(),
            broker: broker.clone(),
            pattern: pattern.clone(),
            connected: st.metrics.bridge_connected.get_or_create(&label).get() == 1,
            forwarded: st.metrics.bridge_forwarded.get_or_create(&label).get(),
            pending,
            pending_exact,
        });
    }
    Ok(Some(crate::api::MqttStatus {
        listen: m.listen.map(|a| a.to_string()),
        connections: u64::try_from(st.metrics.mqtt_connections.get()).unwrap_or(0),
        bridges: out,
    }))
}

async fn metrics_text(State(st): State<Shared>) -> ApiResult<Response> {
    let store = st.store.clone();
    let (disk, mem, forks) = blocking(move || {
        let forks = store.forks()?.len();
        Ok((store.disk_bytes(), store.memory_bytes(), forks))
    })
    .await?;
    st.metrics.store_disk_bytes.set(disk as i64);
    st.metrics
        .store_disk_full
        .set(i64::from(st.failing.disk_full()));
    st.metrics.store_memory_bytes.set(mem as i64);
    st.metrics.forks.set(forks as i64);
    st.metrics
        .resident_bytes
        .set(metrics::resident_bytes() as i64);
    st.metrics
        .stored_events
        .set(st.store.next_offset().0 as i64);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &st.registry)
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
struct FollowQuery {
    pattern: Option<String>,
    from: Option<u64>,
    format: Option<String>,
    #[serde(default)]
    skip_pruned: bool,
    consumer: Option<String>,
    ack: Option<String>,
}

async fn follow_stream(
    State(st): State<Shared>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    q: Result<Query<FollowQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let pattern = q.pattern.as_deref().map(parse_pattern).transpose()?;
    let sse = match q.format.as_deref() {
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream")),
        Some("sse") => true,
        Some("ndjson") => false,
        Some(other) => {
            return Err(ApiError::bad(
                "bad_query",
                format!("unknown format {other:?}; use ndjson or sse"),
            ));
        }
    };
    // SSE clients resume with Last-Event-ID (the last offset they saw).
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let auto_ack = match q.ack.as_deref() {
        None | Some("explicit") => false,
        Some("auto") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "bad_query",
                format!("unknown ack {other:?}; use explicit or auto"),
            ));
        }
    };
    if q.consumer.is_none() && q.ack.is_some() {
        return Err(ApiError::bad(
            "bad_query",
            "ack applies to a named consumer: add consumer=NAME",
        ));
    }
    let end = st.store.next_offset();
    let asked_from = match q.from {
        Some(f) if f > end.0 => {
            return Err(refuse(
                &st,
                ApiError::bad(
                    "bad_offset",
                    format!(
                        "from = {f} is past the newest event here (next offset {})",
                        end.0
                    ),
                ),
            ));
        }
        Some(f) => Some(Offset(f)),
        // A consumer's position is its acknowledgements, not what an SSE client saw
        // last (EventSource sends Last-Event-ID by itself when it reconnects).
        None if q.consumer.is_some() => None,
        None => last_id
            .and_then(|l| l.checked_add(1))
            .map(|l| Offset(l.min(end.0))),
    };
    // A named consumer: where it starts and its pattern, checked before anything
    // changes (a refusal leaves its stream and its cursor alone).
    let (from, pattern) = match &q.consumer {
        Some(name) => {
            consumers::not_a_bridge(name).map_err(|e| refuse(&st, e))?;
            let (from, own, exists) = st
                .consumers
                .preview(name, asked_from, end)
                .await
                .map_err(|e| refuse(&st, e.into()))?;
            let pattern = match (pattern, own) {
                (None, Some(p)) if exists => Some(parse_pattern(&p)?),
                (p, _) => p,
            };
            (from, pattern)
        }
        None => (asked_from.unwrap_or(end), pattern),
    };
    if !q.skip_pruned {
        let (store, p) = (st.store.clone(), pattern.clone());
        if let Some(to) = blocking(move || follow::pruned_since(&store, p.as_ref(), from)).await? {
            return Err(refuse(
                &st,
                ApiError::new(
                    StatusCode::GONE,
                    "pruned",
                    format!(
                        "retention pruned events of this pattern at offsets from {} up to {} on this node: pass skip_pruned=true (murmur sub --skip-pruned) to read on without them",
                        from.0, to.0
                    ),
                ),
            ));
        }
    }
    let permit = st.followers.clone().try_acquire_owned().map_err(|_| {
        refuse(
            &st,
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_followers",
                "too many follow streams (api.max_followers)",
            ),
        )
    })?;
    // Nothing fails after the consumer is opened (its lease is released with the
    // stream).
    let (from, consumer) = match &q.consumer {
        Some(name) => {
            let lease = st
                .consumers
                .open(name, pattern.as_ref(), asked_from, end)
                .await
                .map_err(|e| refuse(&st, e.into()))?;
            let from = lease.from;
            (
                from,
                Some(follow::ConsumerFollow {
                    registry: st.consumers.clone(),
                    lease,
                    auto_ack,
                    sent_to: None,
                }),
            )
        }
        None => (from, None),
    };
    let body = follow::stream(follow::Follow {
        store: st.store.clone(),
        pattern,
        cursor: from,
        offsets: st.offsets.clone(),
        shutdown: st.shutdown.clone(),
        sse,
        metrics: st.metrics.clone(),
        permit,
        // Exempts the connection from the idle deadline while the stream lives (absent
        // when the router is served without connection info, as in unit tests).
        streaming: extensions
            .get::<axum::extract::ConnectInfo<listener::ConnMeta>>()
            .map(|c| c.0.streaming()),
        skip_pruned: q.skip_pruned,
        pruned_checked: Offset(0),
        consumer,
    });
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

fn network(st: &AppState) -> ApiResult<&(murmur_p2p::Handle, crate::replicate::Handle)> {
    st.net.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "p2p_disabled",
            "replication is off (p2p.enabled = false)",
        )
    })
}

async fn peers(State(st): State<Shared>) -> ApiResult<Json<PeersResponse>> {
    let (net, _) = network(&st)?;
    let peers = net.peers().await;
    let listen = net.addresses().await;
    Ok(Json(PeersResponse {
        peer_id: net.peer_id().to_string(),
        listen: listen.iter().map(ToString::to_string).collect(),
        peers: peers
            .into_iter()
            .map(|p| PeerJson {
                peer: p.peer.to_string(),
                addr: p.addr.to_string(),
                how: p.how.into(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                score: p.score,
                path: p.path.into(),
            })
            .collect(),
    }))
}

async fn dial(
    State(st): State<Shared>,
    body: Result<JsonBody<DialRequest>, ApiError>,
) -> ApiResult<StatusCode> {
    let JsonBody(req) = body?;
    let (net, _) = network(&st)?;
    let addr: murmur_p2p::Multiaddr = req.addr.parse().map_err(|e| {
        ApiError::bad(
            "invalid_addr",
            format!("{:?} is not a multiaddr: {e}", req.addr),
        )
    })?;
    net.dial(addr)
        .await
        .map_err(|e| ApiError::bad("dial_failed", e))?;
    Ok(StatusCode::ACCEPTED)
}

async fn sync_now(
    State(st): State<Shared>,
    body: Result<JsonBody<SyncRequest>, ApiError>,
) -> ApiResult<StatusCode> {
    let JsonBody(req) = body?;
    let (_, replicator) = network(&st)?;
    let peer = req
        .peer
        .map(|p| p.parse::<murmur_p2p::PeerId>())
        .transpose()
        .map_err(|e| ApiError::bad("invalid_peer", format!("peer id: {e}")))?;
    replicator.sync_now(peer).await.map_err(|_| stopping())?;
    Ok(StatusCode::ACCEPTED)
}

fn stopping() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the node is shutting down",
    )
}

async fn replication(State(st): State<Shared>) -> ApiResult<Json<crate::api::ReplicationJson>> {
    let (_, replicator) = network(&st)?;
    Ok(Json(replicator.status().await.map_err(|_| stopping())?))
}

fn retention_json(st: &AppState) -> crate::api::RetentionJson {
    let (rules, runtime) = st.rules.rules();
    crate::api::RetentionJson {
        rules: rules
            .into_iter()
            .map(|r| crate::api::RetentionRuleJson {
                pattern: r.pattern,
                max_age: r.max_age.map(|d| humantime::format_duration(d).to_string()),
                max_events_per_log: r.max_events_per_log,
                max_bytes: r.max_bytes,
                keep: r.keep,
            })
            .collect(),
        source: if runtime { "runtime" } else { "config" }.into(),
        max_disk_mb: st.disk_budget >> 20,
    }
}

async fn retention_list(State(st): State<Shared>) -> Json<crate::api::RetentionJson> {
    Json(retention_json(&st))
}

async fn retention_change(
    State(st): State<Shared>,
    body: Result<JsonBody<crate::api::RetentionRequest>, ApiError>,
) -> ApiResult<Json<crate::api::RetentionJson>> {
    let JsonBody(req) = body?;
    let rules = match (req.rules, req.reset) {
        (Some(_), true) | (None, false) => {
            return Err(ApiError::bad("bad_request", "give rules, or reset: true"));
        }
        (None, true) => None,
        (Some(rules), false) => Some(
            rules
                .into_iter()
                .map(|r| {
                    let max_age = r
                        .max_age
                        .as_deref()
                        .map(humantime::parse_duration)
                        .transpose()
                        .map_err(|e| {
                            ApiError::bad(
                                "bad_rule",
                                format!("{}: max_age: {e} (e.g. 7days, 12h)", r.pattern),
                            )
                        })?;
                    Ok(crate::config::RetentionRule {
                        pattern: r.pattern,
                        max_age,
                        max_events_per_log: r.max_events_per_log,
                        max_bytes: r.max_bytes,
                        keep: r.keep,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?,
        ),
    };
    let rules_handle = st.rules.clone();
    let outcome = tokio::task::spawn_blocking(move || rules_handle.set(rules))
        .await
        .map_err(|_| stopping())?;
    outcome.map_err(|e| match e {
        crate::retention::SetError::Invalid(e) => ApiError::bad("bad_rule", e),
        crate::retention::SetError::Io(e) => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e,
        ),
    })?;
    let now = retention_json(&st);
    tracing::info!(source = %now.source, rules = now.rules.len(), "retention rules changed");
    Ok(Json(now))
}

async fn interest(
    st: &AppState,
    add: Option<Pattern>,
    remove: Option<Pattern>,
) -> ApiResult<Json<crate::api::InterestResponse>> {
    let (_, replicator) = network(st)?;
    let patterns = replicator
        .interest(add, remove)
        .await
        .map_err(|_| stopping())?;
    Ok(Json(crate::api::InterestResponse { patterns }))
}

async fn interest_list(State(st): State<Shared>) -> ApiResult<Json<crate::api::InterestResponse>> {
    interest(&st, None, None).await
}

async fn interest_change(
    State(st): State<Shared>,
    body: Result<JsonBody<crate::api::InterestRequest>, ApiError>,
) -> ApiResult<Json<crate::api::InterestResponse>> {
    let JsonBody(req) = body?;
    if req.add.is_none() && req.remove.is_none() {
        return Err(ApiError::bad("bad_request", "give add or remove"));
    }
    let add = req.add.as_deref().map(parse_pattern).transpose()?;
    let remove = req.remove.as_deref().map(parse_pattern).transpose()?;
    if let Some(p) = remove.as_ref().filter(|p| p.as_str().starts_with('$')) {
        return Err(ApiError::bad(
            "reserved_topic",
            format!("{p} is the fleet's own: every node replicates it"),
        ));
    }
    if let Some(p) = &add {
        let Json(now) = interest(&st, None, None).await?;
        let removed = usize::from(remove.is_some());
        // The fleet's own patterns (`$fleet/…`) do not count: they have channels of
        // their own beside the interest's.
        let mine = now.patterns.iter().filter(|q| !q.starts_with('$')).count();
        if !now.patterns.iter().any(|q| q == p.as_str())
            && mine - removed.min(mine) >= murmur_core::channel::MAX_JOINED
        {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "too_many_patterns",
                format!(
                    "this node already replicates {} patterns, the most it can push live; \
                     remove one, or use a broader pattern (sensors/# covers sensors/a/temp and sensors/b/temp)",
                    mine
                ),
            ));
        }
    }
    interest(&st, add, remove).await
}
