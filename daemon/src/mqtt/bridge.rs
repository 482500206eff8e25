//! A bridge: forwards the events of one pattern to an upstream MQTT broker at QoS 1,
//! at least once, in this node's arrival order (so each log's events in their order).
//!
//! Its position is a named consumer, `bridge.NAME` (see [`crate::consumers`]): an event
//! is acknowledged to the consumer once the broker has acknowledged it and every event
//! before it, so after a restart of the daemon, or an outage of the broker, the bridge
//! resumes at the first event the broker may not have; at most the window in flight
//! (`inflight`) is sent twice. A new bridge forwards what the store already holds of
//! its pattern, then what comes.
//!
//! The MQTT client is rumqttc's; its event loop runs in a task of its own, so reading
//! the store never stalls it. On any error the connection is dropped whole and made
//! again after a backoff (0.5 s doubling to 10 s), resuming from the consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use murmur_core::{Offset, Pattern, ReadStore};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::BridgeConfig;
use crate::consumers::Ack;
use crate::metrics::BridgeLabel;
use crate::server::AppState;

/// Offsets examined per store read.
const PAGE_SCAN: usize = 8192;
/// Most payload bytes sent and not yet acknowledged by the broker (besides `inflight`).
const WINDOW_BYTES: usize = 8 << 20;
/// Acknowledge the consumer at least this often while events stream (and after every
/// half window): a kill of the daemon sends again at most the window and half of one.
const ACK_EVERY: Duration = Duration::from_millis(10);

/// Why a connection to the broker ended.
enum End {
    /// Stop the bridge (shutdown, or its consumer was deleted).
    Stop,
    /// Connect again after a backoff.
    Retry(String),
}

/// What a bridge's connections share.
struct Bridge {
    state: Arc<AppState>,
    cfg: BridgeConfig,
    /// Its consumer, `bridge.NAME`.
    consumer: String,
    pattern: Pattern,
    label: BridgeLabel,
    client_id: String,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    shutdown: CancellationToken,
}

/// The TLS client configuration of a bridge: the broker's certificate checked against
/// `ca_file` (PEM), or the system's roots.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read the bridge's ca_file {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("a bad certificate in {}", path.display()))?;
                roots.add(cert).with_context(|| {
                    format!("a certificate in {} is not a usable CA", path.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no CA certificate to check the broker's with (set ca_file)"
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs the bridge until `shutdown`.
pub async fn run(
    state: Arc<AppState>,
    cfg: BridgeConfig,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    shutdown: CancellationToken,
) {
    let consumer = format!("bridge.{}", cfg.name);
    let label = BridgeLabel {
        bridge: cfg.name.clone(),
    };
    let Ok(pattern) = Pattern::new(&cfg.pattern) else {
        // The config was validated at start.
        return;
    };
    let client_id = cfg.client_id.clone().unwrap_or_else(|| {
        let id = state.author.to_string();
        format!("murmur-{}-{}", &id[..id.len().min(12)], cfg.name)
    });
    let mut backoff = Duration::from_millis(500);
    tracing::info!(
        bridge = cfg.name,
        broker = cfg.broker,
        pattern = cfg.pattern,
        "mqtt bridge starting"
    );
    let b = Bridge {
        state: state.clone(),
        cfg: cfg.clone(),
        consumer,
        pattern,
        label: label.clone(),
        client_id,
        password,
        tls,
        shutdown: shutdown.clone(),
    };
    loop {
        let end = b.session(&mut backoff).await;
        state.metrics.bridge_connected.get_or_create(&label).set(0);
        match end {
            End::Stop => return,
            End::Retry(why) => {
                tracing::warn!(bridge = cfg.name, broker = cfg.broker, error = why, retry_in = ?backoff, "mqtt bridge: connection to the broker ended");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Bridge {
    /// One connection to the broker, from the consumer's cursor until an error or a stop.
    async fn session(&self, backoff: &mut Duration) -> End {
        let (cfg, client_id, password) =
            (&self.cfg, self.client_id.as_str(), self.password.as_deref());
        let Some((host, port)) = cfg
            .broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        else {
            return End::Stop;
        };
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(cfg.keep_alive)
            .set_clean_session(true)
            .set_inflight(cfg.inflight)
            // Events as large as peers may hold (murmur_core::MAX_EVENT_BYTES) go up whole.
            .set_max_packet_size(super::MAX_OUT, super::MAX_OUT)
            .set_request_channel_capacity(usize::from(cfg.inflight) + 16);
        if let Some(tls) = &self.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        if let (Some(u), Some(p)) = (&cfg.username, password) {
            opts.set_credentials(u.clone(), p.to_owned());
        }
        let (client, mut eventloop) = AsyncClient::new(opts, usize::from(cfg.inflight) + 16);
        // The event loop in a task of its own; its events come here.
        let (ev_tx, mut events) = mpsc::channel::<Result<Event, String>>(256);
        let pump = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await.map_err(|e| e.to_string());
                let failed = ev.is_err();
                if ev_tx.send(ev).await.is_err() || failed {
                    return;
                }
            }
        });
        let end = self.forward(&client, &mut events, backoff).await;
        pump.abort();
        let _ = client.try_disconnect();
        end
    }

    /// Waits for the broker's CONNACK, opens the consumer, and runs the window.
    async fn forward(
        &self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, String>>,
        backoff: &mut Duration,
    ) -> End {
        let (state, cfg, consumer, pattern, shutdown) = (
            &self.state,
            &self.cfg,
            self.consumer.as_str(),
            &self.pattern,
            &self.shutdown,
        );
        let label = &self.label;
        // Connected first: nothing is read from the store for a broker that is away.
        let connected = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match events.recv().await {
                    Some(Ok(Event::Incoming(Incoming::ConnAck(a)))) => {
                        return if a.code == rumqttc::ConnectReturnCode::Success {
                            Ok(())
                        } else {
                            Err(format!("the broker refused the connection: {:?}", a.code))
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err("the event loop ended".into()),
                }
            }
        });
        let connected = tokio::select! {
            () = shutdown.cancelled() => return End::Stop,
            c = connected => c,
        };
        match connected {
            Err(_) => return End::Retry("no CONNACK within 15 s".into()),
            Ok(Err(e)) => return End::Retry(e),
            Ok(Ok(())) => {}
        }
        *backoff = Duration::from_millis(500);
        state.metrics.bridge_connected.get_or_create(label).set(1);
        let registry = state.consumers.clone();
        let fresh = !registry.exists(consumer).await;
        let lease = match registry
            .open(
                consumer,
                Some(pattern),
                fresh.then_some(Offset(0)),
                state.store.next_offset(),
            )
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(bridge = cfg.name, error = %e, "mqtt bridge: cannot open its consumer; the bridge stops");
                return End::Stop;
            }
        };
        tracing::info!(
            bridge = cfg.name,
            from = lease.from.0,
            "mqtt bridge connected; forwarding"
        );
        let end = self.window(client, events, &lease).await;
        registry.close(&lease).await;
        end
    }

    /// The sending window: reads the store while fewer than `inflight` events wait for the
    /// broker, and acknowledges the consumer as the broker acknowledges in order.
    async fn window(
        &self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, String>>,
        lease: &crate::consumers::Lease,
    ) -> End {
        let (state, cfg, consumer, pattern, shutdown, label) = (
            &self.state,
            &self.cfg,
            self.consumer.as_str(),
            &self.pattern,
            &self.shutdown,
            &self.label,
        );
        let limit = usize::from(cfg.inflight);
        let mut offsets = state.offsets.clone();
        let mut cursor = lease.from;
        // Sent, in order, with whether the broker acknowledged each.
        let mut order: VecDeque<(Offset, bool)> = VecDeque::new();
        // Sent, waiting for their packet id from the event loop.
        let mut unassigned: VecDeque<Offset> = VecDeque::new();
        let mut inflight: HashMap<u16, Offset> = HashMap::new();
        let mut to_ack: Option<Offset> = None;
        let mut since_ack = 0usize;
        let mut last_ack = tokio::time::Instant::now();
        // Payload bytes in flight, and the events per read that keep a read near WINDOW_BYTES.
        let mut in_flight_bytes = 0usize;
        let mut sizes: HashMap<Offset, usize> = HashMap::new();
        let mut per_read = 1usize;
        let mut pruned_checked = Offset(0);
        loop {
            // Marked seen before the store is read: a commit after this wakes the wait.
            offsets.borrow_and_update();
            // Events retention pruned before the bridge sent them cannot be sent: said
            // loudly, once per pass that pruned them.
            let pruned_now = state.store.pruned_to();
            if pruned_now > pruned_checked && pruned_now > cursor {
                let (store, p, from) = (state.store.clone(), pattern.clone(), cursor);
                if let Ok(Ok(Some(to))) = tokio::task::spawn_blocking(move || {
                    crate::follow::pruned_since(&store, Some(&p), from)
                })
                .await
                {
                    tracing::warn!(
                        bridge = cfg.name,
                        from = cursor.0,
                        to = to.0,
                        "mqtt bridge: retention pruned events of its pattern before they were forwarded; they are skipped"
                    );
                    state.metrics.bridge_skipped.get_or_create(label).inc();
                }
                pruned_checked = pruned_now;
            }
            // Fill the window from the store.
            while order.len() < limit
                && in_flight_bytes < WINDOW_BYTES
                && cursor < state.store.next_offset()
            {
                let (store, p, from, room) = (
                    state.store.clone(),
                    pattern.clone(),
                    cursor,
                    (limit - order.len()).min(per_read),
                );
                let page = match tokio::task::spawn_blocking(move || {
                    store.arrivals(from, Some(&p), room, PAGE_SCAN)
                })
                .await
                {
                    Ok(Ok(page)) => page,
                    Ok(Err(e)) => return End::Retry(format!("store read: {e}")),
                    Err(e) => return End::Retry(format!("store read: {e}")),
                };
                for (off, ev) in &page.events {
                    // Documents' automerge changes mean nothing to an MQTT broker.
                    let murmur_core::Body::Data { data, .. } = ev.body() else {
                        continue;
                    };
                    let topic = format!("{}{}", cfg.remote_prefix, ev.topic());
                    if let Err(e) =
                        client.try_publish(topic, QoS::AtLeastOnce, false, data.to_vec())
                    {
                        return End::Retry(format!("queueing a publish: {e}"));
                    }
                    unassigned.push_back(*off);
                    order.push_back((*off, false));
                    in_flight_bytes += data.len();
                    sizes.insert(*off, data.len());
                }
                if !page.events.is_empty() {
                    let bytes: usize = page.events.iter().map(|(_, e)| e.bytes().len()).sum();
                    per_read = (WINDOW_BYTES / 4 / (bytes / page.events.len()).max(1)).max(1);
                }
                cursor = page.next;
            }
            // Acknowledge the consumer: what the broker has in order, every half window or
            // ACK_EVERY, and whenever the window is empty.
            if let Some(off) = to_ack
                && (order.is_empty() || since_ack * 2 >= limit || last_ack.elapsed() >= ACK_EVERY)
            {
                if let Err(e) = state
                    .consumers
                    .ack(
                        consumer,
                        Ack::Through(off),
                        state.store.next_offset(),
                        Some(lease.stream),
                    )
                    .await
                {
                    tracing::warn!(bridge = cfg.name, error = %e, "mqtt bridge: cannot record its position");
                }
                to_ack = None;
                since_ack = 0;
                last_ack = tokio::time::Instant::now();
            }
            let room = order.len() < limit && in_flight_bytes < WINDOW_BYTES;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Stop,
                () = lease.ended.cancelled() => {
                    tracing::info!(bridge = cfg.name, "mqtt bridge: its consumer was deleted or taken; stopping");
                    return End::Stop;
                }
                ev = events.recv() => match ev {
                    None => return End::Retry("the event loop ended".into()),
                    Some(Err(e)) => return End::Retry(e),
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(off) = unassigned.pop_front() {
                            inflight.insert(pkid, off);
                        }
                    }
                    Some(Ok(Event::Incoming(Incoming::PubAck(a)))) => {
                        if let Some(off) = inflight.remove(&a.pkid)
                            && let Some(slot) = order.iter_mut().find(|(o, _)| *o == off)
                        {
                            slot.1 = true;
                            while let Some((o, true)) = order.front().copied() {
                                order.pop_front();
                                in_flight_bytes = in_flight_bytes.saturating_sub(sizes.remove(&o).unwrap_or(0));
                                to_ack = Some(o);
                                since_ack += 1;
                                state.metrics.bridge_forwarded.get_or_create(label).inc();
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                },
                changed = offsets.changed(), if room => {
                    if changed.is_err() {
                        return End::Stop;
                    }
                }
                // An ack held back by ACK_EVERY goes out even if nothing else happens.
                () = tokio::time::sleep(ACK_EVERY), if to_ack.is_some() => {}
            }
        }
    }
}
