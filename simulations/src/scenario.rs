//! Scenarios: the fleet, the network and the workload, read from TOML.

use serde::Deserialize;

/// A scenario: the fleet, the network and the workload. Every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for the report.
    pub name: String,
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Connections per node (random graph, as discovery would give).
    pub degree: usize,
    /// Mesh degree (gossipsub D), bounds D_lo and D_hi.
    pub mesh_n: usize,
    /// Mesh lower bound.
    pub mesh_lo: usize,
    /// Mesh upper bound.
    pub mesh_hi: usize,
    /// Non-mesh neighbours that get IHAVE at each heartbeat (gossipsub D_lazy).
    pub lazy: usize,
    /// Heartbeat interval, ms (murmur's p2p layer uses 700).
    pub heartbeat_ms: u64,
    /// Heartbeats of message ids announced by IHAVE (message cache window).
    pub history: usize,
    /// Messages larger than this are announced with IDONTWANT to mesh peers on
    /// receipt (gossipsub 1.2; murmur uses 256). `None` turns IDONTWANT off.
    pub idontwant_above: Option<u64>,
    /// Time from receiving a run to holding and forwarding it (verify + durable write),
    /// ms.
    pub validate_ms: f64,
    /// Time from publishing to the first send (the author's durable write), ms.
    pub publish_ms: f64,
    /// Link latency range, ms (fractions allowed: 0.05 is a LAN).
    pub latency_ms: (f64, f64),
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Nodes that publish.
    pub publishers: usize,
    /// Events per second per publisher.
    pub rate: f64,
    /// Seconds of publishing.
    pub publish_s: f64,
    /// Seconds simulated after publishing stops (healing, catch-up).
    pub settle_s: f64,
    /// Anti-entropy interval, s (murmur's default is 10).
    pub anti_entropy_s: f64,
    /// Fraction of nodes interested in the topic (the others hold nothing).
    pub interested: f64,
    /// A partition: this fraction of nodes is cut from the rest from `at` to `heal` (s).
    pub partition: Option<Partition>,
    /// Fraction of nodes that leave per minute (each for `churn_offline_s`), while
    /// publishing lasts.
    pub churn_per_min: f64,
    /// How long a churned node stays away, s.
    pub churn_offline_s: f64,
}

/// A partition of the fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Fraction of nodes on the small side.
    pub fraction: f64,
    /// When it starts, s.
    pub at: f64,
    /// When it heals, s.
    pub heal: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            seed: 1,
            nodes: 50,
            degree: 8,
            mesh_n: 6,
            mesh_lo: 5,
            mesh_hi: 12,
            lazy: 6,
            heartbeat_ms: 700,
            history: 3,
            idontwant_above: Some(256),
            validate_ms: 1.0,
            publish_ms: 1.0,
            latency_ms: (20.0, 100.0),
            loss: 0.0,
            duplicate: 0.0,
            publishers: 5,
            rate: 2.0,
            publish_s: 20.0,
            settle_s: 30.0,
            anti_entropy_s: 10.0,
            interested: 1.0,
            partition: None,
            churn_per_min: 0.0,
            churn_offline_s: 20.0,
        }
    }
}
