//! The task that owns the swarm, and the handle that talks to it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad, mdns, ping, request_response};
use murmur_core::sync::Message;
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::behaviour::{self, Behaviour, BehaviourEvent, Config};

/// The daemon's verdict on a gossiped event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: forward it.
    Accept,
    /// Invalid (bad signature, malformed): do not forward, penalise the sender.
    Reject,
    /// Valid but not useful (duplicate, not interested): do not forward, no penalty.
    Ignore,
}

/// What the daemon asks of the network.
#[derive(Debug)]
pub enum Command {
    /// Dial an address.
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    /// Send a sync message to a connected peer.
    Sync {
        /// The peer.
        peer: PeerId,
        /// The message.
        msg: Message,
    },
    /// Gossip a run on a channel.
    Publish {
        /// The channel's gossipsub topic.
        topic: String,
        /// The run's bytes.
        data: Vec<u8>,
    },
    /// Join a channel (its gossipsub topic), with murmur's scoring for it.
    Subscribe(String),
    /// Leave a channel.
    Unsubscribe(String),
    /// Report the verdict on a gossiped message.
    Validate {
        /// Its id.
        id: gossipsub::MessageId,
        /// The peer that forwarded it.
        source: PeerId,
        /// The verdict.
        verdict: Verdict,
    },
    /// Announce a rendezvous key (a Kademlia provider record), kept until
    /// [`Command::Unprovide`].
    Provide(String),
    /// Stop announcing a rendezvous key.
    Unprovide(String),
    /// Look up the providers of a rendezvous key and dial up to `want` of those not
    /// connected (found by `topic`, as `murmur peers` shows).
    FindPeers {
        /// The key.
        key: String,
        /// Most peers to dial.
        want: usize,
    },
    /// Connected peers.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Our listen addresses.
    Addresses(oneshot::Sender<Vec<Multiaddr>>),
    /// The peers in the Kademlia routing table.
    RoutingTable(oneshot::Sender<Vec<PeerId>>),
    /// Stop the event loop (at shutdown; other handles may still be alive).
    Stop,
    /// Admit a peer held back for its credentials (see [`Config::admission`]): it
    /// becomes a peer ([`Event::Connected`]).
    ///
    /// [`Config::admission`]: crate::Config::admission
    Admit(PeerId),
    /// This node's credentials changed (it joined the fleet): shown to peers from
    /// their next connection on.
    SetCredentials(Vec<u8>),
    /// Disconnect a misbehaving peer and refuse it for `for_`.
    Ban {
        /// The peer.
        peer: PeerId,
        /// How long.
        for_: Duration,
    },
    /// Close the connections to a peer and dial it again: its live push stopped
    /// reaching us while the connection stayed up (a gossip stream given up), and a
    /// new connection opens new streams.
    Reconnect(PeerId),
}

/// What the network tells the daemon.
#[derive(Debug)]
pub enum Event {
    /// First connection to a peer.
    Connected(PeerId),
    /// Last connection to a peer closed (also for a peer never admitted).
    Disconnected(PeerId),
    /// A new peer's credentials, when admission is on: judge them and answer
    /// [`Command::Admit`] or [`Command::Ban`]. `None`: it showed none in time (or does
    /// not speak the protocol); it is disconnected already.
    Credentials {
        /// The peer.
        peer: PeerId,
        /// What it showed.
        proof: Option<Vec<u8>>,
    },
    /// A sync message from a peer.
    Sync {
        /// The peer.
        peer: PeerId,
        /// The message.
        msg: Message,
    },
    /// A peer told us (identify) where it listens: worth remembering across restarts.
    Identified {
        /// The peer.
        peer: PeerId,
        /// Its listen addresses.
        addrs: Vec<Multiaddr>,
    },
    /// A peer joined a channel: it replicates the topics of that pattern.
    PeerSubscribed {
        /// The peer.
        peer: PeerId,
        /// The channel's gossipsub topic.
        topic: String,
    },
    /// A peer left a channel.
    PeerUnsubscribed {
        /// The peer.
        peer: PeerId,
        /// The channel's gossipsub topic.
        topic: String,
    },
    /// A gossiped event, awaiting a verdict.
    Gossip {
        /// The peer that forwarded it.
        source: PeerId,
        /// Its gossipsub id.
        id: gossipsub::MessageId,
        /// The channel's gossipsub topic it came on.
        topic: String,
        /// The event's bytes.
        data: Vec<u8>,
    },
}

/// A connected peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its id.
    pub peer: PeerId,
    /// The address of the connection.
    pub addr: Multiaddr,
    /// How we found it: `dial`, `inbound`, `mdns`, `kad` (the routing table), `topic`
    /// (a provider of a rendezvous key).
    pub how: &'static str,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
    /// Its gossipsub score (see [`crate::score`]); negative after invalid runs.
    pub score: Option<f64>,
    /// The path in use: `direct`, `relayed` (through a circuit relay), or `punched`
    /// (direct, after a hole punch upgraded a relayed connection).
    pub path: &'static str,
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

/// Cloneable access to the network task.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    peer: PeerId,
}

impl Handle {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// Queues a command; fails when the queue is full or the task is gone (callers
    /// treat sync and gossip as droppable: anti-entropy repairs).
    pub fn try_send(&self, cmd: Command) -> bool {
        self.tx.try_send(cmd).is_ok()
    }

    /// Queues a command, waiting for room.
    pub async fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// Stops the event loop (other handles may still be alive).
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// Dials `addr` and waits for the dial to be started.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Dial(addr, tx)).await {
            return Err("network stopped".into());
        }
        rx.await.map_err(|_| "network stopped".to_string())?
    }

    /// Connected peers.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Peers(tx)).await {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The peers in the Kademlia routing table.
    pub async fn routing_table(&self) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::RoutingTable(tx)).await {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Our listen addresses.
    pub async fn addresses(&self) -> Vec<Multiaddr> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Addresses(tx)).await {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// The task owning the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    peers: BTreeMap<PeerId, PeerInfo>,
    dropped_events: u64,
    /// Events the daemon had no room for yet. While any wait, the swarm is not polled:
    /// the network slows down (TCP and yamux push back on the peers) instead of
    /// dropping what the daemon has not seen. Bounded by what one swarm event emits.
    backlog: std::collections::VecDeque<Event>,
    banned: BTreeMap<PeerId, std::time::Instant>,
    gossip_bytes: crate::Traffic,
    /// How a peer we are dialing was found, until its connection is established.
    found_by: BTreeMap<PeerId, &'static str>,
    /// Length of `backlog`.
    waiting: prometheus_client::metrics::gauge::Gauge,
    /// Times `backlog` went from empty to not.
    held_back: prometheus_client::metrics::counter::Counter,
    /// Peers disconnected because identify showed another libp2p network.
    strangers: prometheus_client::metrics::counter::Counter,
    /// Connected peers by path (`direct`, `relayed`, `punched`).
    paths: prometheus_client::metrics::family::Family<
        crate::PathLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    /// Hole punches by result (`ok`, `failed`).
    punches: prometheus_client::metrics::family::Family<
        crate::ResultLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Target of connections to peers learned through Kademlia.
    links: usize,
    /// Rendezvous keys announced.
    provided: std::collections::BTreeSet<String>,
    /// Routing table size when the keys were last announced: they are announced again
    /// each time it doubles (up to 64), so records made before the table filled reach
    /// the right nodes.
    provided_at: usize,
    /// Provider lookups in progress, with how many more peers each may dial.
    lookups: std::collections::HashMap<kad::QueryId, usize>,
    /// Relays to hold a reservation at, and the circuit listener while there is one.
    relays: BTreeMap<PeerId, (Multiaddr, Option<libp2p::core::transport::ListenerId>)>,
    /// Sync messages to each peer: in flight, and waiting for one of those to end.
    sync_out: std::collections::HashMap<PeerId, SyncOut>,
    /// Sync messages dropped because a peer's waiting line was full.
    sync_dropped: u64,
    /// This node's credentials, when admission is on.
    admission: Option<Vec<u8>>,
    admission_timeout: Duration,
    /// Peers connected but not admitted yet: until when they may show credentials,
    /// and whether they have.
    unadmitted: BTreeMap<PeerId, (std::time::Instant, bool)>,
    /// Peers admitted (admission on): only they are heard. A peer refused, banned or
    /// gone is not in it, even while its connection is still closing.
    admitted: std::collections::HashSet<PeerId>,
    /// Peers being reconnected ([`Command::Reconnect`]): dialed again once their last
    /// connection has closed, at the address we had dialed (`None`: it dialed us; by
    /// whatever addresses discovery knows). At most [`RECONNECTING_MAX`].
    reconnecting: std::collections::HashMap<PeerId, Option<Multiaddr>>,
    /// Sync messages a peer sent while held back (its side admitted us first):
    /// handed on when it is admitted (at most [`HELD_SYNC_MAX`] per peer).
    held_sync: std::collections::HashMap<PeerId, Vec<Message>>,
}

/// Most peers being reconnected at once.
const RECONNECTING_MAX: usize = 64;

/// Most sync messages kept for a peer not admitted yet.
const HELD_SYNC_MAX: usize = 256;

/// Sync messages on their way to one peer. Each message is a stream until the peer's
/// empty answer. yamux closes the whole connection when a side opens more streams
/// than its limit (512), so the streams are flow-controlled here: at most
/// [`SYNC_STREAMS`] at once, the rest waiting in order.
#[derive(Default)]
struct SyncOut {
    in_flight: usize,
    waiting: std::collections::VecDeque<Message>,
}

/// Most sync messages in flight to one peer. With a murmur peer doing the same, a
/// connection carries at most twice this in sync streams, far below yamux's 512 with
/// room for gossipsub, Kademlia, identify and ping. A round on 2,000 topics once opened
/// over 512 at a time on a loaded machine and lost the connection (TooManyStreams).
pub(crate) const SYNC_STREAMS: usize = 128;
/// Most sync messages waiting for one peer. The sync machine bounds what it has in
/// flight (sessions × windows), so this is reached only by a peer that stopped reading;
/// beyond it messages are dropped and the sessions time out and retry.
const SYNC_WAITING_MAX: usize = 4096;

/// Most provider lookups at once (each is bounded by Kademlia's own query timeout).
const LOOKUPS_MAX: usize = 64;

/// How often peers announced by mDNS but not connected are dialed again.
const REDIAL_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Most entries in `found_by` (pending dials of discovered peers).
const FOUND_BY_MAX: usize = 1024;
/// Most peers kept out at once (bans and strangers).
const BANNED_MAX: usize = 4096;
/// How long a peer that showed no credentials in time is kept out.
const NOT_ADMITTED_KEPT_OUT: Duration = Duration::from_secs(60);
/// How long a peer of another libp2p network is kept out after identify showed it.
const STRANGER_KEPT_OUT: Duration = Duration::from_secs(600);

/// Builds the swarm for the node key `seed`, starts listening and dialing the bootstrap
/// peers, and returns the handle, the event stream and the loop to spawn.
///
/// Wire bytes by transport (libp2p bandwidth metrics), the bytes of the sync and gossip
/// protocols, and gossipsub's own metrics (messages received with and without
/// duplicates, mesh sizes, scores; bounded to 300 topics) are registered in `registry`
/// under `murmur_p2p`.
pub fn spawn(
    seed: [u8; 32],
    config: &Config,
    registry: &mut crate::Registry,
) -> Result<(Handle, mpsc::Receiver<Event>, EventLoop), Error> {
    let registry = registry.sub_registry_with_prefix("murmur_p2p");
    let sync_bytes = crate::Traffic::default();
    let gossip_bytes = crate::Traffic::default();
    registry.register(
        "sync_bytes",
        "Bytes of sync protocol frames",
        sync_bytes.0.clone(),
    );
    registry.register(
        "gossip_bytes",
        "Bytes of events received by gossip, and published (forwarding not counted)",
        gossip_bytes.0.clone(),
    );
    let paths = prometheus_client::metrics::family::Family::default();
    registry.register(
        "peers_by_path",
        "Connected peers by path: direct, relayed (through a circuit relay), punched (direct after a hole punch)",
        paths.clone(),
    );
    let punches = prometheus_client::metrics::family::Family::default();
    registry.register(
        "hole_punches",
        "Hole punches (dcutr) by result: ok, failed (the connection stays relayed)",
        punches.clone(),
    );
    let waiting = prometheus_client::metrics::gauge::Gauge::default();
    registry.register(
        "events_waiting",
        "Network events waiting for the daemon to take them; while any wait, the network reads nothing and peers are pushed back (a daemon that cannot keep up)",
        waiting.clone(),
    );
    let held_back = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "held_back",
        "Times the network stopped reading because the daemon had no room for an event",
        held_back.clone(),
    );
    let strangers = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "strangers",
        "Peers disconnected because identify showed they are not murmur nodes (another libp2p network)",
        strangers.clone(),
    );
    let key = libp2p::identity::Keypair::ed25519_from_bytes(seed)
        .map_err(|e| Error::Key(e.to_string()))?;
    let parts = behaviour::build(
        &key,
        config,
        sync_bytes,
        registry.sub_registry_with_prefix("gossipsub"),
    )?;
    let idle = config.idle_timeout;
    let mut swarm = match config.psk {
        None => libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| Error::Setup(format!("tcp: {e}")))?
            .with_quic()
            .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .map_err(|e| Error::Setup(format!("relay client: {e}")))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|_, relay_client| parts.with_relay_client(relay_client))
            .map_err(|e| Error::Setup(format!("behaviour: {e}")))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
        Some(psk) => libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|key| {
                private_transport(key, psk)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| Error::Setup(format!("private transport: {e}")))?
            .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .map_err(|e| Error::Setup(format!("relay client: {e}")))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|_, relay_client| parts.with_relay_client(relay_client))
            .map_err(|e| Error::Setup(format!("behaviour: {e}")))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
    };
    let quic = |a: &Multiaddr| {
        a.iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
    };
    if config.psk.is_some() && config.listen.iter().any(quic) {
        tracing::warn!("a pre-shared key is set: QUIC is off (libp2p pnet works over TCP only)");
    }
    let listen: Vec<&Multiaddr> = config
        .listen
        .iter()
        .filter(|a| config.psk.is_none() || !quic(a))
        .collect();
    for addr in listen {
        swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    }
    for addr in &config.bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    if !config.bootstrap.is_empty() {
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    // Relays: dialed now; a reservation is asked for once each has identified itself
    // (the relay client needs the connection first).
    let mut relays = BTreeMap::new();
    for relay in &config.relays {
        let Some(peer) = peer_of(relay) else {
            tracing::warn!(%relay, "a relay address needs /p2p/<peer id>; ignored");
            continue;
        };
        swarm.behaviour_mut().kad.add_address(&peer, relay.clone());
        if let Err(e) = swarm.dial(relay.clone()) {
            tracing::warn!(%relay, error = %e, "cannot dial relay");
        }
        relays.insert(peer, (relay.clone(), None));
    }
    let peer = *swarm.local_peer_id();
    let (cmd_tx, cmd_rx) = mpsc::channel(config.channel_capacity);
    let (ev_tx, ev_rx) = mpsc::channel(config.channel_capacity);
    let handle = Handle { tx: cmd_tx, peer };
    let lp = EventLoop {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        peers: BTreeMap::new(),
        dropped_events: 0,
        backlog: std::collections::VecDeque::new(),
        banned: BTreeMap::new(),
        gossip_bytes,
        found_by: BTreeMap::new(),
        waiting,
        held_back,
        strangers,
        paths,
        punches,
        links: config.links,
        provided: std::collections::BTreeSet::new(),
        provided_at: 0,
        lookups: std::collections::HashMap::new(),
        relays,
        sync_out: std::collections::HashMap::new(),
        sync_dropped: 0,
        admission: config.admission.clone(),
        admission_timeout: config.admission_timeout,
        unadmitted: BTreeMap::new(),
        admitted: std::collections::HashSet::new(),
        reconnecting: std::collections::HashMap::new(),
        held_sync: std::collections::HashMap::new(),
    };
    Ok((handle, ev_rx, lp))
}

/// TCP, then the pnet handshake (XSalsa20 with the fleet key), then Noise and Yamux.
fn private_transport(
    key: &libp2p::identity::Keypair,
    psk: [u8; 32],
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    libp2p::noise::Error,
> {
    use libp2p::Transport as _;
    let noise = libp2p::noise::Config::new(key)?;
    let psk = libp2p::pnet::PreSharedKey::new(psk);
    Ok(
        libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| libp2p::pnet::PnetConfig::new(psk).handshake(socket))
            .upgrade(libp2p::core::upgrade::Version::V1Lazy)
            .authenticate(noise)
            .multiplex(libp2p::yamux::Config::default())
            .boxed(),
    )
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

impl EventLoop {
    /// Runs until every [`Handle`] is dropped.
    pub async fn run(mut self) {
        let start = tokio::time::Instant::now() + REDIAL_EVERY;
        let mut redial = tokio::time::interval_at(start, REDIAL_EVERY);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut admission = tokio::time::interval(Duration::from_millis(500));
        admission.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiting = !self.backlog.is_empty();
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Stop) | None => break,
                    Some(cmd) => self.command(cmd),
                },
                room = self.events.clone().reserve_owned(), if waiting => match room {
                    Ok(permit) => {
                        if let Some(ev) = self.backlog.pop_front() {
                            permit.send(ev);
                        }
                        self.waiting.set(self.backlog.len() as i64);
                    }
                    // The daemon is gone: nothing will read them.
                    Err(_) => {
                        self.dropped_events += self.backlog.len() as u64;
                        self.backlog.clear();
                        self.waiting.set(0);
                    }
                },
                ev = self.swarm.select_next_some(), if !waiting => self.swarm_event(ev),
                _ = redial.tick() => self.redial(),
                _ = admission.tick(), if !self.unadmitted.is_empty() => self.admission_due(),
            }
        }
        tracing::debug!(dropped = self.dropped_events, "network loop stopped");
    }

    /// Peers that showed no credentials in time: disconnected, kept out for a while,
    /// and reported (the daemon counts them).
    fn admission_due(&mut self) {
        let now = std::time::Instant::now();
        // Only those that showed nothing: credentials shown wait for the daemon's
        // verdict, however long its queue is.
        let due: Vec<PeerId> = self
            .unadmitted
            .iter()
            .filter(|(_, (until, shown))| *until <= now && !*shown)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.unadmitted.remove(&peer);
            self.held_sync.remove(&peer);
            tracing::info!(%peer, "peer showed no credentials in time; disconnecting");
            self.keep_out(peer, NOT_ADMITTED_KEPT_OUT);
            let _ = self.swarm.disconnect_peer_id(peer);
            self.emit(Event::Credentials { peer, proof: None });
        }
    }

    /// Whether what `peer` sends is heard: always in an open fleet, only once admitted
    /// in a closed one.
    fn heard(&self, peer: &PeerId) -> bool {
        self.admission.is_none() || self.admitted.contains(peer)
    }

    /// A peer's credentials arrived (as its request or its answer to ours): handed to
    /// the daemon once.
    fn credentials(&mut self, peer: PeerId, proof: Option<Vec<u8>>) {
        if let Some((_, shown)) = self.unadmitted.get_mut(&peer)
            && !*shown
        {
            *shown = true;
            self.emit(Event::Credentials { peer, proof });
        }
    }

    /// Dials peers that mDNS still announces but that we are not connected to: mDNS
    /// reports a peer once, so a first dial that failed (a peer still starting, a
    /// collision of simultaneous dials) must not leave two neighbours apart until the
    /// record expires.
    fn redial(&mut self) {
        let Some(mdns) = self.swarm.behaviour().mdns.as_ref() else {
            return;
        };
        let mut apart: Vec<PeerId> = mdns.discovered_nodes().copied().collect();
        apart.sort();
        apart.dedup();
        for peer in apart {
            if !self.swarm.is_connected(&peer) && !self.is_banned(&peer) {
                tracing::debug!(%peer, "redialing a peer mDNS still announces");
                if self.swarm.dial(peer).is_ok() && self.found_by.len() < FOUND_BY_MAX {
                    self.found_by.insert(peer, "mdns");
                }
            }
        }
    }

    /// Dials up to the lookup's remaining count of `providers` we are not connected to
    /// (while the query runs, Kademlia knows their addresses).
    fn providers_found(
        &mut self,
        id: kad::QueryId,
        providers: std::collections::HashSet<PeerId>,
        last: bool,
    ) {
        let me = *self.swarm.local_peer_id();
        let mut found: Vec<PeerId> = providers.into_iter().collect();
        found.sort();
        for peer in found {
            let Some(left) = self.lookups.get_mut(&id) else {
                return;
            };
            if *left == 0 {
                break;
            }
            if peer == me || self.swarm.is_connected(&peer) || self.is_banned(&peer) {
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            // Already being dialed (the lookup's own query may be asking it): the
            // connection it makes serves as well.
            let dialing = match self.swarm.dial(opts) {
                Ok(()) => true,
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => true,
                Err(_) => false,
            };
            if dialing {
                tracing::debug!(%peer, "dialing a peer that replicates a topic we want");
                if let Some(left) = self.lookups.get_mut(&id) {
                    *left -= 1;
                }
                if self.found_by.len() < FOUND_BY_MAX {
                    self.found_by.insert(peer, "topic");
                }
            }
        }
        let done = self.lookups.get(&id).is_none_or(|left| *left == 0);
        if last || done {
            self.lookups.remove(&id);
            if !last && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
        }
    }

    /// Sets the peers-by-path gauges from the connected peers.
    fn count_paths(&self) {
        for path in ["direct", "relayed", "punched"] {
            let n = self.peers.values().filter(|p| p.path == path).count();
            self.paths
                .get_or_create(&crate::PathLabel { path })
                .set(n as i64);
        }
    }

    /// Asks `peer` for a reservation if it is one of our relays and we hold none there.
    fn reserve_at(&mut self, peer: PeerId) {
        let Some((addr, listener)) = self.relays.get(&peer) else {
            return;
        };
        if listener.is_some() {
            return;
        }
        let circuit = addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit) {
            Ok(id) => {
                if let Some((_, l)) = self.relays.get_mut(&peer) {
                    *l = Some(id);
                }
            }
            Err(e) => tracing::warn!(relay = %peer, error = %e, "cannot reserve at relay"),
        }
    }

    /// Announces the rendezvous keys again when the routing table has doubled since
    /// (a record made with an empty table reached nobody).
    fn reprovide(&mut self) {
        if self.provided.is_empty() || self.provided_at >= 64 {
            return;
        }
        let size: usize = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        if size < (self.provided_at * 2).max(1) {
            return;
        }
        self.provided_at = size;
        let keys: Vec<String> = self.provided.iter().cloned().collect();
        for key in keys {
            let _ = self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(kad::RecordKey::new(&key));
        }
    }

    /// Refuses `peer` for `for_` (bounded: when the list is full of live bans, the
    /// peer is only disconnected).
    fn keep_out(&mut self, peer: PeerId, for_: Duration) {
        let now = std::time::Instant::now();
        if self.banned.len() >= BANNED_MAX {
            self.banned.retain(|_, until| *until > now);
        }
        if self.banned.len() < BANNED_MAX || self.banned.contains_key(&peer) {
            self.banned.insert(peer, now + for_);
        }
    }

    fn is_banned(&mut self, peer: &PeerId) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Hands an event to the daemon, or keeps it for when there is room (and stops
    /// reading the network meanwhile). Dropping one (as before) lost gossip for good:
    /// gossipsub had already marked it seen, and only a round started by a peer that
    /// holds the topic brought it, minutes later with many peers and topics.
    fn emit(&mut self, ev: Event) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(ev);
            self.waiting.inc();
            return;
        }
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                self.backlog.push_back(ev);
                self.waiting.set(1);
                self.held_back.inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.dropped_events += 1,
        }
    }

    /// Sends a sync message now if fewer than [`SYNC_STREAMS`] are in flight to the
    /// peer, or queues it.
    fn send_sync(&mut self, peer: PeerId, msg: Message) {
        let out = self.sync_out.entry(peer).or_default();
        if out.in_flight < SYNC_STREAMS {
            out.in_flight += 1;
            self.swarm.behaviour_mut().sync.send_request(&peer, msg);
        } else if out.waiting.len() < SYNC_WAITING_MAX {
            out.waiting.push_back(msg);
        } else {
            self.sync_dropped += 1;
            tracing::debug!(%peer, dropped = self.sync_dropped, "sync line to a peer full: message dropped");
        }
    }

    /// A sync message to `peer` ended (answered or failed): the next waiting one goes.
    fn sync_sent(&mut self, peer: PeerId) {
        let Some(out) = self.sync_out.get_mut(&peer) else {
            return;
        };
        out.in_flight = out.in_flight.saturating_sub(1);
        match out.waiting.pop_front() {
            Some(msg) => {
                out.in_flight += 1;
                self.swarm.behaviour_mut().sync.send_request(&peer, msg);
            }
            None if out.in_flight == 0 => {
                self.sync_out.remove(&peer);
            }
            None => {}
        }
    }

    fn command(&mut self, cmd: Command) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::Dial(addr, reply) => {
                let r = self.swarm.dial(addr).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Command::Sync { peer, msg } => self.send_sync(peer, msg),
            Command::Publish { topic, data } => {
                self.gossip_bytes.add("out", data.len());
                match b.gossip.publish(gossipsub::IdentTopic::new(topic), data) {
                    Ok(_)
                    | Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                    | Err(gossipsub::PublishError::Duplicate) => {}
                    Err(e) => tracing::debug!(error = %e, "gossip publish failed"),
                }
            }
            Command::Unsubscribe(topic) => {
                b.gossip.unsubscribe(&gossipsub::IdentTopic::new(topic));
            }
            Command::Subscribe(topic) => {
                let topic = gossipsub::IdentTopic::new(topic);
                if let Err(e) = b
                    .gossip
                    .set_topic_params(topic.clone(), behaviour::channel_score())
                {
                    tracing::warn!(error = %e, "gossip scoring not set");
                }
                if let Err(e) = b.gossip.subscribe(&topic) {
                    tracing::warn!(%topic, error = %e, "gossip subscribe failed");
                }
            }
            Command::Validate {
                id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                b.gossip
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Peers(reply) => {
                let gossip = &self.swarm.behaviour().gossip;
                // Peers held back for their credentials are not peers yet.
                let peers = self
                    .peers
                    .values()
                    .filter(|p| !self.unadmitted.contains_key(&p.peer))
                    .cloned()
                    .map(|mut p| {
                        p.score = gossip.peer_score(&p.peer);
                        p
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Addresses(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Stop => {}
            Command::Provide(key) => {
                if let Err(e) = b.kad.start_providing(kad::RecordKey::new(&key)) {
                    tracing::warn!(%key, error = %e, "cannot announce a rendezvous key");
                }
                self.provided.insert(key);
            }
            Command::Unprovide(key) => {
                b.kad.stop_providing(&kad::RecordKey::new(&key));
                self.provided.remove(&key);
            }
            Command::FindPeers { key, want } => {
                if self.lookups.len() < LOOKUPS_MAX && want > 0 {
                    tracing::debug!(%key, want, "looking up peers that replicate a topic");
                    let id = b.kad.get_providers(kad::RecordKey::new(&key));
                    self.lookups.insert(id, want);
                }
            }
            Command::Admit(peer) => {
                if self.unadmitted.remove(&peer).is_some() && self.swarm.is_connected(&peer) {
                    tracing::debug!(%peer, "admitted");
                    self.admitted.insert(peer);
                    self.emit(Event::Connected(peer));
                    // What it asked while held back (its side admitted us first).
                    for msg in self.held_sync.remove(&peer).unwrap_or_default() {
                        self.emit(Event::Sync { peer, msg });
                    }
                }
            }
            Command::SetCredentials(creds) => {
                self.admission = Some(creds);
            }
            Command::Reconnect(peer) => {
                if self.reconnecting.len() < RECONNECTING_MAX
                    && let Some(p) = self.peers.get(&peer)
                {
                    // An inbound connection's address is the peer's outgoing port.
                    let addr = (p.how != "inbound").then(|| p.addr.clone());
                    tracing::info!(%peer, "reconnecting");
                    self.reconnecting.insert(peer, addr);
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::Ban { peer, for_ } => {
                self.unadmitted.remove(&peer);
                self.admitted.remove(&peer);
                self.held_sync.remove(&peer);
                tracing::warn!(%peer, ?for_, "banning peer");
                self.keep_out(peer, for_);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::RoutingTable(reply) => {
                let peers = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let _ = reply.send(peers);
            }
        }
    }

    fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // A relay is reachable where it listens (that is what makes it a relay),
                // and libp2p's relay serves reservations only with a confirmed external
                // address. Loopback and circuit addresses are not offered.
                let loopback = address.iter().any(|p| {
                    matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback())
                        || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_loopback())
                });
                if self.swarm.behaviour().relay.is_enabled() && !loopback && !is_relayed(&address) {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if self.is_banned(&peer_id) => {
                tracing::debug!(peer = %peer_id, "refusing a banned peer");
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let how = if endpoint.is_dialer() {
                    "dial"
                } else {
                    "inbound"
                };
                let addr = endpoint.get_remote_address().clone();
                let path = if endpoint.is_relayed() {
                    "relayed"
                } else {
                    "direct"
                };
                if num_established.get() == 1 {
                    // A reconnect that never saw its last connection close (another
                    // came first) is over.
                    self.reconnecting.remove(&peer_id);
                    tracing::info!(peer = %peer_id, %addr, how, path, "connected");
                    let how = self.found_by.remove(&peer_id).unwrap_or(how);
                    self.peers.insert(
                        peer_id,
                        PeerInfo {
                            peer: peer_id,
                            addr,
                            how,
                            rtt: None,
                            score: None,
                            path,
                        },
                    );
                    self.count_paths();
                    match &self.admission {
                        // Held back until it shows credentials the daemon accepts.
                        Some(ours) => {
                            let until = std::time::Instant::now() + self.admission_timeout;
                            self.unadmitted.insert(peer_id, (until, false));
                            let ours = ours.clone();
                            self.swarm
                                .behaviour_mut()
                                .admit
                                .send_request(&peer_id, ours);
                        }
                        None => self.emit(Event::Connected(peer_id)),
                    }
                } else if path == "direct"
                    && let Some(p) = self.peers.get_mut(&peer_id)
                    && p.path == "relayed"
                {
                    // A direct connection next to a relayed one: a hole punch (dcutr) or
                    // a dial that got through. Traffic moves to it; the relayed one is
                    // closed by the relay's limits or when idle.
                    tracing::info!(peer = %peer_id, %addr, "direct connection next to the relayed one");
                    p.addr = addr;
                    p.path = "punched";
                    self.count_paths();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::info!(peer = %peer_id, ?cause, "disconnected");
                self.peers.remove(&peer_id);
                // What waited can no longer go; the sessions fail as the peer left.
                self.sync_out.remove(&peer_id);
                self.count_paths();
                // Also for a peer never admitted: it may have announced channels.
                self.unadmitted.remove(&peer_id);
                self.admitted.remove(&peer_id);
                self.held_sync.remove(&peer_id);
                self.emit(Event::Disconnected(peer_id));
                if let Some(addr) = self.reconnecting.remove(&peer_id)
                    && !self.is_banned(&peer_id)
                {
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer_id)
                        .addresses(addr.into_iter().collect())
                        .extend_addresses_through_behaviour()
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        // It dialed us: it dials again (mDNS, Kademlia, its own list).
                        tracing::debug!(peer = %peer_id, error = %e, "could not dial a reconnected peer");
                    } else if self.found_by.len() < FOUND_BY_MAX {
                        self.found_by.insert(peer_id, "reconnect");
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let found_by_mdns = peer_id
                    .and_then(|p| self.found_by.remove(&p))
                    .is_some_and(|how| how == "mdns");
                if found_by_mdns {
                    tracing::info!(?peer_id, %error, "dial of a peer found by mDNS failed; retrying in {REDIAL_EVERY:?}");
                } else {
                    tracing::debug!(?peer_id, %error, "dial failed");
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                let mut at_relay = false;
                for (_, l) in self.relays.values_mut() {
                    if *l == Some(listener_id) {
                        *l = None;
                        at_relay = true;
                    }
                }
                if at_relay {
                    tracing::info!(
                        ?reason,
                        "reservation at a relay ended; asked again when it identifies"
                    );
                } else {
                    tracing::warn!(?addresses, ?reason, "stopped listening");
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::Behaviour(ev) => self.behaviour_event(ev),
            _ => {}
        }
    }

    fn behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let _ = self.swarm.behaviour_mut().sync.send_response(channel, ());
                        if self.heard(&peer) {
                            self.emit(Event::Sync { peer, msg: request });
                        } else if self.unadmitted.contains_key(&peer) {
                            // Held back: kept until it is admitted (bounded), so a round
                            // it started the moment its side admitted us is not lost.
                            let held = self.held_sync.entry(peer).or_default();
                            if held.len() < HELD_SYNC_MAX {
                                held.push(request);
                            }
                        }
                    }
                    request_response::Message::Response { .. } => self.sync_sent(peer),
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer, error, ..
            }) => {
                tracing::debug!(%peer, %error, "sync message not delivered");
                self.sync_sent(peer);
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                tracing::debug!(%peer, %error, "bad inbound sync message");
            }
            BehaviourEvent::Admit(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let ours = self.admission.clone().unwrap_or_default();
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .admit
                            .send_response(channel, ours);
                        self.credentials(peer, Some(request));
                    }
                    request_response::Message::Response { response, .. } => {
                        self.credentials(peer, Some(response));
                    }
                }
            }
            BehaviourEvent::Admit(request_response::Event::OutboundFailure {
                peer, error, ..
            }) => {
                // It cannot take ours (does not speak the protocol, or timed out): it
                // may still have sent its own; if not, the deadline decides.
                tracing::debug!(%peer, %error, "credentials not delivered");
            }
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) if !self.heard(&propagation_source) => {
                // Not admitted (yet): dropped, not forwarded, not held against it.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Ignore,
                    );
                let _ = message;
            }
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.gossip_bytes.add("in", message.data.len());
                self.emit(Event::Gossip {
                    source: propagation_source,
                    id: message_id,
                    topic: message.topic.as_str().to_owned(),
                    data: message.data,
                });
            }
            BehaviourEvent::Gossip(gossipsub::Event::Subscribed { peer_id, topic, .. }) => {
                self.emit(Event::PeerSubscribed {
                    peer: peer_id,
                    topic: topic.as_str().to_owned(),
                });
            }
            BehaviourEvent::Gossip(gossipsub::Event::Unsubscribed { peer_id, topic, .. }) => {
                self.emit(Event::PeerUnsubscribed {
                    peer: peer_id,
                    topic: topic.as_str().to_owned(),
                });
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    // Any libp2p node on the LAN answers mDNS: dial, but leave the
                    // routing table to identify, which tells murmur nodes apart.
                    if !self.swarm.is_connected(&peer) && !self.is_banned(&peer) {
                        tracing::debug!(%peer, %addr, "found by mDNS");
                        if self.swarm.dial(addr).is_ok() && self.found_by.len() < FOUND_BY_MAX {
                            self.found_by.insert(peer, "mdns");
                        }
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != behaviour::IDENTIFY_PROTOCOL {
                    // Another libp2p network (an IPFS node on the LAN, a stranger that
                    // dialed us): never route it, never keep it, do not redial it soon.
                    tracing::info!(peer = %peer_id, protocol = %info.protocol_version, "not a murmur node; disconnecting");
                    self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
                    self.strangers.inc();
                    self.keep_out(peer_id, STRANGER_KEPT_OUT);
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                // Only peers that speak murmur's own Kademlia go into the routing table.
                if info.protocols.contains(&behaviour::KAD_PROTOCOL) {
                    for addr in &info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                self.reserve_at(peer_id);
                self.emit(Event::Identified {
                    peer: peer_id,
                    addrs: info.listen_addrs,
                });
            }
            BehaviourEvent::RelayClient(libp2p::relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "reservation accepted: reachable through the relay");
            }
            BehaviourEvent::Relay(ev) => {
                tracing::debug!(?ev, "relay");
            }
            BehaviourEvent::Dcutr(libp2p::dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                let outcome = if result.is_ok() { "ok" } else { "failed" };
                self.punches
                    .get_or_create(&crate::ResultLabel { result: outcome })
                    .inc();
                match result {
                    Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punch succeeded"),
                    Err(e) => {
                        tracing::info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying relayed")
                    }
                }
            }
            BehaviourEvent::Autonat(libp2p::autonat::v1::Event::StatusChanged { new, .. }) => {
                tracing::info!(status = ?new, "reachability");
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => {
                self.reprovide();
                // A peer learned through the DHT: connect while we have fewer than
                // `links`, so gossip and sync reach the fleet. Beyond that, links for
                // topics come from rendezvous lookups.
                if !self.swarm.is_connected(&peer)
                    && self.peers.len() < self.links
                    && !self.is_banned(&peer)
                {
                    let _ = self.swarm.dial(peer);
                    if self.found_by.len() < FOUND_BY_MAX {
                        self.found_by.insert(peer, "kad");
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(found),
                step,
                ..
            }) => {
                let found = match found {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => providers,
                    _ => Default::default(),
                };
                self.providers_found(id, found, step.last);
            }
            _ => {}
        }
    }
}
