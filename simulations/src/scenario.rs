//! Scenarios: the fleet, the network and the workload, read from TOML.

use serde::Deserialize;

/// How live events are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Push {
    /// gossipsub's mesh, as murmur's p2p layer runs it today.
    Gossipsub,
    /// Plumtree (Leitão et al., 2007): eager push along a tree that forms from first
    /// arrivals (a duplicate prunes its link to lazy), lazy announcements of ids to the
    /// other neighbours in batches, and a graft when an announced message does not
    /// arrive in time. A candidate for the daemon, not what it runs yet.
    Plumtree,
}

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
    /// Push protocol.
    pub push: Push,
    /// Plumtree: interval of the batched id announcements to lazy neighbours, ms.
    pub lazy_ms: u64,
    /// Plumtree: how long an announced message may take to arrive before the node
    /// grafts the link it was announced on, ms.
    pub graft_ms: u64,
    /// Plumtree: a duplicate does not prune a node's tree links below this many (a
    /// shared tree cut by concurrent prunes from several publishers falls apart into
    /// pieces that only grafts join again).
    pub eager_min: usize,
    /// Mesh degree (gossipsub D), bounds D_lo and D_hi. The push defaults below are the
    /// p2p layer's (`murmur_p2p::gossip`; a test checks it).
    pub mesh_n: usize,
    /// Mesh lower bound.
    pub mesh_lo: usize,
    /// Mesh upper bound.
    pub mesh_hi: usize,
    /// Non-mesh neighbours that get IHAVE at each heartbeat (gossipsub D_lazy).
    pub lazy: usize,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Heartbeats of message ids announced by IHAVE (message cache window).
    pub history: usize,
    /// Message ids one IHAVE carries at most (gossipsub's `max_control_messages_sent`).
    pub ihave_ids: usize,
    /// Messages larger than this are announced with IDONTWANT to mesh peers on
    /// receipt (gossipsub 1.2). `None` turns IDONTWANT off.
    pub idontwant_above: Option<u64>,
    /// Time from receiving a run to holding and forwarding it (verify + durable write),
    /// ms.
    pub validate_ms: f64,
    /// Time from publishing to the first send (the author's durable write), ms.
    pub publish_ms: f64,
    /// Time a receiver waits after storing a run before it forwards it to its mesh, ms,
    /// so that IDONTWANT notices from mesh peers that already hold it arrive first
    /// (murmur: the forward hold). The run is held and delivered locally at once.
    pub hold_ms: f64,
    /// Link latency range, ms (fractions allowed: 0.05 is a LAN). Each link gets a
    /// latency from this range, fixed for the run.
    pub latency_ms: (f64, f64),
    /// Per-message jitter on top of a link's latency, as a fraction of it (messages on
    /// one link can overtake each other).
    pub jitter: f64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Upload bandwidth of every node, bytes/s: a node's messages leave one after
    /// another at this rate, then travel their link's latency. `None`: unlimited.
    pub bandwidth: Option<f64>,
    /// Nodes that publish.
    pub publishers: usize,
    /// Events per second per publisher.
    pub rate: f64,
    /// Byzantine nodes (after the publishers) that publish events with bad signatures at
    /// `rate`: pushed to every neighbour and served to anti-entropy from their own
    /// store. No honest node may ever store one (checked during the run).
    pub forgers: usize,
    /// Cloned devices: for each of the first `clones` publishers, another node gets a
    /// copy of its key and of its log's head at `clone_at` s and publishes its own
    /// events at `rate` from there, so the log forks at the next seq. A node that meets
    /// both sides must prove the fork and freeze the log; events past the fork are not
    /// required to reach everyone.
    pub clones: usize,
    /// When the keys are cloned, s.
    pub clone_at: f64,
    /// Verify pushed runs before storing them. Only for showing that the run's
    /// invariant checks catch a node that does not: `false` lets forged events in.
    pub verify_push: bool,
    /// Seconds of publishing.
    pub publish_s: f64,
    /// Seconds simulated after publishing stops (healing, catch-up).
    pub settle_s: f64,
    /// Anti-entropy interval, s (murmur's default is 10).
    pub anti_entropy_s: f64,
    /// Wait before a failed round runs again with the same peer, seconds (doubling while
    /// it keeps failing, up to `anti_entropy_s`): the daemon's default.
    pub retry_s: f64,
    /// Fraction of nodes interested in the topic (the others hold nothing and forward
    /// nothing, as a daemon whose `p2p.topics` does not match).
    pub interested: f64,
    /// Topic-aware discovery, the daemon's `p2p.topic_links`: each node's machine keeps
    /// this many connected peers that replicate its pattern, looking up the pattern's
    /// rendezvous key when short (0: off; the node has only its random links).
    pub topic_links: usize,
    /// How long a rendezvous lookup takes before its providers are dialed, ms (a
    /// Kademlia lookup: a few hops of the links' round trips).
    pub lookup_ms: f64,
    /// A partition: this fraction of nodes is cut from the rest from `at` to `heal` (s).
    pub partition: Option<Partition>,
    /// Fraction of nodes that leave per minute (each for `churn_offline_s`), while
    /// publishing lasts.
    pub churn_per_min: f64,
    /// How long a churned node stays away, s.
    pub churn_offline_s: f64,
    /// Fraction of churned nodes that return without their store (a replaced or reset
    /// device): they start empty and must get everything again.
    pub churn_wipe: f64,
    /// Swizzle-clog: nodes cut off one by one, then restored in random order.
    pub swizzle: Option<Swizzle>,
    /// Retention: interested nodes prune the topic with the daemon's policy. `None`:
    /// every node keeps everything.
    pub retention: Option<Retention>,
    /// A closed fleet: every node runs the daemon's permission check
    /// (`fleet::Fleet::may_write` in its replication machine) and replicates the
    /// policy log. `None`: an open fleet.
    pub fleet: Option<FleetPolicy>,
}

/// A closed fleet's scenario: the publishers hold the grant for the topic; node 0 (an
/// admin's node, never in a partition's small side) revokes the last node, itself a
/// publisher that keeps publishing and serving its store after its revocation (it
/// ignores it); the `unprivileged` nodes before it publish from the start without a
/// grant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetPolicy {
    /// When node 0 revokes the last node, s (effective at once).
    pub revoke_at: f64,
    /// Authors without a grant for the topic (members all the same).
    #[serde(default)]
    pub unprivileged: usize,
    /// Nodes run the permission check (as the daemon does). Only for showing what the
    /// invariant catches without it: `false` leaves it out of every machine.
    #[serde(default = "yes")]
    pub enforce: bool,
}

/// Retention on the topic: one rule, as a `[[retention]]` entry of the daemon's
/// config, and its prune passes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest this many events per log.
    pub max_events_per_log: Option<u64>,
    /// Keep events younger than this, s.
    pub max_age_s: Option<f64>,
    /// Interval of each node's prune passes, s (the daemon's `store.prune_interval`).
    #[serde(default = "every_s")]
    pub every_s: f64,
    /// Fraction of the interested nodes (publishers aside) that keep everything
    /// (gateways, archives): a node far behind must still pull only its window.
    #[serde(default)]
    pub archives: f64,
    /// A node far behind asks only for its window (`sync::Config::keeps_from`, as the
    /// daemon does). Only for showing what the check counts without it: `false` pulls
    /// from the node's head, or from a peer's base.
    #[serde(default = "yes")]
    pub window_pulls: bool,
}

fn yes() -> bool {
    true
}

fn every_s() -> f64 {
    10.0
}

/// Swizzle-clog: from `at`, one more of `k` random nodes loses every link each
/// `step_s`; once all `k` are cut, they come back one at a time, in random order, one
/// each `step_s`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swizzle {
    /// Nodes cut.
    pub k: usize,
    /// When the first is cut, s.
    pub at: f64,
    /// Interval between cuts and between restores, s.
    pub step_s: f64,
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
            push: Push::Gossipsub,
            lazy_ms: 250,
            graft_ms: 250,
            eager_min: 1,
            mesh_n: 3,
            mesh_lo: 2,
            mesh_hi: 3,
            lazy: 1,
            heartbeat_ms: 700,
            history: 2,
            ihave_ids: 400,
            idontwant_above: Some(1000),
            validate_ms: 1.0,
            publish_ms: 1.0,
            hold_ms: 0.0,
            latency_ms: (20.0, 100.0),
            jitter: 0.1,
            loss: 0.0,
            duplicate: 0.0,
            bandwidth: None,
            publishers: 5,
            rate: 2.0,
            forgers: 0,
            clones: 0,
            clone_at: 20.0,
            verify_push: true,
            publish_s: 20.0,
            settle_s: 30.0,
            anti_entropy_s: 10.0,
            retry_s: 1.0,
            interested: 1.0,
            topic_links: 3,
            lookup_ms: 400.0,
            partition: None,
            churn_per_min: 0.0,
            churn_offline_s: 20.0,
            churn_wipe: 0.0,
            swizzle: None,
            retention: None,
            fleet: None,
        }
    }
}
