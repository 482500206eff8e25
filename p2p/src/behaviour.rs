//! The composed libp2p behaviour and its settings.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, gossipsub, identify, kad, mdns, ping, request_response};
use murmur_core::{EventId, MAX_EVENT_BYTES};

use crate::Error;
use crate::codec::{PROTOCOL, SyncCodec};

/// Network settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and to bootstrap Kademlia with (`/ip4/…/tcp/…/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Close connections idle for this long.
    pub idle_timeout: Duration,
    /// Deadline for one sync message to be delivered.
    pub request_timeout: Duration,
    /// Capacity of the command and event channels.
    pub channel_capacity: usize,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections with one peer.
    pub max_connections_per_peer: u32,
    /// Private fleet: only peers with this pre-shared key can connect (libp2p pnet).
    /// pnet works over TCP only, so QUIC is off when a key is set.
    pub psk: Option<[u8; 32]>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            channel_capacity: 1024,
            psk: None,
            max_connections: 256,
            max_connections_per_peer: 2,
        }
    }
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) sync: request_response::Behaviour<SyncCodec>,
    pub(crate) gossip: gossipsub::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The gossipsub settings murmur relies on. A message is a run of events of one log
/// (`murmur_core::run`). Messages are anonymous (each event carries its own ed25519
/// signature; a second gossipsub signature would halve throughput), the message id is
/// the blake3 hash of the run so the same run is recognised across paths, and every
/// message waits for the daemon's verdict before it is forwarded — which also gives the
/// IDONTWANT notices (sent on receipt, see [`IDONTWANT_ABOVE`]) time to arrive before a
/// peer would forward a copy we already hold.
/// Messages larger than this are announced with IDONTWANT to mesh peers on receipt
/// (gossipsub 1.2), so peers do not forward us a copy we hold. gossipsub's default is
/// 1,000 bytes; a run of one 256-byte event is about 370 bytes and a redundant copy of
/// it costs more than the ~130-byte notice, so murmur announces from 256 bytes.
pub const IDONTWANT_ABOVE: usize = 256;
/// Largest gossip message: one event of the maximum size as a run, plus framing.
pub const MAX_GOSSIP_BYTES: usize = MAX_EVENT_BYTES + 4096;

pub(crate) fn gossip_config() -> Result<gossipsub::Config, Error> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(EventId::hash(&m.data).0.to_vec())
        })
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .idontwant_message_size_threshold(IDONTWANT_ABOVE)
        .heartbeat_interval(Duration::from_millis(700))
        .build()
        .map_err(|e| Error::Setup(format!("gossipsub: {e}")))
}

pub(crate) fn build(
    key: &libp2p::identity::Keypair,
    config: &Config,
    sync_bytes: crate::Traffic,
    gossip_metrics: &mut crate::Registry,
) -> Result<Behaviour, Error> {
    let peer = PeerId::from(key.public());
    let gossip =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config()?)
            .map_err(|e| Error::Setup(format!("gossipsub: {e}")))?
            .with_metrics(gossip_metrics, gossipsub::MetricsConfig::default());
    let sync = request_response::Behaviour::with_codec(
        SyncCodec { bytes: sync_bytes },
        [(PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(256),
    );
    let mut kad = kad::Behaviour::new(peer, kad::store::MemoryStore::new(peer));
    kad.set_mode(Some(kad::Mode::Server));
    let mdns = if config.mdns {
        Some(
            // Query every 15 s rather than every 5 min: a missed first answer (a peer that
            // started a moment later, a lost packet) must not stall discovery for minutes.
            mdns::tokio::Behaviour::new(
                mdns::Config {
                    query_interval: Duration::from_secs(15),
                    ..mdns::Config::default()
                },
                peer,
            )
            .map_err(|e| Error::Setup(format!("mdns: {e}")))?,
        )
    } else {
        None
    };
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_connections.min(64)));
    Ok(Behaviour {
        limits: libp2p::connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(identify::Config::new("/murmur/1".into(), key.public())),
        ping: ping::Behaviour::new(ping::Config::new()),
        sync,
        gossip,
        kad,
        mdns: mdns.into(),
    })
}
