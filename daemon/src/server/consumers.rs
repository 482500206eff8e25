//! `/v1/consumers`: named consumers' cursors (see [`crate::consumers`]).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use murmur_core::{Offset, ReadStore};

use super::{ApiError, ApiResult, JsonBody, Shared, blocking};
use crate::api::{AckRequest, ConsumerJson, ConsumersJson};
use crate::consumers::{Ack, ConsumerError, ConsumerView, Consumers};

/// Arrival index entries read to count pending events when listing: at most this many
/// in all (shared among the consumers), and at least [`ACK_SCAN`] for each.
const LIST_SCAN: usize = 4_000_000;
/// The same when answering an ack.
const ACK_SCAN: usize = 10_000;

impl From<ConsumerError> for ApiError {
    fn from(e: ConsumerError) -> Self {
        let msg = e.to_string();
        match e {
            ConsumerError::BadName(_) => ApiError::bad("bad_consumer", msg),
            ConsumerError::PastEnd { .. } => ApiError::bad("bad_offset", msg),
            ConsumerError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "no_consumer", msg),
            ConsumerError::OtherPattern { .. } => {
                ApiError::new(StatusCode::CONFLICT, "consumer_pattern", msg)
            }
            ConsumerError::TooMany(_) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_consumers", msg)
            }
            ConsumerError::Store(_) => ApiError::internal(msg),
        }
    }
}

async fn json(st: &Shared, views: Vec<ConsumerView>, scan: usize) -> ApiResult<Vec<ConsumerJson>> {
    let store = st.store.clone();
    blocking(move || {
        Ok(views
            .into_iter()
            .map(|v| {
                let (pending, pending_exact) = Consumers::pending(&store, &v.record, scan);
                ConsumerJson {
                    name: v.name,
                    pattern: v.record.pattern,
                    next: v.record.next,
                    pending,
                    pending_exact,
                    streaming: v.streaming,
                    created_ms: v.record.created_ms,
                    acked_ms: v.record.acked_ms,
                }
            })
            .collect())
    })
    .await
}

fn name(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    p.map(|Path(n)| n)
        .map_err(|e| ApiError::bad("bad_consumer", e.body_text()))
}

pub(super) async fn list(State(st): State<Shared>) -> ApiResult<Json<ConsumersJson>> {
    let views = st.consumers.list().await;
    Ok(Json(ConsumersJson {
        consumers: {
            let each = (LIST_SCAN / views.len().max(1)).max(ACK_SCAN);
            json(&st, views, each).await?
        },
        max: st.consumers_max,
    }))
}

pub(super) async fn get_one(
    State(st): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ConsumerJson>> {
    let n = name(p)?;
    crate::consumers::check_name(&n)?;
    let views: Vec<ConsumerView> = st
        .consumers
        .list()
        .await
        .into_iter()
        .filter(|v| v.name == n)
        .collect();
    if views.is_empty() {
        return Err(ConsumerError::NotFound(n).into());
    }
    let mut out = json(&st, views, LIST_SCAN).await?;
    out.pop()
        .map(Json)
        .ok_or_else(|| ApiError::internal("consumer vanished"))
}

/// Bridges' consumers are theirs: the API lists them but neither follows nor
/// acknowledges them (that would stop or move a bridge behind its back).
pub(super) fn not_a_bridge(name: &str) -> ApiResult<()> {
    if crate::consumers::is_bridge(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "bridge_consumer",
            format!(
                "consumer {name:?} is an MQTT bridge's position (names starting with {:?} are the bridges')",
                crate::consumers::BRIDGE_PREFIX
            ),
        ));
    }
    Ok(())
}

/// A bridge's consumer is deleted only once the bridge is gone from the config (and
/// the daemon restarted): deleting it under a running bridge would make it forward the
/// whole store again.
async fn not_owned(st: &Shared, name: &str) -> ApiResult<()> {
    if st.consumers.is_owned(name).await {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "bridge_consumer",
            format!(
                "consumer {name:?} is the position of a configured MQTT bridge: remove the bridge from the config and restart the daemon, then delete it"
            ),
        ));
    }
    Ok(())
}

pub(super) async fn delete(
    State(st): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let n = name(p)?;
    not_owned(&st, &n).await?;
    st.consumers.delete(&n).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn ack(
    State(st): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<AckRequest>,
) -> ApiResult<Json<ConsumerJson>> {
    let n = name(p)?;
    not_a_bridge(&n)?;
    let view = st
        .consumers
        .ack(
            &n,
            Ack::Through(Offset(req.offset)),
            st.store.next_offset(),
            None,
        )
        .await?;
    // An ack's answer counts less far: a consumer far behind acks often.
    let mut out = json(&st, vec![view], ACK_SCAN).await?;
    out.pop()
        .map(Json)
        .ok_or_else(|| ApiError::internal("consumer vanished"))
}
