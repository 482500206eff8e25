//! Prometheus metrics of the node, served at `/metrics`.

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

/// Label for publish request kinds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `single`, `batch` or `raw`.
    pub kind: String,
}

/// Label for how an event arrived.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Path {
    /// `gossip` or `sync`.
    pub path: String,
}

/// Label for sync round outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundOutcome {
    /// `done` or `failed`.
    pub outcome: String,
}

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
    /// Events stored (next local offset).
    pub stored_events: Gauge,
    /// Logs frozen by a fork proof.
    pub forks: Gauge,
    /// Database size on disk, bytes.
    pub store_disk_bytes: Gauge,
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
    /// Sync rounds finished, by outcome.
    pub sync_rounds: Family<RoundOutcome, Counter>,
    /// Sync sessions in progress.
    pub sync_sessions: Gauge,
    /// Connected peers.
    pub peers: Gauge,
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
            stored_events: Gauge::default(),
            forks: Gauge::default(),
            store_disk_bytes: Gauge::default(),
            store_memory_bytes: Gauge::default(),
            resident_bytes: Gauge::default(),
            events_received: Family::default(),
            rejected: Family::default(),
            duplicates: Counter::default(),
            sync_rounds: Family::default(),
            sync_sessions: Gauge::default(),
            peers: Gauge::default(),
        };
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
            "duplicates",
            "Gossiped events already held",
            m.duplicates.clone(),
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
        m
    }

    /// Counts remote events stored via `path`.
    pub fn received(&self, path: &str, n: u64) {
        self.events_received
            .get_or_create(&Path {
                path: path.to_owned(),
            })
            .inc_by(n);
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
        self.sync_rounds
            .get_or_create(&RoundOutcome {
                outcome: outcome.to_owned(),
            })
            .inc();
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
