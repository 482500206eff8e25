//! MQTT 3.1.1 for local applications: a listener that takes PUBLISH as signed events and
//! serves SUBSCRIBE from the store, and bridges that forward to upstream brokers
//! ([`bridge`]).
//!
//! The protocol's framing is rumqttc's codec (`mqttbytes::v4`); what the packets mean
//! is murmur's:
//! - PUBLISH: one event on the same topic, from this node's key. QoS 0 is queued and
//!   not answered; QoS 1's PUBACK goes out once the event is durable (the writer's group
//!   commit), in the order the publishes came; QoS 2's PUBREC likewise, a resent
//!   PUBLISH with the same packet id before PUBREL stores nothing twice, and PUBREL is
//!   answered with PUBCOMP. A PUBLISH the node refuses (an invalid or reserved topic, a
//!   topic the fleet's policy does not grant, a payload over `api.max_payload_bytes`)
//!   closes the connection: MQTT 3.1.1 has no negative acknowledgement, and a silent
//!   drop would look like a delivery.
//! - SUBSCRIBE: filters are murmur patterns (`+`, `#`, and `$` topics only by name);
//!   events from this node and from every other device are sent as they are stored,
//!   from the moment of the subscription, at the granted QoS (at most 1). The store is
//!   the buffer: a slow subscriber holds one page, never a backlog.
//! - Sessions are not kept: every connection starts clean (CONNACK says no session),
//!   and what a subscriber misses while away is not queued for it. For that, use a
//!   named consumer (`/v1/follow?consumer=`), which is what the bridge does.
//! - Retained messages are not kept as such: the RETAIN flag is accepted and ignored.
//!   A topic under a `max_events_per_log = 1` retention rule holds each device's latest
//!   value, readable with `murmur log` or `/v1/events`.
//! - MQTT 5 clients are refused with "unacceptable protocol version" (use 3.1.1).

pub mod bridge;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use murmur_core::{Offset, Pattern, Payload, ReadStore, Topic};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::ingest::{IngestError, PublishItem};
use crate::server::AppState;

/// A client has this long to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets waiting for a connection's socket.
const OUT_QUEUE: usize = 256;
/// QoS 1 and 2 publishes waiting for their events to be durable, per connection.
const ACK_QUEUE: usize = 1024;
/// Events read from the store per page for subscribers.
const PAGE_EVENTS: usize = 256;
/// Offsets examined per page.
const PAGE_SCAN: usize = 8192;
/// How long a publish waits for room in a full ingest queue before the connection is
/// closed.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

/// What the listener needs.
pub struct Listener {
    /// The node.
    pub state: Arc<AppState>,
    /// Username and password clients must give, if any.
    pub login: Option<(String, String)>,
    /// Connection slots.
    pub slots: Arc<Semaphore>,
    /// Close a connection whose client does not read for this long.
    pub write_stall: Duration,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rumqttc::mqttbytes::Error> for ConnError {
    fn from(e: rumqttc::mqttbytes::Error) -> Self {
        ConnError::Protocol(e.to_string())
    }
}

/// Reads the password file's first line.
pub fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the MQTT password file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    anyhow::ensure!(
        !line.is_empty(),
        "the MQTT password file {} is empty",
        path.display()
    );
    Ok(line)
}

/// Accepts MQTT connections until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<Listener>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "mqtt: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "mqtt: too many connections (mqtt.max_connections); closing this one");
            continue;
        };
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            ctx.state.metrics.mqtt_connections.inc();
            match connection(stream, &ctx, shutdown).await {
                Ok(client) => tracing::debug!(%peer, client, "mqtt: client disconnected"),
                Err(e) => tracing::info!(%peer, error = %e, "mqtt: connection closed"),
            }
            ctx.state.metrics.mqtt_connections.dec();
            drop(permit);
        });
    }
}

fn codec(max: usize) -> rumqttc::mqttbytes::v4::Codec {
    rumqttc::mqttbytes::v4::Codec {
        max_incoming_size: max,
        max_outgoing_size: max,
    }
}

/// Writes packets from `rx` to the socket, several at a time.
async fn write_loop(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Packet>,
    max: usize,
    stall: Duration,
) -> Result<(), ConnError> {
    let mut buf = BytesMut::with_capacity(16 << 10);
    while let Some(p) = rx.recv().await {
        p.write(&mut buf, max)?;
        while buf.len() < 64 << 10 {
            match rx.try_recv() {
                Ok(p) => {
                    p.write(&mut buf, max)?;
                }
                Err(_) => break,
            }
        }
        tokio::time::timeout(stall, wr.write_all(&buf))
            .await
            .map_err(|_| ConnError::Protocol("the client stopped reading".into()))??;
        buf.clear();
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// A publish in flight: its packet id, what it waits for, and how to answer.
struct Awaiting {
    pkid: u16,
    qos: QoS,
    pending: crate::ingest::Pending,
}

/// Answers QoS 1 and 2 publishes in order, each once its event is durable.
async fn ack_loop(mut rx: mpsc::Receiver<Awaiting>, out: mpsc::Sender<Packet>) {
    while let Some(a) = rx.recv().await {
        match a.pending.await {
            Ok(Ok(_)) => {
                let p = match a.qos {
                    QoS::ExactlyOnce => Packet::PubRec(PubRec::new(a.pkid)),
                    _ => Packet::PubAck(PubAck::new(a.pkid)),
                };
                if out.send(p).await.is_err() {
                    return;
                }
            }
            // Not stored: no acknowledgement, and the connection ends (the client
            // sends it again on its next connection).
            Ok(Err(e)) => {
                tracing::warn!(error = %e, pkid = a.pkid, "mqtt: a publish was not stored; closing the connection");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Subscriptions of one connection.
type Subs = Arc<Vec<(String, Pattern, QoS)>>;

async fn connection(
    stream: TcpStream,
    ctx: &Listener,
    shutdown: CancellationToken,
) -> Result<String, ConnError> {
    let st = &ctx.state;
    let max = st.limits.max_payload + 64 * 1024;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, codec(max));
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, frames.next()).await {
        Err(_) => return Err(ConnError::Protocol("no CONNECT within 10 s".into())),
        Ok(None) => return Err(ConnError::Protocol("closed before CONNECT".into())),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Ok(other))) => {
            return Err(ConnError::Protocol(format!(
                "the first packet was {other:?}, not CONNECT"
            )));
        }
    };
    let (out, out_rx) = mpsc::channel::<Packet>(OUT_QUEUE);
    let writer = tokio::spawn(write_loop(wr, out_rx, max, ctx.write_stall));
    let refusal = if connect.protocol != Protocol::V4 {
        Some((
            ConnectReturnCode::RefusedProtocolVersion,
            "MQTT 5 is not served; connect with 3.1.1".to_owned(),
        ))
    } else if let Some((user, pass)) = &ctx.login
        && !connect.login.as_ref().is_some_and(|l| {
            constant_eq(l.username.as_bytes(), user.as_bytes())
                && constant_eq(l.password.as_bytes(), pass.as_bytes())
        })
    {
        Some((
            ConnectReturnCode::BadUserNamePassword,
            format!(
                "bad username or password from client {:?}",
                connect.client_id
            ),
        ))
    } else if connect.client_id.is_empty() && !connect.clean_session {
        Some((
            ConnectReturnCode::BadClientId,
            "an empty client id needs a clean session".to_owned(),
        ))
    } else {
        None
    };
    if let Some((code, why)) = refusal {
        let _ = out.send(Packet::ConnAck(ConnAck::new(code, false))).await;
        drop(out);
        let _ = writer.await;
        return Err(ConnError::Refused(why));
    }
    let client = connect.client_id.clone();
    // Every session is clean: nothing is kept for a client between connections.
    if out
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await
        .is_err()
    {
        return Err(ConnError::Protocol("closed during CONNACK".into()));
    }
    let (acks, acks_rx) = mpsc::channel::<Awaiting>(ACK_QUEUE);
    let ack_task = tokio::spawn(ack_loop(acks_rx, out.clone()));
    let (subs_tx, subs_rx) = watch::channel::<Subs>(Arc::new(Vec::new()));
    let mut delivery: Option<tokio::task::JoinHandle<()>> = None;
    let ended = CancellationToken::new();
    // QoS 2 publishes stored and not yet released, by packet id.
    let mut unreleased = std::collections::HashSet::<u16>::new();
    // The keep-alive: a client silent for 1.5 times it is gone.
    let idle = match connect.keep_alive {
        0 => Duration::from_secs(24 * 3600),
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    let mut clean_exit = false;
    let result: Result<(), ConnError> = async {
        loop {
            let packet = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = ended.cancelled() => return Err(ConnError::Protocol("the delivery task ended".into())),
                p = tokio::time::timeout(idle, frames.next()) => match p {
                    Err(_) => return Err(ConnError::Protocol("keep-alive expired".into())),
                    Ok(None) => return Ok(()),
                    Ok(Some(p)) => p?,
                },
            };
            match packet {
                Packet::Publish(p) => {
                    let (qos, pkid) = (p.qos, p.pkid);
                    if qos == QoS::ExactlyOnce && unreleased.contains(&pkid) {
                        // A resend before PUBREL: stored already.
                        send(&out, Packet::PubRec(PubRec::new(pkid))).await?;
                        continue;
                    }
                    let pending = submit(st, p).await?;
                    st.metrics.mqtt_published.inc();
                    match qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce | QoS::ExactlyOnce => {
                            if qos == QoS::ExactlyOnce {
                                unreleased.insert(pkid);
                            }
                            acks.send(Awaiting { pkid, qos, pending })
                                .await
                                .map_err(|_| ConnError::Protocol("acknowledgements ended".into()))?;
                        }
                    }
                }
                Packet::PubRel(r) => {
                    unreleased.remove(&r.pkid);
                    send(&out, Packet::PubComp(PubComp::new(r.pkid))).await?;
                }
                Packet::Subscribe(s) => {
                    let mut now: Vec<(String, Pattern, QoS)> = subs_rx.borrow().to_vec();
                    let mut codes = Vec::with_capacity(s.filters.len());
                    for f in s.filters {
                        match Pattern::new(&f.path) {
                            Ok(p) => {
                                let q = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                                now.retain(|(path, _, _)| *path != f.path);
                                now.push((f.path, p, q));
                                codes.push(SubscribeReasonCode::Success(q));
                            }
                            Err(e) => {
                                tracing::info!(client, filter = %f.path, error = %e, "mqtt: subscription refused");
                                codes.push(SubscribeReasonCode::Failure);
                            }
                        }
                    }
                    // Deliveries start at the newest event when the first
                    // subscription arrives.
                    if delivery.is_none() && !now.is_empty() {
                        delivery = Some(tokio::spawn(deliver(
                            st.clone_for_delivery(),
                            subs_rx.clone(),
                            out.clone(),
                            st.store.next_offset(),
                            ended.clone(),
                        )));
                    }
                    subs_tx.send_replace(Arc::new(now));
                    send(&out, Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
                }
                Packet::Unsubscribe(u) => {
                    let mut now: Vec<(String, Pattern, QoS)> = subs_rx.borrow().to_vec();
                    now.retain(|(path, _, _)| !u.topics.contains(path));
                    subs_tx.send_replace(Arc::new(now));
                    send(&out, Packet::UnsubAck(UnsubAck::new(u.pkid))).await?;
                }
                Packet::PingReq => send(&out, Packet::PingResp).await?,
                Packet::Disconnect => {
                    clean_exit = true;
                    return Ok(());
                }
                // Our own QoS 1 deliveries' acknowledgements: nothing is kept to resend.
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingResp => {}
                other => {
                    return Err(ConnError::Protocol(format!("unexpected {other:?}")));
                }
            }
        }
    }
    .await;
    // The will, when the client went away without DISCONNECT.
    if !clean_exit
        && let Some(will) = &connect.last_will
        && let Ok(topic) = Topic::new(&will.topic)
        && !murmur_core::fleet::is_reserved(&topic)
        && st
            .fleet
            .as_ref()
            .is_none_or(|g| g.may_publish(&topic, false).is_ok())
    {
        let item = PublishItem {
            topic,
            payload: Payload::Data {
                content_type: None,
                data: will.message.clone(),
            },
            key: None,
        };
        if let Err(e) = st.ingest.publish(vec![item]).await {
            tracing::warn!(client, error = %e, "mqtt: the client's will was not stored");
        }
    }
    if let Some(d) = delivery {
        d.abort();
    }
    // Acknowledgements of what was stored still go out before the socket closes.
    drop(acks);
    let _ = ack_task.await;
    drop(out);
    let _ = writer.await;
    result.map(|()| client)
}

async fn send(out: &mpsc::Sender<Packet>, p: Packet) -> Result<(), ConnError> {
    out.send(p)
        .await
        .map_err(|_| ConnError::Protocol("the socket writer ended".into()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (blake3::hash(a), blake3::hash(b));
    ha == hb // blake3::Hash compares in constant time
}

/// Checks and queues one PUBLISH; waits for room if the ingest queue is full.
async fn submit(st: &AppState, p: Publish) -> Result<crate::ingest::Pending, ConnError> {
    let topic = Topic::new(&p.topic)
        .map_err(|e| ConnError::Refused(format!("invalid topic {:?}: {e}", p.topic)))?;
    if murmur_core::fleet::is_reserved(&topic) {
        return Err(ConnError::Refused(format!(
            "topic {topic} is reserved for the node itself"
        )));
    }
    if let Some(g) = &st.fleet {
        g.may_publish(&topic, false)
            .map_err(|r| ConnError::Refused(r.to_string()))?;
    }
    if p.payload.len() > st.limits.max_payload {
        return Err(ConnError::Refused(format!(
            "payload of {} bytes is over api.max_payload_bytes ({})",
            p.payload.len(),
            st.limits.max_payload
        )));
    }
    let item = PublishItem {
        topic,
        payload: Payload::Data {
            content_type: None,
            data: p.payload,
        },
        key: None,
    };
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    loop {
        match st.ingest.submit(vec![item.clone()]) {
            Ok(pending) => return Ok(pending),
            // Backpressure: the client waits (it stops being read), nothing is dropped.
            Err(IngestError::QueueFull) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(ConnError::Refused(e.to_string())),
        }
    }
}

/// What delivery needs of the node.
pub struct DeliveryCtx {
    store: Arc<murmur_store::RocksStore>,
    offsets: watch::Receiver<crate::ingest::Committed>,
    metrics: crate::metrics::Metrics,
}

impl AppState {
    fn clone_for_delivery(&self) -> DeliveryCtx {
        DeliveryCtx {
            store: self.store.clone(),
            offsets: self.offsets.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The subscription's QoS for `topic`: the highest of the filters that match it.
fn matching(subs: &Subs, topic: &str) -> Option<QoS> {
    subs.iter()
        .filter(|(_, p, _)| p.matches_str(topic))
        .map(|(_, _, q)| *q)
        .max_by_key(|q| *q as u8)
}

/// Sends a connection's subscribers every matching data event stored from `cursor` on.
async fn deliver(
    mut ctx: DeliveryCtx,
    mut subs: watch::Receiver<Subs>,
    out: mpsc::Sender<Packet>,
    mut cursor: Offset,
    ended: CancellationToken,
) {
    let mut pkid: u16 = 0;
    let mut next_pkid = move || {
        pkid = pkid.checked_add(1).unwrap_or(1);
        pkid
    };
    let result: Result<(), String> = async {
        loop {
            let now = subs.borrow_and_update().clone();
            let newest = ctx.offsets.borrow_and_update().events.clone();
            let page: Vec<(Offset, murmur_core::Event)> = if let Some((first, _)) = newest.first()
                && *first == cursor
                && let Some((last, _)) = newest.last()
            {
                cursor = Offset(last.0 + 1);
                newest.iter().cloned().collect()
            } else if cursor < ctx.store.next_offset() {
                let store = ctx.store.clone();
                let from = cursor;
                let read = tokio::task::spawn_blocking(move || {
                    store.arrivals(from, None, PAGE_EVENTS, PAGE_SCAN)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                cursor = read.next;
                read.events
            } else {
                tokio::select! {
                    r = ctx.offsets.changed() => if r.is_err() { return Ok(()) },
                    r = subs.changed() => if r.is_err() { return Ok(()) },
                }
                continue;
            };
            for (_, ev) in page {
                let murmur_core::Body::Data { data, .. } = ev.body() else {
                    continue;
                };
                let Some(qos) = matching(&now, ev.topic().as_str()) else {
                    continue;
                };
                let mut p = Publish::from_bytes(
                    ev.topic().as_str(),
                    qos,
                    bytes::Bytes::copy_from_slice(data),
                );
                if qos != QoS::AtMostOnce {
                    p.pkid = next_pkid();
                }
                out.send(Packet::Publish(p))
                    .await
                    .map_err(|_| "the socket writer ended".to_string())?;
                ctx.metrics.mqtt_delivered.inc();
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::info!(error = %e, "mqtt: delivery ended");
    }
    ended.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_matching_qos_wins_and_dollar_topics_need_their_name() {
        let subs: Subs = Arc::new(vec![
            ("a/#".into(), Pattern::new("a/#").unwrap(), QoS::AtMostOnce),
            ("a/+".into(), Pattern::new("a/+").unwrap(), QoS::AtLeastOnce),
            ("#".into(), Pattern::new("#").unwrap(), QoS::AtMostOnce),
        ]);
        assert_eq!(matching(&subs, "a/b"), Some(QoS::AtLeastOnce));
        assert_eq!(matching(&subs, "a/b/c"), Some(QoS::AtMostOnce));
        assert_eq!(matching(&subs, "z"), Some(QoS::AtMostOnce));
        assert_eq!(matching(&subs, "$fleet/health"), None);
    }

    #[test]
    fn passwords_compare_whole() {
        assert!(constant_eq(b"secret", b"secret"));
        assert!(!constant_eq(b"secret", b"secret2"));
        assert!(!constant_eq(b"", b"x"));
    }
}
