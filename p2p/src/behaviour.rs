//! The composed libp2p behaviour and its settings.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, gossipsub, identify, kad, mdns, ping, request_response,
};
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

pub mod gossip {
    //! The push mesh's parameters, chosen with murmur-sim at 1,000 and 10,000 nodes on
    //! links of 20–100 ms (simulations/README.md, "The push goal"). murmur-sim's
    //! scenario defaults are these values; a test there checks it.
    //!
    //! gossipsub's defaults (D 6, 5..12, 6 lazy peers, 3 windows of IHAVE; IDONTWANT
    //! from 256 bytes in earlier murmur) cost 8–10.5× the event size per node per
    //! event: every node got about six copies, and each id was announced three times to
    //! six peers. These settings cost 2.1–2.6× at 10,000 nodes, with 99% of nodes
    //! reached in 0.75 s: a mesh of 2..3 brings the copies down to about two, and ids
    //! announced for two heartbeats to one peer each still reach a node that no full
    //! mesh would take.

    /// Mesh degree (gossipsub D).
    pub const MESH_N: usize = 3;
    /// Fewest mesh peers before the heartbeat grafts more (D_low).
    pub const MESH_N_LOW: usize = 2;
    /// Most mesh peers; a GRAFT beyond this is refused (D_high).
    pub const MESH_N_HIGH: usize = 3;
    /// Peers outside the mesh that get the IHAVE ids at each heartbeat (D_lazy).
    pub const GOSSIP_LAZY: usize = 1;
    /// Heartbeat windows of message ids announced by IHAVE.
    pub const HISTORY_GOSSIP: usize = 2;
    /// Heartbeat interval, ms.
    pub const HEARTBEAT_MS: u64 = 700;
    /// Messages larger than this are announced with IDONTWANT to mesh peers on receipt
    /// (gossipsub 1.2; its default). Below it a notice to each mesh peer costs about
    /// what the redundant copy it may stop does, and on links of tens of ms the copy is
    /// usually on its way before the notice arrives. Large runs (under load, up to
    /// 64 KiB) are announced, which is where it pays.
    pub const IDONTWANT_ABOVE: usize = 1000;
}

/// murmur's own Kademlia protocol. The libp2p default, `/ipfs/kad/1.0.0`, would make a
/// murmur node reachable without a fleet key a member of any IPFS DHT that touched it:
/// learning and dialing strangers, and being learned by them.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/kad/1.0.0");

/// identify's protocol version. A peer that shows another is not a murmur node: it is
/// disconnected, kept out for a while, and never enters the routing table.
pub const IDENTIFY_PROTOCOL: &str = "/murmur/1";

/// Largest gossip message: one event of the maximum size as a run, plus framing.
pub const MAX_GOSSIP_BYTES: usize = MAX_EVENT_BYTES + 4096;

/// The gossipsub settings murmur relies on. A message is a run of events of one log
/// (`murmur_core::run`). Messages are anonymous (each event carries its own ed25519
/// signature; a second gossipsub signature would halve throughput), the message id is
/// the blake3 hash of the run so the same run is recognised across paths, and every
/// message waits for the daemon's verdict before it is forwarded — which also gives the
/// IDONTWANT notices (sent on receipt, see [`gossip::IDONTWANT_ABOVE`]) time to arrive
/// before a peer would forward a copy we already hold.
pub(crate) fn gossip_config() -> Result<gossipsub::Config, Error> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(EventId::hash(&m.data).0.to_vec())
        })
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .mesh_n(gossip::MESH_N)
        .mesh_n_low(gossip::MESH_N_LOW)
        .mesh_n_high(gossip::MESH_N_HIGH)
        .mesh_outbound_min(1)
        .gossip_lazy(gossip::GOSSIP_LAZY)
        .history_gossip(gossip::HISTORY_GOSSIP)
        .idontwant_message_size_threshold(gossip::IDONTWANT_ABOVE)
        .heartbeat_interval(Duration::from_millis(gossip::HEARTBEAT_MS))
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
    let mut kad = kad::Behaviour::with_config(
        peer,
        kad::store::MemoryStore::new(peer),
        kad::Config::new(KAD_PROTOCOL),
    );
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
        identify: identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.into(),
            key.public(),
        )),
        ping: ping::Behaviour::new(ping::Config::new()),
        sync,
        gossip,
        kad,
        mdns: mdns.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::{gossip, gossip_config};

    #[test]
    fn gossipsub_accepts_the_push_settings() {
        let c = gossip_config().expect("gossipsub accepts the settings");
        assert_eq!(c.mesh_n(), gossip::MESH_N);
        assert_eq!(c.mesh_n_low(), gossip::MESH_N_LOW);
        assert_eq!(c.mesh_n_high(), gossip::MESH_N_HIGH);
        assert_eq!(c.gossip_lazy(), gossip::GOSSIP_LAZY);
        assert_eq!(c.history_gossip(), gossip::HISTORY_GOSSIP);
    }
}
