//! Prometheus metrics of the node, served at `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label for API requests and refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// Label for an MQTT bridge (its name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabel {
    /// The bridge's name in `[[mqtt.bridge]]`.
    pub bridge: String,
}

/// Label for publish request kinds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `single`, `batch` or `raw`.
    pub kind: String,
}

/// Label for the retention rule that pruned events (its pattern).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule's pattern, e.g. `sensors/#`.
    pub rule: String,
}

/// Labels of an event the fleet's policy refused: why, and how it came.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refused {
    /// `not_a_member`, `no_grant`, `revoked`, `expired`, `reserved`.
    pub reason: String,
    /// `gossip` or `sync`.
    pub path: String,
}

/// Label for how an event arrived.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Path {
    /// `gossip` or `sync`.
    pub path: String,
}

/// Label for a node's state in the fleet view: `up` or `stale`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    /// `up` or `stale`.
    pub state: String,
}

/// Label for sync round outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundOutcome {
    /// `done` or `failed`.
    pub outcome: String,
}

/// Why the replicator banned a peer: `bad_gossip` (it forwarded invalid gossip
/// repeatedly) or `sync_violation` (it broke the sync protocol).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BanReason {
    /// One of [`BAN_REASONS`].
    pub reason: &'static str,
}

/// The label values of `murmur_peer_bans_total` (each series exists from the start).
pub const BAN_REASONS: [&str; 2] = ["bad_gossip", "sync_violation"];

/// Labels of one replication lag series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicPeer {
    /// The murmur topic.
    pub topic: String,
    /// The peer id.
    pub peer: String,
}

/// Label for whose document changes were applied: `local` or `remote`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Origin {
    /// `local` (this node's key) or `remote` (another node's).
    pub origin: &'static str,
}

/// Most (topic, peer) series of `murmur_replication_lag_events`; a new pair beyond it
/// gets no series until another one is removed (its peer disconnects).
pub const LAG_SERIES_MAX: usize = 256;
/// Most bans tracked for `murmur_peers_banned`; beyond it the ban ending first is
/// forgotten (the gauge then undercounts, it never grows without bound).
const BANS_TRACKED_MAX: usize = 4096;

/// All metric handles. Cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    /// Events published locally and stored.
    pub events_published: Counter,
    /// Publish requests accepted, by kind.
    pub publish_requests: Family<Kind, Counter>,
    /// Requests refused, by reason (queue_full, bad_request, too_large, ...).
    pub api_refused: Family<Reason, Counter>,
    /// Group commits written.
    pub commits: Counter,
    /// Events per group commit.
    pub commit_events: Histogram,
    /// Time to write one group commit (WriteBatch + WAL sync), seconds.
    pub commit_seconds: Histogram,
    /// Time from a publish request entering the queue to its acknowledgement, seconds.
    pub publish_seconds: Histogram,
    /// Publish requests waiting for the writer.
    pub ingest_queue: Gauge,
    /// Open follow streams.
    pub followers: Gauge,
    /// 1 when the background scan after start found the store damaged or inconsistent.
    pub store_damaged: Gauge,
    /// Events stored (next local offset).
    pub stored_events: Gauge,
    /// Logs frozen by a fork proof.
    pub forks: Gauge,
    /// Database size on disk, bytes.
    pub store_disk_bytes: Gauge,
    /// The database's disk budget (`store.max_disk_mb`), bytes; 0 for none.
    pub store_disk_budget_bytes: Gauge,
    /// 1 while the store cannot write because the disk is full.
    pub store_disk_full: Gauge,
    /// 1 while pulls are paused because the database is over its budget's pull limit.
    pub pulls_paused: Gauge,
    /// 1 while live gossip is held by the disk budget (past 55% of it).
    pub gossip_held: Gauge,
    /// Times pulls were paused by the disk budget.
    pub pull_pauses: Counter,
    /// RocksDB memtables + block cache, bytes.
    pub store_memory_bytes: Gauge,
    /// Resident set size of the daemon, bytes.
    pub resident_bytes: Gauge,
    /// Remote events stored, by path (gossip, sync).
    pub events_received: Family<Path, Counter>,
    /// Remote input refused, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Gossiped events we already held.
    pub duplicates: Counter,
    /// A connected peer's own events that came by sync after a round with it had
    /// ended on their topic: its live push to us was lost.
    pub push_lost: Counter,
    /// Connections closed and dialed again because a peer's live push was lost.
    pub push_reconnects: Counter,
    /// Rendezvous lookups for peers that replicate a topic we want.
    pub topic_lookups: Counter,
    /// Sync rounds finished, by outcome.
    pub sync_rounds: Family<RoundOutcome, Counter>,
    /// Sync sessions in progress.
    pub sync_sessions: Gauge,
    /// Connected peers.
    pub peers: Gauge,
    /// Peers banned by the replicator, by reason.
    pub peer_bans: Family<BanReason, Counter>,
    /// Peers banned now (their ban has not ended).
    pub peers_banned: Gauge,
    /// When each banned peer's ban ends, by peer id: what `peers_banned` counts.
    bans: Arc<Mutex<BTreeMap<String, Instant>>>,
    /// Per topic and connected peer, events the peer held that we lacked when its last
    /// round on the topic began (at most [`LAG_SERIES_MAX`] series).
    pub replication_lag: Family<TopicPeer, Gauge>,
    /// The (topic, peer) series of `replication_lag` (a `Family` cannot count its own).
    lag_series: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// Documents in memory.
    pub docs_loaded: Gauge,
    /// Estimated memory of the documents in memory, bytes.
    pub docs_memory_bytes: Gauge,
    /// Document changes applied to documents in memory, by origin.
    pub docs_changes: Family<Origin, Counter>,
    /// Document changes found to crash automerge (skipped from then on).
    pub docs_poisoned: Counter,
    /// Document snapshot events this node published (to compact their topics).
    pub doc_snapshots_published: Counter,
    /// Document snapshots whose content this node took to fill a compacted history.
    pub doc_snapshots_applied: Counter,
    /// Other nodes' document snapshots found false against the history held here.
    pub doc_snapshots_refused: Counter,
    /// Remote events the fleet's policy refused, by reason.
    pub fleet_events_refused: Family<Refused, Counter>,
    /// Peers refused at connect, or dropped, by the fleet's policy, by reason.
    pub fleet_peers_refused: Family<Reason, Counter>,
    /// Policy entries applied (certificates, grants, revocations), by kind.
    pub fleet_entries: Family<Reason, Counter>,
    /// Events revoked keys wrote after their revocation, stored before this node knew
    /// of it, and taken back.
    pub fleet_taken_back: Counter,
    /// Nodes in this node's fleet view (from heartbeats), by state.
    pub fleet_nodes: Family<State, Gauge>,
    /// Heartbeats this node published.
    pub heartbeats_published: Counter,
    /// Publishes answered from their idempotency key (a retry; nothing stored).
    pub idempotent_repeats: Counter,
    /// The ingest queue's capacity, requests.
    pub ingest_queue_capacity: Gauge,
    /// Events pruned by retention, by rule.
    pub pruned_events: Family<RuleLabel, Counter>,
    /// Their bytes, by rule.
    pub pruned_bytes: Family<RuleLabel, Counter>,
    /// Retention passes that pruned something.
    pub prune_passes: Counter,
    /// Open MQTT connections.
    pub mqtt_connections: Gauge,
    /// MQTT PUBLISH packets stored as events.
    pub mqtt_published: Counter,
    /// Events sent to MQTT subscribers.
    pub mqtt_delivered: Counter,
    /// Events a bridge's upstream broker acknowledged, by bridge.
    pub bridge_forwarded: Family<BridgeLabel, Counter>,
    /// 1 while a bridge is connected to its broker, by bridge.
    pub bridge_connected: Family<BridgeLabel, Gauge>,
    /// Times a bridge found events of its pattern pruned before it forwarded them.
    pub bridge_skipped: Family<BridgeLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `murmur` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            events_published: Counter::default(),
            publish_requests: Family::default(),
            api_refused: Family::default(),
            commits: Counter::default(),
            commit_events: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            publish_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            ingest_queue: Gauge::default(),
            followers: Gauge::default(),
            store_damaged: Gauge::default(),
            stored_events: Gauge::default(),
            forks: Gauge::default(),
            store_disk_bytes: Gauge::default(),
            store_disk_budget_bytes: Gauge::default(),
            store_disk_full: Gauge::default(),
            pulls_paused: Gauge::default(),
            gossip_held: Gauge::default(),
            pull_pauses: Counter::default(),
            store_memory_bytes: Gauge::default(),
            resident_bytes: Gauge::default(),
            events_received: Family::default(),
            rejected: Family::default(),
            duplicates: Counter::default(),
            push_lost: Counter::default(),
            push_reconnects: Counter::default(),
            topic_lookups: Counter::default(),
            sync_rounds: Family::default(),
            sync_sessions: Gauge::default(),
            peers: Gauge::default(),
            peer_bans: Family::default(),
            peers_banned: Gauge::default(),
            bans: Arc::default(),
            replication_lag: Family::default(),
            lag_series: Arc::default(),
            docs_loaded: Gauge::default(),
            docs_memory_bytes: Gauge::default(),
            docs_changes: Family::default(),
            docs_poisoned: Counter::default(),
            doc_snapshots_published: Counter::default(),
            doc_snapshots_applied: Counter::default(),
            doc_snapshots_refused: Counter::default(),
            fleet_events_refused: Family::default(),
            fleet_peers_refused: Family::default(),
            fleet_entries: Family::default(),
            fleet_taken_back: Counter::default(),
            fleet_nodes: Family::default(),
            heartbeats_published: Counter::default(),
            idempotent_repeats: Counter::default(),
            mqtt_connections: Gauge::default(),
            mqtt_published: Counter::default(),
            mqtt_delivered: Counter::default(),
            bridge_forwarded: Family::default(),
            bridge_connected: Family::default(),
            bridge_skipped: Family::default(),
            ingest_queue_capacity: Gauge::default(),
            pruned_events: Family::default(),
            pruned_bytes: Family::default(),
            prune_passes: Counter::default(),
        };
        // Series that exist from the start, so rates and alerts see them at 0.
        for reason in BAN_REASONS {
            m.peer_bans.get_or_create_owned(&BanReason { reason });
        }
        for origin in ["local", "remote"] {
            m.docs_changes.get_or_create_owned(&Origin { origin });
        }
        // What the alert rules and the Grafana dashboard (monitoring/) rate over.
        for outcome in ["done", "failed", "lagging", "stuck"] {
            m.session_series(outcome);
        }
        for path in ["gossip", "sync"] {
            let _ = m.events_received.get_or_create(&Path { path: path.into() });
        }
        let _ = m.api_refused.get_or_create(&Reason {
            reason: "queue_full".into(),
        });
        let heartbeats = RuleLabel {
            rule: murmur_core::health::HEALTH_TOPIC.into(),
        };
        let _ = m.pruned_events.get_or_create(&heartbeats);
        let _ = m.pruned_bytes.get_or_create(&heartbeats);
        for state in ["up", "stale"] {
            let _ = m.fleet_nodes.get_or_create(&State {
                state: state.into(),
            });
        }
        let r = registry.sub_registry_with_prefix("murmur");
        r.register(
            "events_published",
            "Events published locally and stored",
            m.events_published.clone(),
        );
        r.register(
            "publish_requests",
            "Publish requests accepted, by kind",
            m.publish_requests.clone(),
        );
        r.register(
            "api_refused",
            "API requests refused, by reason",
            m.api_refused.clone(),
        );
        r.register(
            "commits",
            "Group commits written (one WriteBatch and WAL sync each)",
            m.commits.clone(),
        );
        r.register(
            "commit_events",
            "Events per group commit",
            m.commit_events.clone(),
        );
        r.register(
            "commit_seconds",
            "Time to write one group commit",
            m.commit_seconds.clone(),
        );
        r.register(
            "publish_seconds",
            "Publish request queue-to-acknowledgement time",
            m.publish_seconds.clone(),
        );
        r.register(
            "ingest_queue_requests",
            "Publish requests waiting for the writer",
            m.ingest_queue.clone(),
        );
        r.register("followers", "Open follow streams", m.followers.clone());
        r.register(
            "store_damaged",
            "1 when the scan after start found the store damaged or inconsistent (see murmur status)",
            m.store_damaged.clone(),
        );
        r.register(
            "stored_events",
            "Events stored on this node",
            m.stored_events.clone(),
        );
        r.register("forks", "Logs frozen by a fork proof", m.forks.clone());
        r.register(
            "store_disk_bytes",
            "Bytes the database occupies on disk",
            m.store_disk_bytes.clone(),
        );
        r.register(
            "store_disk_budget_bytes",
            "The database's disk budget (store.max_disk_mb), bytes; 0 for none",
            m.store_disk_budget_bytes.clone(),
        );
        r.register(
            "store_disk_full",
            "1 while the disk is full: publishing answers 507 and replication pulls nothing (it still serves)",
            m.store_disk_full.clone(),
        );
        r.register(
            "pulls_paused",
            "1 while sync pulls are paused because the database is over 50% of store.max_disk_mb (until pruning brings it to 40%); live gossip goes on",
            m.pulls_paused.clone(),
        );
        r.register(
            "gossip_held",
            "1 while live gossip is left to the peers because the database is over 55% of store.max_disk_mb (until pruning brings it to 40%; what was left is pulled then)",
            m.gossip_held.clone(),
        );
        r.register(
            "pull_pauses",
            "Times sync pulls were paused by the disk budget",
            m.pull_pauses.clone(),
        );
        r.register(
            "store_memory_bytes",
            "RocksDB memtables and block cache",
            m.store_memory_bytes.clone(),
        );
        r.register(
            "resident_bytes",
            "Resident memory of the daemon",
            m.resident_bytes.clone(),
        );
        r.register(
            "events_received",
            "Remote events stored, by path",
            m.events_received.clone(),
        );
        r.register(
            "rejected",
            "Remote input refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "fleet_events_refused",
            "Remote events refused by the fleet's policy (not stored, not forwarded), by reason (not_a_member, no_grant, revoked, expired, reserved) and path (gossip, sync)",
            m.fleet_events_refused.clone(),
        );
        r.register(
            "fleet_peers_refused",
            "Peers refused at connect or dropped by the fleet's policy, by reason: no_credentials, bad_cert, not_a_member, expired, revoked",
            m.fleet_peers_refused.clone(),
        );
        r.register(
            "fleet_entries",
            "Fleet policy entries applied, by kind: member, grant, revoke",
            m.fleet_entries.clone(),
        );
        r.register(
            "fleet_events_taken_back",
            "Events revoked keys wrote after their revocation that this node had stored before it learned of it, and took back",
            m.fleet_taken_back.clone(),
        );
        r.register(
            "fleet_nodes",
            "Nodes in this node's fleet view, from their heartbeats on $fleet/health, by state: up, or stale (not heard from in 3 of their heartbeat intervals)",
            m.fleet_nodes.clone(),
        );
        r.register(
            "heartbeats_published",
            "Heartbeats this node published on $fleet/health",
            m.heartbeats_published.clone(),
        );
        r.register(
            "mqtt_connections",
            "Open connections to the MQTT listener",
            m.mqtt_connections.clone(),
        );
        r.register(
            "mqtt_published",
            "MQTT PUBLISH packets queued to be stored as events (refusals close the connection)",
            m.mqtt_published.clone(),
        );
        r.register(
            "mqtt_delivered",
            "Events sent to MQTT subscribers",
            m.mqtt_delivered.clone(),
        );
        r.register(
            "bridge_forwarded",
            "Events an MQTT bridge's upstream broker acknowledged, by bridge",
            m.bridge_forwarded.clone(),
        );
        r.register(
            "bridge_connected",
            "1 while an MQTT bridge is connected to its upstream broker, by bridge",
            m.bridge_connected.clone(),
        );
        r.register(
            "bridge_pruned_gaps",
            "Times an MQTT bridge found events of its pattern that retention pruned before it forwarded them (they are skipped), by bridge",
            m.bridge_skipped.clone(),
        );
        r.register(
            "idempotent_repeats",
            "Events of publishes answered from their idempotency key: a retry got what the first publish stored, and nothing was stored again",
            m.idempotent_repeats.clone(),
        );
        r.register(
            "ingest_queue_capacity_requests",
            "Capacity of the ingest queue, requests (ingest.queue_requests)",
            m.ingest_queue_capacity.clone(),
        );
        r.register(
            "duplicates",
            "Gossiped events already held",
            m.duplicates.clone(),
        );
        r.register(
            "push_lost",
            "A connected peer's own events that came by sync after a round with it had ended on their topic: its live push to us was lost",
            m.push_lost.clone(),
        );
        r.register(
            "push_reconnects",
            "Connections closed and dialed again because a peer's live push was lost (3 rounds in a row brought its events by sync; at most once a minute per peer)",
            m.push_reconnects.clone(),
        );
        r.register(
            "topic_lookups",
            "Kademlia lookups for peers that replicate an interest pattern with too few such peers connected",
            m.topic_lookups.clone(),
        );
        r.register(
            "sync_rounds",
            "Sync rounds finished, by outcome",
            m.sync_rounds.clone(),
        );
        r.register(
            "sync_sessions",
            "Sync sessions in progress",
            m.sync_sessions.clone(),
        );
        r.register("peers", "Connected peers", m.peers.clone());
        r.register(
            "peer_bans",
            "Peers the replicator banned (disconnected and refused for 10 minutes), by reason: \
             bad_gossip (forwarded invalid gossip 3 times), sync_violation (broke the sync \
             protocol once)",
            m.peer_bans.clone(),
        );
        r.register(
            "peers_banned",
            "Peers the replicator has banned now (a ban lasts 10 minutes)",
            m.peers_banned.clone(),
        );
        r.register(
            "replication_lag_events",
            "Per topic and connected peer: events the peer held that this node lacked when \
             their last sync round on the topic began, from the version vector the peer sent \
             (0 when the digests were equal). The round then pulls them: this is how far \
             behind the node was, not is. At most 256 series; a peer's series go when it \
             disconnects",
            m.replication_lag.clone(),
        );
        r.register("docs_loaded", "Documents in memory", m.docs_loaded.clone());
        r.register(
            "docs_memory_bytes",
            "Estimated memory of the documents in memory (22 bytes per byte of their saved \
             form)",
            m.docs_memory_bytes.clone(),
        );
        r.register(
            "docs_changes_applied",
            "Document changes applied to documents in memory, by origin: local (made with this \
             node's key: through the API, or replayed from the store when a document loads), \
             remote (made by other nodes, applied from the store as they arrive or when a \
             document loads)",
            m.docs_changes.clone(),
        );
        r.register(
            "docs_poisoned_changes",
            "Document changes found to crash automerge, skipped from then on",
            m.docs_poisoned.clone(),
        );
        r.register(
            "doc_snapshots_published",
            "Document snapshot events this node published, behind which it compacts their topics",
            m.doc_snapshots_published.clone(),
        );
        r.register(
            "doc_snapshots_applied",
            "Document snapshots whose content this node took to fill a history compacted away (a log it started over at a peer's base)",
            m.doc_snapshots_applied.clone(),
        );
        r.register(
            "doc_snapshots_refused",
            "Other nodes' document snapshots found false against the history held here (leaving out a change they claim to cover, or holding a change its author never signed): set aside, never used",
            m.doc_snapshots_refused.clone(),
        );
        r.register(
            "pruned_events",
            "Events pruned by retention, by rule (its pattern)",
            m.pruned_events.clone(),
        );
        r.register(
            "pruned_bytes",
            "Bytes of events pruned by retention, by rule (its pattern)",
            m.pruned_bytes.clone(),
        );
        r.register(
            "prune_passes",
            "Retention passes that pruned something",
            m.prune_passes.clone(),
        );
        m
    }

    /// Counts a ban of `peer` for `reason` (one of [`BAN_REASONS`]) lasting until
    /// `until`, and updates the gauge of peers banned now.
    pub fn banned(&self, reason: &'static str, peer: &str, until: Instant) {
        self.peer_bans.get_or_create(&BanReason { reason }).inc();
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        if bans.len() >= BANS_TRACKED_MAX
            && !bans.contains_key(peer)
            && let Some(first) = bans
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(p, _)| p.clone())
        {
            bans.remove(&first);
        }
        bans.insert(peer.to_owned(), until);
        self.peers_banned.set(bans.len() as i64);
    }

    /// Drops the bans that ended by `now` from the gauge of peers banned now (the
    /// network layer lets a peer back in from then on).
    pub fn expire_bans(&self, now: Instant) {
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        if bans.is_empty() {
            return;
        }
        bans.retain(|_, end| *end > now);
        self.peers_banned.set(bans.len() as i64);
    }

    /// Sets how many events `peer` held on `topic` that we lacked at the start of their
    /// last round. A new (topic, peer) pair gets no series once [`LAG_SERIES_MAX`] exist.
    pub fn set_lag(&self, topic: &str, peer: &str, events: u64) {
        let key = (topic.to_owned(), peer.to_owned());
        let mut series = self
            .lag_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !series.contains(&key) {
            if series.len() >= LAG_SERIES_MAX {
                return;
            }
            series.insert(key.clone());
        }
        let (topic, peer) = key;
        self.replication_lag
            .get_or_create(&TopicPeer { topic, peer })
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// Removes the lag series of `peer` on `topic` (when the peer disconnects).
    pub fn forget_lag(&self, topic: &str, peer: &str) {
        let key = (topic.to_owned(), peer.to_owned());
        let mut series = self
            .lag_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if series.remove(&key) {
            let (topic, peer) = key;
            self.replication_lag.remove(&TopicPeer { topic, peer });
        }
    }

    /// Counts document changes applied, by `origin` (`local` or `remote`).
    pub fn doc_changes(&self, origin: &'static str, n: u64) {
        if n > 0 {
            self.docs_changes
                .get_or_create(&Origin { origin })
                .inc_by(n);
        }
    }

    /// Counts what retention pruned for `rule` (a pattern, or the disk budget's label).
    pub fn pruned(&self, rule: &str, done: murmur_core::Pruned) {
        let label = RuleLabel {
            rule: rule.to_owned(),
        };
        self.pruned_events.get_or_create(&label).inc_by(done.events);
        self.pruned_bytes.get_or_create(&label).inc_by(done.bytes);
    }

    /// Counts remote events stored via `path`.
    pub fn received(&self, path: &str, n: u64) {
        self.events_received
            .get_or_create(&Path {
                path: path.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts an event, or a peer, the fleet's policy refused (or an entry applied).
    pub fn count(family: &Family<Reason, Counter>, reason: &str) {
        family
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts refused remote input.
    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a finished sync round.
    pub fn session(&self, outcome: &str) {
        self.session_series(outcome).inc();
    }

    fn session_series(&self, outcome: &str) -> Counter {
        self.sync_rounds
            .get_or_create(&RoundOutcome {
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    /// Counts a refusal.
    pub fn refused(&self, reason: &str) {
        self.api_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Resident set size of this process from /proc, bytes (0 where unavailable).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).expect("encodes");
        s
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn bans_are_counted_by_reason_and_the_gauge_follows_their_end() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let t = text(&registry);
        assert!(
            has(&t, "murmur_peer_bans_total{reason=\"bad_gossip\"} 0"),
            "{t}"
        );
        assert!(has(&t, "murmur_peers_banned 0"), "{t}");
        let now = Instant::now();
        m.banned("bad_gossip", "peer-a", now + Duration::from_secs(600));
        m.banned("sync_violation", "peer-b", now + Duration::from_secs(1));
        m.banned("bad_gossip", "peer-a", now + Duration::from_secs(600));
        let t = text(&registry);
        assert!(
            has(&t, "murmur_peer_bans_total{reason=\"bad_gossip\"} 2"),
            "{t}"
        );
        assert!(
            has(&t, "murmur_peer_bans_total{reason=\"sync_violation\"} 1"),
            "{t}"
        );
        assert!(has(&t, "murmur_peers_banned 2"), "{t}");
        m.expire_bans(now + Duration::from_secs(2));
        assert!(has(&text(&registry), "murmur_peers_banned 1"));
        m.expire_bans(now + Duration::from_secs(600));
        assert!(has(&text(&registry), "murmur_peers_banned 0"));
    }

    #[test]
    fn the_ban_gauge_is_bounded() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let now = Instant::now();
        for i in 0..BANS_TRACKED_MAX + 10 {
            m.banned(
                "bad_gossip",
                &format!("p{i}"),
                now + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(m.peers_banned.get(), BANS_TRACKED_MAX as i64);
    }

    #[test]
    fn lag_series_are_capped_and_removed() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let series = |r: &Registry| {
            text(r)
                .lines()
                .filter(|l| l.starts_with("murmur_replication_lag_events{"))
                .count()
        };
        for i in 0..LAG_SERIES_MAX + 10 {
            m.set_lag("site/7", &format!("p{i}"), i as u64);
        }
        assert_eq!(series(&registry), LAG_SERIES_MAX);
        m.set_lag("site/7", "p0", 7);
        assert!(has(
            &text(&registry),
            "murmur_replication_lag_events{topic=\"site/7\",peer=\"p0\"} 7"
        ));
        m.forget_lag("site/7", "p0");
        assert_eq!(series(&registry), LAG_SERIES_MAX - 1);
        m.set_lag("site/7", "new", u64::MAX);
        let t = text(&registry);
        assert!(
            has(
                &t,
                &format!(
                    "murmur_replication_lag_events{{topic=\"site/7\",peer=\"new\"}} {}",
                    i64::MAX
                )
            ),
            "{t}"
        );
        assert_eq!(series(&registry), LAG_SERIES_MAX);
    }

    #[test]
    fn document_metrics_are_exported() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.docs_loaded.set(3);
        m.docs_memory_bytes.set(4096);
        m.doc_changes("local", 5);
        m.doc_changes("remote", 2);
        m.docs_poisoned.inc();
        let t = text(&registry);
        for line in [
            "murmur_docs_loaded 3",
            "murmur_docs_memory_bytes 4096",
            "murmur_docs_changes_applied_total{origin=\"local\"} 5",
            "murmur_docs_changes_applied_total{origin=\"remote\"} 2",
            "murmur_docs_poisoned_changes_total 1",
        ] {
            assert!(has(&t, line), "{line} missing from\n{t}");
        }
    }
}
