//! Fleet health: this node's heartbeat, published every `fleet.heartbeat_interval` on
//! `$fleet/health`, and the fleet view built from everyone's (`GET /v1/fleet/nodes`).
//! What a heartbeat holds and what counts as a problem is [`murmur_core::health`].

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use murmur_core::health::{self, Heartbeat, PeerPath, TopicLag};
use murmur_core::{Payload, ReadStore, Topic};

use super::{ApiError, ApiResult, AppState, Shared, blocking, commit};
use crate::api::{FleetNodesJson, NodeJson};
use crate::ingest::PublishItem;

/// The heartbeat topic.
pub(crate) fn topic() -> ApiResult<Topic> {
    Topic::new(health::HEALTH_TOPIC).map_err(ApiError::internal)
}

/// The host name, for people (at most 64 bytes).
fn host_name() -> String {
    let mut h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    if h.len() > 64 {
        let mut end = 64;
        while !h.is_char_boundary(end) {
            end -= 1;
        }
        h.truncate(end);
    }
    h
}

/// This node's heartbeat now; `lag_history` holds the lags of the last ones (this one's
/// is appended).
async fn gather(
    st: &AppState,
    interval: Duration,
    lag_history: &mut Vec<u64>,
) -> ApiResult<Heartbeat> {
    let store = st.store.clone();
    let (disk_bytes, forks) =
        blocking(move || Ok((store.disk_bytes(), store.forks()?.len() as u64))).await?;
    let (mut peer_count, mut peers, mut lag, mut lag_topics) = (0, Vec::new(), 0, Vec::new());
    if let Some((net, replicator)) = &st.net {
        let connected = net.peers().await;
        peer_count = connected.len() as u64;
        peers = connected
            .iter()
            .take(health::MAX_PEERS)
            .map(|p| PeerPath {
                peer: p.peer.to_string(),
                path: p.path.into(),
            })
            .collect();
        if let Ok(r) = replicator.status().await {
            lag_topics = r
                .topics
                .iter()
                .map(|t| TopicLag {
                    topic: t.topic.clone(),
                    behind: t.peers.iter().map(|p| p.behind).max().unwrap_or(0),
                })
                .filter(|t| t.behind > 0)
                .collect();
            lag = lag_topics.iter().map(|t| t.behind).sum();
            lag_topics.sort_by(|a, b| b.behind.cmp(&a.behind).then(a.topic.cmp(&b.topic)));
            lag_topics.truncate(health::MAX_LAG_TOPICS);
        }
    }
    health::push_lag(lag_history, lag);
    let clock = st.clock.status();
    Ok(Heartbeat {
        version: env!("CARGO_PKG_VERSION").into(),
        host: host_name(),
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        uptime_secs: st.started.elapsed().as_secs(),
        events: st.store.next_offset().0,
        disk_bytes,
        disk_budget_bytes: st.disk_budget,
        memory_bytes: crate::metrics::resident_bytes(),
        peer_count,
        peers,
        lag,
        lag_history: lag_history.clone(),
        lag_topics,
        forks,
        clock_ahead_ms: clock.last_ms.saturating_sub(clock.wall_ms),
        cert_expires_ms: st
            .fleet
            .as_ref()
            .and_then(|g| g.own())
            .map(|c| c.body.expires_ms),
        store_problem: st.store_problem.get().is_some(),
    })
}

/// When a node's second heartbeat goes out, after its first at start.
const SECOND_BEAT: Duration = Duration::from_secs(5);

/// Publishes a heartbeat every `interval` (the first at once) until shutdown, and
/// keeps the fleet view's gauges current. `interval` zero: none are published; the
/// gauges still follow the others' heartbeats (every 30 s).
pub async fn run(st: Shared, interval: Duration) {
    let every = if interval.is_zero() {
        Duration::from_secs(30)
    } else {
        interval
    };
    let mut lag_history = Vec::new();
    let mut failing = false;
    // The first at once (the node is back), the second soon after (its peers connected,
    // its first rounds done), then one every interval.
    let mut next = Duration::ZERO;
    let mut sent = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = st.shutdown.cancelled() => return,
        }
        sent = sent.saturating_add(1);
        next = if sent == 1 {
            every.min(SECOND_BEAT)
        } else {
            every
        };
        if !interval.is_zero() {
            match publish(&st, interval, &mut lag_history).await {
                Ok(()) => failing = false,
                // Said once per failing spell (a held or full store refuses it).
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e.message, "cannot publish this node's heartbeat");
                }
                Err(_) => {}
            }
        }
        if let Ok(view) = view(&st).await {
            let stale = view.nodes.iter().filter(|n| n.state == "stale").count();
            let set = |state: &str, n: usize| {
                st.metrics
                    .fleet_nodes
                    .get_or_create(&crate::metrics::State {
                        state: state.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            set(
                "up",
                usize::try_from(view.total)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(stale),
            );
            set("stale", stale);
        }
    }
}

async fn publish(st: &AppState, interval: Duration, lag_history: &mut Vec<u64>) -> ApiResult<()> {
    let beat = gather(st, interval, lag_history).await?;
    let item = PublishItem {
        topic: topic()?,
        payload: Payload::Data {
            content_type: Some(health::CONTENT_TYPE.into()),
            data: beat.fitted().encode().into(),
        },
        key: None,
    };
    commit(st, vec![item], "heartbeat").await?;
    st.metrics.heartbeats_published.inc();
    Ok(())
}

/// Most nodes one fleet view lists (problems first); `total` counts them all.
pub const MAX_LISTED: usize = 5_000;

/// The fleet view: every node's latest heartbeat, assessed at this node's clock,
/// problems first (stale, then flagged), then by host and id. Nodes not heard from in
/// `fleet.forget_after` are left out (counted in `forgotten`): a decommissioned device
/// does not stay a problem forever.
async fn view(st: &AppState) -> ApiResult<FleetNodesJson> {
    let store = st.store.clone();
    let topic = topic()?;
    let beats = blocking(move || {
        let heads = store.version_vector(&topic)?;
        let mut out = Vec::with_capacity(heads.len());
        for (author, head) in heads.iter() {
            if let Some(ev) = store
                .log_range(author, &topic, head.seq, 1)?
                .into_iter()
                .next()
            {
                out.push(ev);
            }
        }
        Ok(out)
    })
    .await?;
    let now_ms = st.clock.wall_ms();
    let forget_ms = u64::try_from(st.forget_after.as_millis()).unwrap_or(u64::MAX);
    let mut forgotten = 0u64;
    let mut nodes: Vec<NodeJson> = Vec::with_capacity(beats.len());
    for ev in &beats {
        let murmur_core::Body::Data { data, .. } = ev.body() else {
            continue;
        };
        let Ok(beat) = Heartbeat::decode(data) else {
            continue;
        };
        let sent_ms = ev.time().ms;
        if now_ms.saturating_sub(sent_ms) > forget_ms && ev.author() != st.author {
            forgotten += 1;
            continue;
        }
        let a = health::assess(&beat, sent_ms, now_ms);
        nodes.push(NodeJson {
            node: ev.author().to_string(),
            host: beat.host.clone(),
            this_node: ev.author() == st.author,
            state: a.state.label().into(),
            seen_ms: sent_ms,
            seen_secs_ago: now_ms.saturating_sub(sent_ms) / 1000,
            flags: a.flags.iter().map(|f| (*f).to_owned()).collect(),
            // As the node wrote it: fields of newer versions stay.
            heartbeat: serde_json::from_slice(data).unwrap_or_default(),
        });
    }
    nodes.sort_by(|a, b| {
        (b.state == "stale", !b.flags.is_empty())
            .cmp(&(a.state == "stale", !a.flags.is_empty()))
            .then_with(|| a.host.cmp(&b.host))
            .then_with(|| a.node.cmp(&b.node))
    });
    let total = nodes.len() as u64;
    nodes.truncate(MAX_LISTED);
    Ok(FleetNodesJson {
        now_ms,
        interval_ms: 0,
        total,
        forgotten,
        nodes,
    })
}

/// `GET /v1/fleet/nodes`.
pub(super) async fn nodes(State(st): State<Shared>) -> ApiResult<Json<FleetNodesJson>> {
    let mut v = view(&st).await?;
    v.interval_ms = u64::try_from(st.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
    Ok(Json(v))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_heartbeat_topic_is_a_reserved_topic() {
        let t = murmur_core::Topic::new(murmur_core::health::HEALTH_TOPIC).unwrap();
        assert!(murmur_core::fleet::is_reserved(&t));
        assert_eq!(super::topic().unwrap(), t);
    }
}
