//! # murmur-p2p
//!
//! The libp2p layer of murmur: TCP and QUIC with Noise and Yamux, identify, ping,
//! gossipsub for live push (one gossipsub topic per interest pattern, a *channel*, see
//! `murmur_core::channel`; a message is a run of events; anonymous messages; message id
//! = blake3 hash of channel and run; manual validation; peer scoring fed by murmur's
//! verdicts),
//! the sync protocol over request-response substreams, mDNS and Kademlia for discovery.
//!
//! One task ([`EventLoop`]) owns the `Swarm`. Everyone else holds a cloneable
//! [`Handle`] that sends [`Command`]s over a bounded channel, and receives [`Event`]s
//! from another bounded channel. No replication logic lives here: sync messages are
//! handed to the core state machine as they are, gossip payloads to the daemon for
//! verification, whose verdict comes back as a [`Command::Validate`].

mod behaviour;
mod codec;
mod event_loop;
pub mod psk;

pub use behaviour::{
    Config, IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_GOSSIP_BYTES, RelayLimits, gossip, score,
};
pub use codec::{ADMIT_PROTOCOL, AdmitCodec, MAX_CREDENTIALS, PROTOCOL, SyncCodec};
pub use event_loop::{Command, Event, EventLoop, Handle, PeerInfo, Verdict, spawn};
pub use libp2p::gossipsub::MessageId;
pub use libp2p::metrics::Registry;
pub use libp2p::{Multiaddr, PeerId};

/// The ed25519 public key (a murmur node key, its author id) behind a peer id; `None`
/// for a peer id of another key type.
pub fn key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // An ed25519 peer id is the identity multihash (code 0) of the protobuf public key.
    if mh.code() != 0 {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(mh.digest())
        .ok()?
        .try_into_ed25519()
        .ok()
        .map(|k| k.to_bytes())
}

/// Errors starting the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node key could not be turned into a libp2p identity.
    #[error("node key: {0}")]
    Key(String),
    /// Building the transport or behaviour failed.
    #[error("network setup: {0}")]
    Setup(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Bytes of one application protocol, by direction (`in`, `out`).
#[derive(Debug, Clone, Default)]
pub struct Traffic(
    prometheus_client::metrics::family::Family<
        Direction,
        prometheus_client::metrics::counter::Counter,
    >,
);

/// Label: a connection's path (`direct`, `relayed`, `punched`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PathLabel {
    /// The path.
    pub path: &'static str,
}

/// Label: an outcome (`ok`, `failed`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

/// Label: `in` or `out`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Direction {
    /// `in` or `out`.
    pub direction: &'static str,
}

impl Traffic {
    pub(crate) fn add(&self, direction: &'static str, n: usize) {
        self.0
            .get_or_create(&Direction { direction })
            .inc_by(n as u64);
    }
}
