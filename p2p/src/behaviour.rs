//! The composed libp2p behaviour and its settings.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, autonat, dcutr, gossipsub, identify, kad, mdns, ping, relay,
    request_response,
};
use murmur_core::MAX_EVENT_BYTES;

use crate::Error;
use crate::codec::{ADMIT_PROTOCOL, AdmitCodec, PROTOCOL, SyncCodec};

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
    /// Peers learned through Kademlia are dialed while fewer than this many are
    /// connected (topic-aware discovery adds links for topics on top).
    pub links: usize,
    /// Serve as a circuit relay (v2) for nodes behind NAT, within these limits.
    pub relay_server: Option<RelayLimits>,
    /// Relays to hold a reservation at (`/ip4/…/tcp/…/p2p/<relay id>`): this node is
    /// then reachable through them at `<relay>/p2p-circuit/p2p/<this node>`.
    pub relays: Vec<Multiaddr>,
    /// Private fleet: only peers with this pre-shared key can connect (libp2p pnet).
    /// pnet works over TCP only, so QUIC is off when a key is set.
    pub psk: Option<[u8; 32]>,
    /// Admission: this node's credentials (a fleet membership certificate). When set,
    /// a new peer is held back (no [`crate::Event::Connected`], its gossip and sync
    /// dropped) until it has shown credentials ([`crate::Event::Credentials`]) and the
    /// daemon admitted it ([`crate::Command::Admit`]), or is disconnected after
    /// [`Config::admission_timeout`]. `None`: every peer that connects is a peer.
    pub admission: Option<Vec<u8>>,
    /// How long a new peer has to show credentials.
    pub admission_timeout: Duration,
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
            links: 8,
            relay_server: None,
            relays: Vec::new(),
            admission: None,
            admission_timeout: Duration::from_secs(5),
        }
    }
}

/// What a relay serves. A relay forwards Noise-encrypted bytes it cannot read; it
/// costs one reservation slot per node behind it and two streams per circuit.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Most nodes holding a reservation at once.
    pub max_reservations: usize,
    /// Most circuits open at once (all peers).
    pub max_circuits: usize,
    /// Most circuits open at once per peer.
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry, each way, before it is closed (the nodes open a new
    /// one, or have upgraded to a direct connection).
    pub circuit_bytes: u64,
    /// How long one circuit may stay open.
    pub circuit_duration: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            circuit_bytes: 256 << 20,
            circuit_duration: Duration::from_secs(3600),
        }
    }
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) sync: request_response::Behaviour<SyncCodec>,
    pub(crate) admit: request_response::Behaviour<AdmitCodec>,
    pub(crate) gossip: gossipsub::Behaviour<gossipsub::IdentityTransform, SubscriptionFilter>,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay: Toggle<relay::Behaviour>,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) autonat: autonat::v1::Behaviour,
}

/// Everything but the relay client, which the swarm builder makes with its transport.
pub(crate) struct Parts {
    limits: libp2p::connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    admit: request_response::Behaviour<AdmitCodec>,
    gossip: gossipsub::Behaviour<gossipsub::IdentityTransform, SubscriptionFilter>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::v1::Behaviour,
}

impl Parts {
    pub(crate) fn with_relay_client(self, relay_client: relay::client::Behaviour) -> Behaviour {
        Behaviour {
            limits: self.limits,
            identify: self.identify,
            ping: self.ping,
            sync: self.sync,
            admit: self.admit,
            gossip: self.gossip,
            kad: self.kad,
            mdns: self.mdns,
            relay_client,
            relay: self.relay,
            dcutr: self.dcutr,
            autonat: self.autonat,
        }
    }
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
    /// Message ids one IHAVE carries at most, and ids asked of one peer by IWANT per
    /// heartbeat (gossipsub's `max_control_messages_sent`; its default is 5,000): gossip
    /// recovers at most this many messages per channel, peer and heartbeat, and sync
    /// the rest. gossipsub 0.50 sends up to that many ids in one control message, but
    /// its decoder refuses an RPC whose control part is over `max_control_message_size`
    /// (16 KiB by default), and a refusal ends the reading side of the stream while the
    /// sender goes on writing into it: everything the sender pushed on that connection after it was lost, with
    /// nothing logged, until murmur's push watch reconnected a minute later. A host that
    /// stored 500 runs at once announced 500 ids of 34 bytes (17 KB) and cut itself off
    /// from the watching host (the 2,000-topic netns test, found with a patched
    /// gossipsub that logged its stream errors). 400 ids with the longest channel name
    /// fit in 16 KiB, so a node also stays readable by older murmur nodes.
    pub const CONTROL_IDS: usize = 400;
    /// The control part of an RPC murmur accepts (gossipsub's
    /// `max_control_message_size`): what an older murmur node sends at most (5,000 ids,
    /// 170 KB), so that during an upgrade its announcements do not cut it off either.
    /// Frames stay bounded by the gossip message limit.
    pub const CONTROL_BYTES: usize = 256 * 1024;
}

/// Which peer subscriptions gossipsub keeps: channels only (`murmur:` names; another
/// network's topics are dropped), and at most [`murmur_core::channel::MAX_PER_PEER`]
/// per peer. A peer that announces more (a hostile peer announcing 10,000 topics) has
/// the excess refused; murmur never joins a channel because a peer announced it.
pub(crate) type SubscriptionFilter = gossipsub::CombinedSubscriptionFilters<
    gossipsub::MaxCountSubscriptionFilter<gossipsub::AllowAllSubscriptionFilter>,
    gossipsub::CallbackSubscriptionFilter<fn(&gossipsub::TopicHash) -> bool>,
>;

fn is_channel(t: &gossipsub::TopicHash) -> bool {
    t.as_str().starts_with(murmur_core::channel::PREFIX)
}

fn subscription_filter() -> SubscriptionFilter {
    gossipsub::CombinedSubscriptionFilters {
        filter1: gossipsub::MaxCountSubscriptionFilter {
            filter: gossipsub::AllowAllSubscriptionFilter {},
            max_subscribed_topics: murmur_core::channel::MAX_PER_PEER,
            max_subscriptions_per_request: murmur_core::channel::MAX_PER_PEER,
        },
        filter2: gossipsub::CallbackSubscriptionFilter(is_channel as fn(&_) -> bool),
    }
}

pub mod score {
    //! Gossipsub peer scoring, fed by murmur's verdicts. A message murmur rejects
    //! (bad signature, malformed, wrong channel, a body the application refuses)
    //! counts as an invalid delivery (gossipsub's P4, squared): one puts the sender
    //! below [`GOSSIP_THRESHOLD`] (no IHAVE to or from it), two below
    //! [`PUBLISH_THRESHOLD`] (our own runs no longer go to it), three below
    //! [`GRAYLIST_THRESHOLD`] (its messages are dropped unread) — which is also where
    //! murmur bans it. The penalty fades over [`INVALID_FADES_SECS`].
    //!
    //! What is left out, and why: mesh delivery deficits (P3) punish a quiet peer on a
    //! quiet channel, and a fleet's channels are often quiet; IP colocation punishes
    //! devices behind one NAT, which is how fleets are deployed; behaviour penalties
    //! (P7: IHAVE promises not kept within 3 s, GRAFTs during a back-off) and the slow
    //! peer penalty punish a loaded device, whose late answers are not misbehaviour:
    //! four late promises would graylist an honest peer. A peer that breaks the protocol
    //! on purpose is the daemon's to ban.

    /// Weight of one invalid delivery (squared per peer).
    pub const INVALID_WEIGHT: f64 = -15.0;
    /// Below this, no gossip (IHAVE/IWANT) with the peer.
    pub const GOSSIP_THRESHOLD: f64 = -10.0;
    /// Below this, our own runs are not sent to the peer.
    pub const PUBLISH_THRESHOLD: f64 = -50.0;
    /// Below this, the peer's messages are dropped unread.
    pub const GRAYLIST_THRESHOLD: f64 = -120.0;
    /// Over how long an invalid delivery's count decays to nothing.
    pub const INVALID_FADES_SECS: u64 = 600;
}

/// Scoring for one channel (see [`score`]).
pub(crate) fn channel_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // A little for staying in the mesh (at most +1 after 100 s)…
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        // …and for being first with new runs (at most +5).
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: gossipsub::score_parameter_decay(Duration::from_secs(60)),
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: score::INVALID_WEIGHT,
        invalid_message_deliveries_decay: gossipsub::score_parameter_decay(Duration::from_secs(
            score::INVALID_FADES_SECS,
        )),
        ..gossipsub::TopicScoreParams::default()
    }
}

fn scoring() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: score::GOSSIP_THRESHOLD,
        publish_threshold: score::PUBLISH_THRESHOLD,
        graylist_threshold: score::GRAYLIST_THRESHOLD,
        ..gossipsub::PeerScoreThresholds::default()
    };
    (params, thresholds)
}

/// murmur's own Kademlia protocol. The libp2p default, `/ipfs/kad/1.0.0`, would make a
/// murmur node reachable without a fleet key a member of any IPFS DHT that touched it:
/// learning and dialing strangers, and being learned by them.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/kad/1.0.0");

/// How often a node announces its rendezvous keys again (records live three times
/// as long).
pub const PROVIDE_EVERY: Duration = Duration::from_secs(600);

/// identify's protocol version. A peer that shows another is not a murmur node: it is
/// disconnected, kept out for a while, and never enters the routing table.
pub const IDENTIFY_PROTOCOL: &str = "/murmur/1";

/// Largest gossip message: one event of the maximum size as a run, plus framing.
pub const MAX_GOSSIP_BYTES: usize = MAX_EVENT_BYTES + 4096;

/// What gossipsub is told frames may be, beyond [`MAX_GOSSIP_BYTES`]: its decoder
/// checks the size of its read buffer, which holds the frame and up to 8 KiB of the
/// next one, and a refusal ends the reading side of the stream silently (see
/// [`gossip::CONTROL_IDS`]). A run near the largest size followed closely by another
/// message would cut the stream; the daemon still sends at most `MAX_GOSSIP_BYTES`.
const READ_SLACK: usize = 16 * 1024;

/// The gossipsub settings murmur relies on. A message is a run of events of one log
/// (`murmur_core::run`). Messages are anonymous (each event carries its own ed25519
/// signature; a second gossipsub signature would halve throughput), the message id is
/// the blake3 hash of the channel and the run (the same run is recognised across paths
/// within a channel, and is a message of its own on another channel), and every
/// message waits for the daemon's verdict before it is forwarded — which also gives the
/// IDONTWANT notices (sent on receipt, see [`gossip::IDONTWANT_ABOVE`]) time to arrive
/// before a peer would forward a copy we already hold.
pub(crate) fn gossip_config() -> Result<gossipsub::Config, Error> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            let mut h = blake3::Hasher::new();
            h.update(m.topic.as_str().as_bytes());
            h.update(&[0]);
            h.update(&m.data);
            gossipsub::MessageId::from(h.finalize().as_bytes().to_vec())
        })
        .max_transmit_size(MAX_GOSSIP_BYTES + READ_SLACK)
        .mesh_n(gossip::MESH_N)
        .mesh_n_low(gossip::MESH_N_LOW)
        .mesh_n_high(gossip::MESH_N_HIGH)
        .mesh_outbound_min(1)
        .gossip_lazy(gossip::GOSSIP_LAZY)
        .history_gossip(gossip::HISTORY_GOSSIP)
        .idontwant_message_size_threshold(gossip::IDONTWANT_ABOVE)
        .max_control_messages_sent(gossip::CONTROL_IDS)
        .max_control_message_size(gossip::CONTROL_BYTES)
        .heartbeat_interval(Duration::from_millis(gossip::HEARTBEAT_MS))
        .build()
        .map_err(|e| Error::Setup(format!("gossipsub: {e}")))
}

pub(crate) fn build(
    key: &libp2p::identity::Keypair,
    config: &Config,
    sync_bytes: crate::Traffic,
    gossip_metrics: &mut crate::Registry,
) -> Result<Parts, Error> {
    let peer = PeerId::from(key.public());
    let mut gossip = gossipsub::Behaviour::new_with_subscription_filter(
        gossipsub::MessageAuthenticity::Anonymous,
        gossip_config()?,
        subscription_filter(),
    )
    .map_err(|e| Error::Setup(format!("gossipsub: {e}")))?
    .with_metrics(gossip_metrics, gossipsub::MetricsConfig::default());
    let (params, thresholds) = scoring();
    gossip
        .with_peer_score(params, thresholds)
        .map_err(|e| Error::Setup(format!("gossipsub scoring: {e}")))?;
    let sync = request_response::Behaviour::with_codec(
        SyncCodec { bytes: sync_bytes },
        [(PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            // Each sync message is a stream: at most SYNC_STREAMS of ours to a peer at
            // once (the event loop queues the rest) and as many of a murmur peer's.
            .with_max_concurrent_streams(2 * crate::event_loop::SYNC_STREAMS + 64),
    );
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    // Provider records name who replicates what (murmur_core::channel::rendezvous): a
    // node that left should drop out within the hour, not the two days IPFS keeps.
    kad_config
        .set_provider_publication_interval(Some(PROVIDE_EVERY))
        .set_provider_record_ttl(Some(PROVIDE_EVERY * 3));
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
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
    let relay = config.relay_server.as_ref().map(|l| {
        relay::Behaviour::new(
            peer,
            relay::Config {
                max_reservations: l.max_reservations,
                max_circuits: l.max_circuits,
                max_circuits_per_peer: l.max_circuits_per_peer,
                max_circuit_bytes: l.circuit_bytes,
                max_circuit_duration: l.circuit_duration,
                ..relay::Config::default()
            },
        )
    });
    Ok(Parts {
        relay: relay.into(),
        dcutr: dcutr::Behaviour::new(peer),
        autonat: autonat::v1::Behaviour::new(
            peer,
            autonat::v1::Config {
                // Ask peers we are connected to anyway; never dial strangers for it.
                use_connected: true,
                ..autonat::v1::Config::default()
            },
        ),
        limits: libp2p::connection_limits::Behaviour::new(limits),
        // Listen address changes are pushed to peers: a reservation at a relay is a new
        // address that peers (and through them Kademlia) must learn.
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_push_listen_addr_updates(true),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        sync,
        admit: request_response::Behaviour::with_codec(
            AdmitCodec,
            [(ADMIT_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(config.admission_timeout),
        ),
        gossip,
        kad,
        mdns: mdns.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::{channel_score, gossip, gossip_config, scoring};

    #[test]
    fn gossipsub_accepts_the_push_settings() {
        let c = gossip_config().expect("gossipsub accepts the settings");
        assert_eq!(c.mesh_n(), gossip::MESH_N);
        assert_eq!(c.mesh_n_low(), gossip::MESH_N_LOW);
        assert_eq!(c.mesh_n_high(), gossip::MESH_N_HIGH);
        assert_eq!(c.gossip_lazy(), gossip::GOSSIP_LAZY);
        assert_eq!(c.history_gossip(), gossip::HISTORY_GOSSIP);
        assert_eq!(c.max_control_messages_sent(), gossip::CONTROL_IDS);
        assert_eq!(c.max_control_message_size(), gossip::CONTROL_BYTES);
        // gossipsub's decoder measures the largest frame murmur sends together with
        // its length prefix and what was read of the next frame (at most 8 KiB).
        assert!(c.max_transmit_size() >= super::MAX_GOSSIP_BYTES + 4 + 8 * 1024);
    }

    /// The control part of an RPC as gossipsub's decoder measures it (the `control`
    /// field with its tag and length): one IHAVE (or IWANT) of `ids` message ids of 32
    /// bytes (blake3) on a channel named with the longest pattern.
    fn control_bytes(ids: usize) -> usize {
        let varint = |n: usize| {
            if n < 128 {
                1
            } else if n < 16_384 {
                2
            } else {
                3
            }
        };
        let field = |len: usize| 1 + varint(len) + len;
        let topic = murmur_core::channel::PREFIX.len() + murmur_core::topic::MAX_TOPIC_BYTES;
        let ihave = field(topic) + ids * field(32);
        field(field(ihave))
    }

    #[test]
    fn what_a_node_announces_fits_what_every_murmur_node_reads() {
        // gossipsub's own default limit, which older murmur nodes enforce.
        let older_limit = 16 * 1024;
        assert!(
            control_bytes(gossip::CONTROL_IDS) <= older_limit,
            "{} bytes",
            control_bytes(gossip::CONTROL_IDS)
        );
        // What an older murmur node (gossipsub's 5,000 ids) sends, this one reads.
        assert!(control_bytes(5000) <= gossip::CONTROL_BYTES);
        // And the earlier setting did not fit: 500 ids were enough to cut a stream.
        assert!(control_bytes(500) > older_limit);
    }

    #[test]
    fn scoring_settings_are_valid_and_three_invalid_runs_reach_the_graylist() {
        let (params, thresholds) = scoring();
        params.validate().expect("valid score parameters");
        thresholds.validate().expect("valid thresholds");
        channel_score()
            .validate()
            .expect("valid channel parameters");
        // P4 is squared: 1, 4, 9 invalid deliveries' worth.
        let p4 = |n: f64| super::score::INVALID_WEIGHT * n * n;
        let most_positive = 1.0 + 5.0;
        assert!(p4(1.0) + most_positive > thresholds.publish_threshold);
        assert!(p4(1.0) < thresholds.gossip_threshold);
        assert!(p4(2.0) + most_positive < thresholds.publish_threshold);
        assert!(p4(2.0) > thresholds.graylist_threshold);
        assert!(p4(3.0) + most_positive < thresholds.graylist_threshold);
    }
}
