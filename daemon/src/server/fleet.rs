//! `/v1/fleet`: membership, the node's certificate, and policy entries.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use murmur_core::fleet::{Entry, Refusal};

use super::{ApiError, ApiResult, JsonBody, Shared, commit, published};
use crate::api::{FleetChange, FleetJson, JoinRequest, PolicyRequest};
use crate::ingest::PublishItem;

fn guard(st: &Shared) -> ApiResult<&crate::fleet::Guard> {
    st.fleet.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "open_fleet",
            "this node runs an open fleet (fleet.open = true in its config): there is no membership to change. Make a fleet with `murmur fleet init` and set fleet.root in place of fleet.open",
        )
    })
}

/// The 403 for a publish the fleet's policy refuses, naming what is missing.
pub(super) fn forbidden(r: &Refusal) -> ApiError {
    let hint = match r {
        Refusal::NoGrant { .. } => {
            " (an admin can grant it: `murmur fleet grant ROLE PATTERN`, or admit this node with --topic PATTERN)"
        }
        Refusal::NotAMember(_) => " (this node has no fleet certificate: `murmur fleet join CERT`)",
        _ => "",
    };
    match r {
        Refusal::Reserved { .. } => ApiError::bad("reserved_topic", r.to_string()),
        _ => ApiError::new(StatusCode::FORBIDDEN, "not_permitted", format!("{r}{hint}")),
    }
}

pub(super) async fn status(State(st): State<Shared>) -> ApiResult<Json<FleetJson>> {
    let Some(g) = &st.fleet else {
        return Ok(Json(FleetJson {
            mode: "open".into(),
            node: st.author.to_string(),
            ..FleetJson::default()
        }));
    };
    let connected: Vec<murmur_p2p::PeerId> = match &st.net {
        Some((net, _)) => net.peers().await.into_iter().map(|p| p.peer).collect(),
        None => Vec::new(),
    };
    Ok(Json(g.status(&connected)))
}

/// Publishes the node's own certificate on the policy topic if it is not there yet.
pub(crate) async fn publish_own(st: &super::AppState) -> ApiResult<Option<crate::api::Published>> {
    let Some(g) = &st.fleet else { return Ok(None) };
    let Some(entry) = g.own_entry() else {
        return Ok(None);
    };
    publish_entry(st, &entry).await.map(Some)
}

/// Publishes a policy entry on the policy topic, durably.
async fn publish_entry(st: &super::AppState, entry: &Entry) -> ApiResult<crate::api::Published> {
    let item = PublishItem {
        topic: crate::fleet::policy_topic(),
        payload: entry.payload(),
        key: None,
    };
    let done = commit(st, vec![item], "fleet").await?;
    done.first()
        .map(published)
        .ok_or_else(|| ApiError::internal("empty commit"))
}

pub(super) async fn join(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> ApiResult<Json<FleetChange>> {
    let g = guard(&st)?;
    let cert = crate::fleet::cert_from_text(&req.cert).map_err(|e| ApiError::bad("bad_cert", e))?;
    let roles = cert.body.roles.join(", ");
    let new = g.join(cert).map_err(|e| ApiError::bad("bad_cert", e))?;
    if let Some((net, _)) = &st.net {
        net.send(murmur_p2p::Command::SetCredentials(g.credentials()))
            .await;
    }
    let event = publish_own(&st).await?;
    let message = if new {
        format!(
            "admitted to fleet {} with roles [{roles}]; peers admit this node from its next connection",
            g.root()
        )
    } else {
        "this certificate was installed already".into()
    };
    tracing::info!(roles, new, "fleet certificate installed");
    Ok(Json(FleetChange { message, event }))
}

pub(super) async fn policy(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<PolicyRequest>,
) -> ApiResult<Json<FleetChange>> {
    let g = guard(&st)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(req.entry_b64.as_bytes())
        .map_err(|e| ApiError::bad("bad_base64", format!("entry_b64: {e}")))?;
    let entry = Entry::decode(&bytes).map_err(|e| ApiError::bad("bad_entry", e.to_string()))?;
    g.check_entry(&entry)
        .map_err(|e| ApiError::bad("bad_entry", e))?;
    if g.own().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_admitted",
            "this node has no fleet certificate: its policy events would be refused by every peer. Join first (`murmur fleet join CERT`), or hand the entry to an admitted node",
        ));
    }
    let message = match &entry {
        Entry::Member(c) => format!("certificate of {} published", c.body.subject),
        Entry::Rule(r) => match &r.body.rule {
            murmur_core::fleet::Rule::Grant { role, topics, .. } => {
                format!("grant for role {role} on [{}] published", topics.join(", "))
            }
            murmur_core::fleet::Rule::Revoke { subject, .. } => {
                format!(
                    "revocation of {subject} published; every node that learns of it drops the node"
                )
            }
        },
    };
    let event = publish_entry(&st, &entry).await?;
    Ok(Json(FleetChange {
        message,
        event: Some(event),
    }))
}
