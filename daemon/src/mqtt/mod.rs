//! MQTT 3.1.1 for local applications: a listener that takes PUBLISH as signed events and
//! serves SUBSCRIBE from the store, and bridges that forward to upstream brokers
//! ([`bridge`]).
//!
//! The protocol's framing is rumqttc's codec (`mqttbytes::v4`); what the packets mean
//! is murmur's:
//! - PUBLISH: one event on the same topic, from this node's key. QoS 0 is queued and
//!   not answered; QoS 1's PUBACK goes out once the event is durable (the writer's group
//!   commit), in the order the publishes came; QoS 2's PUBREC likewise, a PUBLISH sent
//!   again on the same connection with the same packet id before PUBREL stores nothing
//!   twice, and PUBREL is answered with PUBCOMP. Publishes read together are one job
//!   (one WriteBatch, one WAL sync). A PUBLISH the node refuses (an invalid or reserved topic, a
//!   topic the fleet's policy does not grant, a payload over `api.max_payload_bytes`)
//!   closes the connection: MQTT 3.1.1 has no negative acknowledgement, and a silent
//!   drop would look like a delivery.
//! - SUBSCRIBE: filters are murmur patterns (`+`, `#`, and `$` topics only by name);
//!   data events from this node and from every other device are sent as they are
//!   stored, from the moment of the subscription, at the granted QoS (at most 1);
//!   document changes are not. The store is the buffer: a slow subscriber holds a page
//!   (about [`PAGE_BYTES`]) and [`DELIVERY_QUEUE`] packets, never a backlog.
//! - Sessions are not kept: every connection starts clean (CONNACK says no session),
//!   and what a subscriber misses while away is not queued for it. For that, use a
//!   named consumer (`/v1/follow?consumer=`), which is what the bridge does.
//! - Retained messages are not kept as such: the RETAIN flag is accepted and ignored.
//!   A topic under a `max_events_per_log = 1` retention rule holds each device's latest
//!   value, readable with `murmur log` or `/v1/events`.
//! - MQTT 5 and 3.1 clients get CONNACK "unacceptable protocol version" (use 3.1.1).
//! - With `mqtt.tls_cert` and `mqtt.tls_key` the listener speaks MQTT over TLS
//!   ([`tls_acceptor`]); beyond loopback a login is required, and TLS unless
//!   `mqtt.allow_plaintext`.
//! - One connection per client id: a new CONNECT with an id in use ends the older
//!   connection (MQTT-3.1.4-2), which then publishes its will.

pub mod bridge;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use murmur_core::{Offset, Pattern, Payload, ReadStore, Topic};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
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

/// Packets of deliveries waiting for a connection's socket (each up to an event's
/// size: this bounds what a slow subscriber holds, with one page).
const DELIVERY_QUEUE: usize = 16;
/// Aim of a delivery page's size, bytes (at least one event).
const PAGE_BYTES: usize = 1 << 20;
/// Most subscriptions of one connection.
const MAX_SUBSCRIPTIONS: usize = 100;

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
    /// The connection of each client id, so that a new one with the same id ends the
    /// older (MQTT-3.1.4-2): (its number, what ends it).
    pub clients: std::sync::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>,
    /// Numbers connections.
    pub connections: std::sync::atomic::AtomicU64,
    /// MQTT over TLS, when a certificate is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The TLS acceptor for `mqtt.tls_cert` and `mqtt.tls_key` (PEM files).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| {
            format!(
                "cannot read the certificates in mqtt.tls_cert = {}",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "mqtt.tls_cert = {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "cannot read the private key in mqtt.tls_key = {}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the MQTT certificate and key do not go together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
    let mut refused = 0u64;
    let mut last_said = tokio::time::Instant::now() - Duration::from_secs(1);
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
            // Said once a second at most, with how many were closed.
            refused += 1;
            if last_said.elapsed() >= Duration::from_secs(1) {
                tracing::warn!(%peer, refused, "mqtt: too many connections (mqtt.max_connections); closing new ones");
                refused = 0;
                last_said = tokio::time::Instant::now();
            }
            continue;
        };
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            ctx.state.metrics.mqtt_connections.inc();
            let _ = stream.set_nodelay(true);
            // One deadline for the whole CONNECT (and the TLS handshake before it).
            let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
            let ended = match &ctx.tls {
                None => connection(stream, &ctx, shutdown, deadline).await,
                Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(s)) => connection(s, &ctx, shutdown, deadline).await,
                    Ok(Err(e)) => Err(ConnError::Protocol(format!("TLS handshake: {e}"))),
                    Err(_) => Err(ConnError::Protocol("no TLS handshake within 10 s".into())),
                },
            };
            match ended {
                Ok(client) => tracing::debug!(%peer, client, "mqtt: client disconnected"),
                Err(e) => tracing::info!(%peer, error = %e, "mqtt: connection closed"),
            }
            ctx.state.metrics.mqtt_connections.dec();
            drop(permit);
        });
    }
}

fn codec(max_in: usize, max_out: usize) -> rumqttc::mqttbytes::v4::Codec {
    rumqttc::mqttbytes::v4::Codec {
        max_incoming_size: max_in,
        max_outgoing_size: max_out,
    }
}

/// The largest packet sent: an event of any size peers may hold, with its topic.
const MAX_OUT: usize = murmur_core::MAX_EVENT_BYTES + 64 * 1024;

/// What the first bytes of a connection say of its protocol.
enum Version {
    /// MQTT 3.1.1: served.
    V311,
    /// Another version (3.1, 5): answered with CONNACK "unacceptable protocol version".
    Other(String),
    /// Not a CONNECT, or not readable: the codec says what is wrong.
    Unknown,
}

/// What the CONNECT's protocol name and level say, from its first bytes; `None`: more
/// bytes are needed.
fn version_of(b: &[u8]) -> Option<Version> {
    let first = *b.first()?;
    if first != 0x10 {
        return Some(Version::Unknown);
    }
    // The remaining length: 1 to 4 bytes, the last without the high bit.
    let Some(len_end) = b.iter().skip(1).take(4).position(|x| x & 0x80 == 0) else {
        return (b.len() >= 5).then_some(Version::Unknown);
    };
    let at = 2 + len_end;
    let l = b.get(at..at + 2)?;
    let name_len = usize::from(u16::from_be_bytes([l[0], l[1]]));
    if name_len > 8 {
        return Some(Version::Unknown);
    }
    let name = b.get(at + 2..at + 2 + name_len)?;
    let level = *b.get(at + 2 + name_len)?;
    Some(match (name, level) {
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::Other("MQTT 5".into()),
        (b"MQIsdp", 3) => Version::Other("MQTT 3.1".into()),
        _ => Version::Unknown,
    })
}

/// Reads the start of the CONNECT into `head` (which then goes to the codec) until its
/// protocol name and level say what it is: rumqttc's 3.1.1 codec cannot read an MQTT 5
/// CONNECT (its properties) nor a 3.1 one, and a client refused without a CONNACK
/// cannot tell why.
async fn read_version<R: AsyncRead + Unpin>(
    rd: &mut R,
    head: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Version {
    loop {
        if let Some(v) = version_of(head) {
            return v;
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(head)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed or too slow: the codec reports it.
            _ => return Version::Unknown,
        }
    }
}

/// Writes packets to the socket, several at a time: answers (`ctl`) before deliveries.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut ctl: mpsc::Receiver<Packet>,
    mut deliveries: mpsc::Receiver<Packet>,
    stall: Duration,
) -> Result<(), ConnError> {
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut delivering = true;
    loop {
        let p = tokio::select! {
            biased;
            p = ctl.recv() => match p {
                Some(p) => p,
                None => break,
            },
            p = deliveries.recv(), if delivering => match p {
                Some(p) => p,
                None => {
                    delivering = false;
                    continue;
                }
            },
        };
        p.write(&mut buf, MAX_OUT)?;
        while buf.len() < 64 << 10 {
            match ctl.try_recv().or_else(|_| deliveries.try_recv()) {
                Ok(p) => {
                    p.write(&mut buf, MAX_OUT)?;
                }
                Err(_) => break,
            }
        }
        // Flushed: under TLS, a write can end in rustls's buffer, not the socket.
        tokio::time::timeout(stall, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await
        .map_err(|_| ConnError::Protocol("the client stopped reading".into()))??;
        buf.clear();
    }
    // Bounded: a TLS close waits for the socket to take its alert.
    let _ = tokio::time::timeout(stall, wr.shutdown()).await;
    Ok(())
}

/// Publishes in flight: their packet ids and QoS (the ones to answer), and what they
/// wait for.
struct Awaiting {
    answer: Vec<(u16, QoS)>,
    pending: crate::ingest::Pending,
}

/// Most publishes gathered into one job.
const GATHER_EVENTS: usize = 256;
/// Most payload bytes gathered into one job.
const GATHER_BYTES: usize = 1 << 20;

/// Stores `batch` as one job, and queues the answers its QoS 1 and 2 publishes need.
async fn publish_all(
    st: &AppState,
    batch: Vec<Publish>,
    unreleased: &mut std::collections::HashSet<u16>,
    acks: &mpsc::Sender<Awaiting>,
) -> Result<(), ConnError> {
    let mut items = Vec::with_capacity(batch.len());
    let mut answer = Vec::new();
    let mut resent = Vec::new();
    for p in batch {
        let (qos, pkid) = (p.qos, p.pkid);
        if qos == QoS::ExactlyOnce && !unreleased.insert(pkid) {
            // Sent again before PUBREL: stored once. Its PUBREC goes out after the
            // first one's (once that is durable); within this batch that one answers.
            if !answer.contains(&(pkid, qos)) {
                resent.push((pkid, qos));
            }
            continue;
        }
        items.push(item(st, p)?);
        if qos != QoS::AtMostOnce {
            answer.push((pkid, qos));
        }
    }
    let ended = |_| ConnError::Protocol("acknowledgements ended".into());
    if !items.is_empty() {
        let n = items.len() as u64;
        let pending = submit(st, items).await?;
        st.metrics.mqtt_published.inc_by(n);
        if !answer.is_empty() {
            acks.send(Awaiting { answer, pending })
                .await
                .map_err(ended)?;
        }
    }
    if !resent.is_empty() {
        let (done, pending) = tokio::sync::oneshot::channel();
        let _ = done.send(Ok(Vec::new()));
        acks.send(Awaiting {
            answer: resent,
            pending,
        })
        .await
        .map_err(ended)?;
    }
    Ok(())
}

/// Answers QoS 1 and 2 publishes in order, each once its event is durable; a publish
/// not stored ends the connection (through `ended`).
async fn ack_loop(
    mut rx: mpsc::Receiver<Awaiting>,
    out: mpsc::Sender<Packet>,
    ended: CancellationToken,
) {
    answer(&mut rx, &out).await;
    ended.cancel();
}

async fn answer(rx: &mut mpsc::Receiver<Awaiting>, out: &mpsc::Sender<Packet>) {
    while let Some(a) = rx.recv().await {
        match a.pending.await {
            Ok(Ok(_)) => {
                for (pkid, qos) in a.answer {
                    let p = match qos {
                        QoS::ExactlyOnce => Packet::PubRec(PubRec::new(pkid)),
                        _ => Packet::PubAck(PubAck::new(pkid)),
                    };
                    if out.send(p).await.is_err() {
                        return;
                    }
                }
            }
            // Not stored: no acknowledgement, and the connection ends (the client
            // sends it again on its next connection).
            Ok(Err(e)) => {
                tracing::warn!(error = %e, publishes = a.answer.len(), "mqtt: publishes were not stored; closing the connection");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Subscriptions of one connection.
type Subs = Arc<Vec<(String, Pattern, QoS)>>;

async fn connection<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    stream: S,
    ctx: &Listener,
    shutdown: CancellationToken,
    deadline: tokio::time::Instant,
) -> Result<String, ConnError> {
    let st = &ctx.state;
    let max_in = st.limits.max_payload + 64 * 1024;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut head = BytesMut::with_capacity(64);
    if let Version::Other(v) = read_version(&mut rd, &mut head, deadline).await {
        // CONNACK, return code 1: unacceptable protocol version.
        let _ = tokio::time::timeout(ctx.write_stall, async {
            wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await?;
            wr.shutdown().await
        })
        .await;
        return Err(ConnError::Refused(format!(
            "{v} is not served; connect with MQTT 3.1.1"
        )));
    }
    // The bytes read to see the version come first (a FramedRead would decode bytes
    // put in its buffer only once more arrive).
    let mut frames = FramedRead::new(
        std::io::Cursor::new(head.freeze()).chain(rd),
        codec(max_in, MAX_OUT),
    );
    let connect = match tokio::time::timeout_at(deadline, frames.next()).await {
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
    let (deliveries, deliveries_rx) = mpsc::channel::<Packet>(DELIVERY_QUEUE);
    let writer = tokio::spawn(write_loop(wr, out_rx, deliveries_rx, ctx.write_stall));
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
    // One connection per client id: this one ends an older one (which then publishes
    // its will, as a connection lost).
    let number = ctx
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kicked = CancellationToken::new();
    if !client.is_empty()
        && let Ok(mut clients) = ctx.clients.lock()
        && let Some((_, older)) = clients.insert(client.clone(), (number, kicked.clone()))
    {
        older.cancel();
    }
    let result = session(
        st,
        &connect,
        &mut frames,
        out,
        deliveries,
        writer,
        &shutdown,
        &kicked,
    )
    .await;
    if !client.is_empty()
        && let Ok(mut clients) = ctx.clients.lock()
        && clients.get(&client).is_some_and(|(n, _)| *n == number)
    {
        clients.remove(&client);
    }
    result.map(|()| client)
}

/// A connection after its CONNECT was accepted.
#[allow(clippy::too_many_arguments)]
async fn session<R: AsyncRead + Unpin>(
    st: &Arc<AppState>,
    connect: &rumqttc::mqttbytes::v4::Connect,
    frames: &mut FramedRead<R, rumqttc::mqttbytes::v4::Codec>,
    out: mpsc::Sender<Packet>,
    deliveries: mpsc::Sender<Packet>,
    writer: tokio::task::JoinHandle<Result<(), ConnError>>,
    shutdown: &CancellationToken,
    kicked: &CancellationToken,
) -> Result<(), ConnError> {
    let client = connect.client_id.as_str();
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
    // Ends the connection: a publish not stored, or the delivery task stopped.
    let ended = CancellationToken::new();
    let (acks, acks_rx) = mpsc::channel::<Awaiting>(ACK_QUEUE);
    let ack_task = tokio::spawn(ack_loop(acks_rx, out.clone(), ended.clone()));
    let (subs_tx, subs_rx) = watch::channel::<Subs>(Arc::new(Vec::new()));
    let mut delivery: Option<tokio::task::JoinHandle<()>> = None;
    // QoS 2 publishes stored and not yet released, by packet id (at most 65,535).
    let mut unreleased = std::collections::HashSet::<u16>::new();
    // The keep-alive: a client silent for 1.5 times it is gone.
    let idle = match connect.keep_alive {
        0 => Duration::from_secs(24 * 3600),
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    // A will is published when the connection is lost, not when the client said
    // DISCONNECT nor when the node stops.
    let mut lost = true;
    let result: Result<(), ConnError> = async {
        let mut held: Option<Packet> = None;
        loop {
            let packet = if let Some(p) = held.take() {
                p
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        lost = false;
                        return Ok(());
                    }
                    () = kicked.cancelled() => return Err(ConnError::Protocol("a new connection took this client id".into())),
                    () = ended.cancelled() => return Err(ConnError::Protocol("a publish was not stored, or delivery stopped".into())),
                    p = tokio::time::timeout(idle, frames.next()) => match p {
                        Err(_) => return Err(ConnError::Protocol("keep-alive expired".into())),
                        Ok(None) => return Ok(()),
                        Ok(Some(p)) => p?,
                    },
                }
            };
            match packet {
                Packet::Publish(p) => {
                    // Publishes already read go in the same job (one WriteBatch, one
                    // WAL sync for all); anything else read with them waits its turn.
                    let mut batch = vec![p];
                    let mut bytes = batch[0].payload.len();
                    while batch.len() < GATHER_EVENTS && bytes < GATHER_BYTES {
                        match frames.next().now_or_never() {
                            Some(Some(Ok(Packet::Publish(p)))) => {
                                bytes += p.payload.len();
                                batch.push(p);
                            }
                            Some(Some(Ok(other))) => {
                                held = Some(other);
                                break;
                            }
                            Some(Some(Err(e))) => return Err(e.into()),
                            Some(None) | None => break,
                        }
                    }
                    publish_all(st, batch, &mut unreleased, &acks).await?;
                }
                Packet::PubRel(r) => {
                    unreleased.remove(&r.pkid);
                    send(&out, Packet::PubComp(PubComp::new(r.pkid))).await?;
                }
                Packet::Subscribe(s) => {
                    let mut now: Vec<(String, Pattern, QoS)> = subs_rx.borrow().to_vec();
                    let mut codes = Vec::with_capacity(s.filters.len());
                    for f in s.filters {
                        let known = now.iter().any(|(path, _, _)| *path == f.path);
                        match Pattern::new(&f.path) {
                            Ok(_) if !known && now.len() >= MAX_SUBSCRIPTIONS => {
                                tracing::info!(client, filter = %f.path, "mqtt: subscription refused: {MAX_SUBSCRIPTIONS} already");
                                codes.push(SubscribeReasonCode::Failure);
                            }
                            Ok(p) => {
                                let q = if f.qos == QoS::AtMostOnce {
                                    QoS::AtMostOnce
                                } else {
                                    QoS::AtLeastOnce
                                };
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
                            st.clone(),
                            subs_rx.clone(),
                            deliveries.clone(),
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
                    lost = false;
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
    if lost
        && let Some(will) = &connect.last_will
        && let Ok(topic) = Topic::new(&will.topic)
        && !murmur_core::fleet::is_reserved(&topic)
        && st
            .fleet
            .as_ref()
            .is_none_or(|g| g.may_publish(&topic, false).is_ok())
        && will.message.len() <= st.limits.max_payload
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
    drop(deliveries);
    // Acknowledgements of what was stored still go out before the socket closes.
    drop(acks);
    let _ = ack_task.await;
    drop(out);
    let _ = writer.await;
    result
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

/// Checks one PUBLISH and makes it an item to store.
fn item(st: &AppState, p: Publish) -> Result<PublishItem, ConnError> {
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
    Ok(PublishItem {
        topic,
        payload: Payload::Data {
            content_type: None,
            data: p.payload,
        },
        key: None,
    })
}

/// Queues `items` as one job; waits for room if the ingest queue is full.
async fn submit(
    st: &AppState,
    items: Vec<PublishItem>,
) -> Result<crate::ingest::Pending, ConnError> {
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    loop {
        match st.ingest.submit(items.clone()) {
            Ok(pending) => return Ok(pending),
            // Backpressure: the client waits (it stops being read), nothing is dropped.
            Err(IngestError::QueueFull) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(ConnError::Refused(e.to_string())),
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
    st: Arc<AppState>,
    mut subs: watch::Receiver<Subs>,
    out: mpsc::Sender<Packet>,
    mut cursor: Offset,
    ended: CancellationToken,
) {
    let mut offsets = st.offsets.clone();
    let mut limit = 1usize;
    let mut pkid: u16 = 0;
    let mut next_pkid = move || {
        pkid = pkid.checked_add(1).unwrap_or(1);
        pkid
    };
    let result: Result<(), String> = async {
        loop {
            let now = subs.borrow_and_update().clone();
            let newest = offsets.borrow_and_update().events.clone();
            let page: Vec<(Offset, murmur_core::Event)> = if let Some((first, _)) = newest.first()
                && *first == cursor
                && let Some((last, _)) = newest.last()
            {
                cursor = Offset(last.0 + 1);
                newest.iter().cloned().collect()
            } else if cursor < st.store.next_offset() {
                let store = st.store.clone();
                let from = cursor;
                // One pattern: the store filters; several: the loop below does.
                let only = match now.as_slice() {
                    [(_, p, _)] => Some(p.clone()),
                    _ => None,
                };
                let read = tokio::task::spawn_blocking(move || {
                    store.arrivals(from, only.as_ref(), limit, PAGE_SCAN)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                cursor = read.next;
                // Pages of about PAGE_BYTES, whatever the event size.
                if !read.events.is_empty() {
                    let bytes: usize = read.events.iter().map(|(_, e)| e.bytes().len()).sum();
                    let per = (bytes / read.events.len()).max(1);
                    limit = (PAGE_BYTES / per).clamp(1, PAGE_EVENTS);
                }
                read.events
            } else {
                tokio::select! {
                    r = offsets.changed() => if r.is_err() { return Ok(()) },
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
                st.metrics.mqtt_delivered.inc();
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
