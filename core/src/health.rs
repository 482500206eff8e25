//! Fleet health as data: every node publishes a small signed heartbeat on the reserved
//! topic [`HEALTH_TOPIC`], kept latest-only (one event per node, by the built-in
//! retention rule, [`crate::retention::Policy::rule_for`]). Any node then answers for
//! the whole fleet, including nodes it never connected to: [`assess`] reads one
//! heartbeat against the reader's clock.
//!
//! Pure: the daemon gathers the figures and publishes; this module says what a
//! heartbeat holds and what counts as a problem, so the daemon, the CLI and the tests
//! share one rule.

use serde::{Deserialize, Serialize};

/// The reserved topic of heartbeats. Every node writes its own log there and
/// replicates everyone's.
pub const HEALTH_TOPIC: &str = "$fleet/health";
/// Content type of a heartbeat (its body is JSON, readable with `murmur sub`).
pub const CONTENT_TYPE: &str = "application/vnd.murmur.heartbeat+json";
/// Largest encoded heartbeat a node accepts or writes.
pub const MAX_BYTES: usize = 8 * 1024;
/// Most peers a heartbeat lists by name (the count covers all of them).
pub const MAX_PEERS: usize = 32;
/// Most topics a heartbeat lists by lag (the worst ones).
pub const MAX_LAG_TOPICS: usize = 8;
/// Lag samples a heartbeat carries, oldest first, the current one last.
pub const LAG_HISTORY: usize = 4;
/// A node not heard from in this many of its own intervals is stale.
pub const STALE_INTERVALS: u64 = 3;
/// A disk over this share of its budget is flagged, percent.
pub const DISK_WARN_PCT: u64 = 80;
/// A certificate expiring within this is flagged.
pub const CERT_WARN_MS: u64 = 30 * 24 * 3600 * 1000;

/// One peer in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// Its libp2p peer id.
    pub peer: String,
    /// `direct` or `relayed`.
    pub path: String,
}

/// One topic's lag in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicLag {
    /// The topic.
    pub topic: String,
    /// Events the node lacked from its furthest-ahead peer at their last round.
    pub behind: u64,
}

/// What a node says about itself, every `fleet.heartbeat_interval`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    /// The daemon's version.
    pub version: String,
    /// The host name, for people (not an identity: the author id is).
    pub host: String,
    /// The node's heartbeat interval, ms: readers judge staleness by it.
    pub interval_ms: u64,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Events stored (the arrival counter).
    pub events: u64,
    /// Bytes of the database on disk.
    pub disk_bytes: u64,
    /// The database's disk budget, bytes (0: none).
    pub disk_budget_bytes: u64,
    /// Resident memory of the daemon, bytes.
    pub memory_bytes: u64,
    /// Connected peers.
    pub peer_count: u64,
    /// Up to [`MAX_PEERS`] of them, with how they are reached.
    pub peers: Vec<PeerPath>,
    /// Events this node lacked at its last rounds, all topics (per topic, from the peer
    /// furthest ahead).
    pub lag: u64,
    /// `lag` at the last heartbeats, oldest first, this one last (at most
    /// [`LAG_HISTORY`]).
    pub lag_history: Vec<u64>,
    /// The [`MAX_LAG_TOPICS`] topics with the most lag.
    pub lag_topics: Vec<TopicLag>,
    /// Logs frozen at a fork (an author that signed two events at one position).
    pub forks: u64,
    /// How far the node's logical clock runs ahead of its wall clock, ms (a peer's
    /// clock ahead pulls it forward).
    pub clock_ahead_ms: u64,
    /// When the node's fleet certificate expires, ms since the epoch (closed fleets).
    pub cert_expires_ms: Option<u64>,
    /// The store scan found damage.
    pub store_problem: bool,
}

// Not in a heartbeat: a full disk and a publishing hold after a repair. Either stops the
// node's own writes, its heartbeats with them, so such a node goes stale in the others'
// view; its own `murmur status` says which.

impl Heartbeat {
    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// This heartbeat, trimmed to encode within [`MAX_BYTES`] (what a closed fleet's
    /// peers accept): the named lag topics go first, then the named peers (the counts
    /// stay), then the host name.
    pub fn fitted(mut self) -> Self {
        while self.encode().len() > MAX_BYTES {
            if self.lag_topics.pop().is_some() || self.peers.pop().is_some() {
                continue;
            }
            if !self.host.is_empty() {
                self.host.clear();
                continue;
            }
            self.version.truncate(32);
            break;
        }
        self
    }

    /// Reads a heartbeat body, at most [`MAX_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_BYTES {
            return Err(format!(
                "heartbeat of {} bytes, over {MAX_BYTES}",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("not a heartbeat: {e}"))
    }

    /// Whether lag rose at every one of the last heartbeats (at least three samples).
    pub fn lag_growing(&self) -> bool {
        let h = &self.lag_history;
        h.len() >= 3 && h.windows(2).all(|w| w[1] > w[0])
    }
}

/// Up or stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Heard from within [`STALE_INTERVALS`] of its interval.
    Up,
    /// Not heard from since.
    Stale,
}

impl State {
    /// `up` or `stale`.
    pub fn label(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Stale => "stale",
        }
    }
}

/// What a reader makes of one node's latest heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Up or stale.
    pub state: State,
    /// Problems, by stable label: `stale`, `disk`, `lag_growing`, `forks`,
    /// `cert_expiring`, `store_problem`.
    pub flags: Vec<&'static str>,
}

/// Reads `hb`, sent at `sent_ms` (the event's time, the author's clock), at `now_ms`
/// (the reader's clock). A heartbeat from a clock ahead of the reader's counts as
/// fresh.
pub fn assess(hb: &Heartbeat, sent_ms: u64, now_ms: u64) -> Assessment {
    let stale_after = hb.interval_ms.max(1_000).saturating_mul(STALE_INTERVALS);
    let state = if now_ms.saturating_sub(sent_ms) > stale_after {
        State::Stale
    } else {
        State::Up
    };
    let mut flags = Vec::new();
    if state == State::Stale {
        flags.push("stale");
    }
    if hb.disk_budget_bytes > 0
        && u128::from(hb.disk_bytes) * 100
            > u128::from(hb.disk_budget_bytes) * u128::from(DISK_WARN_PCT)
    {
        flags.push("disk");
    }
    if hb.lag_growing() {
        flags.push("lag_growing");
    }
    if hb.forks > 0 {
        flags.push("forks");
    }
    if hb
        .cert_expires_ms
        .is_some_and(|e| e <= now_ms.saturating_add(CERT_WARN_MS))
    {
        flags.push("cert_expiring");
    }
    if hb.store_problem {
        flags.push("store_problem");
    }
    Assessment { state, flags }
}

/// Appends `lag` to `history`, keeping the last [`LAG_HISTORY`].
pub fn push_lag(history: &mut Vec<u64>, lag: u64) {
    history.push(lag);
    if history.len() > LAG_HISTORY {
        let extra = history.len() - LAG_HISTORY;
        history.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn hb() -> Heartbeat {
        Heartbeat {
            interval_ms: 30_000,
            ..Heartbeat::default()
        }
    }

    #[test]
    fn a_node_is_stale_after_three_of_its_own_intervals() {
        let h = hb();
        assert_eq!(assess(&h, NOW - 90_000, NOW).state, State::Up);
        let late = assess(&h, NOW - 90_001, NOW);
        assert_eq!(late.state, State::Stale);
        assert_eq!(late.flags, vec!["stale"]);
        // A clock ahead of ours is fresh, not an underflow.
        assert_eq!(assess(&h, NOW + 5_000, NOW).state, State::Up);
        // A 2 s interval is stale after 6 s.
        let fast = Heartbeat {
            interval_ms: 2_000,
            ..hb()
        };
        assert_eq!(assess(&fast, NOW - 6_001, NOW).state, State::Stale);
    }

    #[test]
    fn problems_are_flagged() {
        let h = Heartbeat {
            disk_bytes: 81,
            disk_budget_bytes: 100,
            forks: 1,
            lag_history: vec![1, 5, 9],
            cert_expires_ms: Some(NOW + CERT_WARN_MS),
            store_problem: true,
            ..hb()
        };
        assert_eq!(
            assess(&h, NOW, NOW).flags,
            vec![
                "disk",
                "lag_growing",
                "forks",
                "cert_expiring",
                "store_problem"
            ]
        );
        let fine = Heartbeat {
            disk_bytes: 80,
            disk_budget_bytes: 100,
            lag_history: vec![9, 5, 9],
            cert_expires_ms: Some(NOW + CERT_WARN_MS + 1),
            ..hb()
        };
        assert!(assess(&fine, NOW, NOW).flags.is_empty());
        // No budget: no disk flag, however big.
        let unbounded = Heartbeat {
            disk_bytes: u64::MAX,
            ..hb()
        };
        assert!(assess(&unbounded, NOW, NOW).flags.is_empty());
        // Two samples are not a trend.
        assert!(
            !Heartbeat {
                lag_history: vec![1, 2],
                ..hb()
            }
            .lag_growing()
        );
    }

    /// The largest heartbeat a node can make (every list full, every string at its
    /// longest and all quotes, every number at its widest) fits once trimmed.
    #[test]
    fn the_largest_heartbeat_fits_once_trimmed() {
        let big = Heartbeat {
            version: "\"".repeat(64),
            host: "\"".repeat(64),
            interval_ms: u64::MAX,
            uptime_secs: u64::MAX,
            events: u64::MAX,
            disk_bytes: u64::MAX,
            disk_budget_bytes: u64::MAX,
            memory_bytes: u64::MAX,
            peer_count: u64::MAX,
            peers: (0..MAX_PEERS)
                .map(|i| PeerPath {
                    peer: format!("{i:0>52}"),
                    path: "relayed".into(),
                })
                .collect(),
            lag: u64::MAX,
            lag_history: vec![u64::MAX; LAG_HISTORY],
            lag_topics: (0..MAX_LAG_TOPICS)
                .map(|_| TopicLag {
                    topic: "\"".repeat(255),
                    behind: u64::MAX,
                })
                .collect(),
            forks: u64::MAX,
            clock_ahead_ms: u64::MAX,
            cert_expires_ms: Some(u64::MAX),
            store_problem: true,
        };
        let fitted = big.clone().fitted();
        let bytes = fitted.encode();
        assert!(bytes.len() <= MAX_BYTES, "{} bytes", bytes.len());
        assert_eq!(Heartbeat::decode(&bytes), Ok(fitted.clone()));
        // More than a node makes (a later version's longer lists): trimmed, the
        // named lag topics first, the counts whole.
        let over = Heartbeat {
            lag_topics: (0..40).map(|_| big.lag_topics[0].clone()).collect(),
            ..big.clone()
        };
        let trimmed = over.fitted();
        assert!(trimmed.encode().len() <= MAX_BYTES);
        assert!(trimmed.lag_topics.len() < 40);
        assert_eq!(trimmed.peers.len(), MAX_PEERS);
        assert_eq!(trimmed.peer_count, u64::MAX);
        // A usual one is left as it is.
        let usual = Heartbeat {
            peers: big.peers[..4].to_vec(),
            ..hb()
        };
        assert_eq!(usual.clone().fitted(), usual);
    }

    #[test]
    fn lag_history_keeps_the_last_samples_and_heartbeats_round_trip() {
        let mut h = Vec::new();
        for i in 0..10 {
            push_lag(&mut h, i);
        }
        assert_eq!(h, vec![6, 7, 8, 9]);
        let beat = Heartbeat {
            version: "0.1.0".into(),
            lag_history: h,
            cert_expires_ms: Some(5),
            ..hb()
        };
        assert_eq!(Heartbeat::decode(&beat.encode()), Ok(beat));
        assert!(Heartbeat::decode(&vec![b' '; MAX_BYTES + 1]).is_err());
        assert!(Heartbeat::decode(b"[1,2]").is_err());
        // Unknown fields (a newer node) and missing ones (an older one) both read.
        let newer = br#"{"version":"9.0","some_new_field":[1],"interval_ms":1000}"#;
        assert_eq!(Heartbeat::decode(newer).map(|h| h.interval_ms), Ok(1000));
    }
}
