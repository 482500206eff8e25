//! Every request and response type of the local control API, in one place: the daemon's
//! server answers with them and [`crate::Client`] reads them, so the two cannot drift
//! apart. All ids and keys are lowercase hex.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// `POST /v1/events`: publish one event. Give the payload as UTF-8 text in `data`, or as
/// base64 in `data_b64` (not both; neither means an empty payload).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Topic name, e.g. `sensors/kitchen/temp`.
    pub topic: String,
    /// Payload as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Payload as standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// Optional MIME type, e.g. `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Optional idempotency key (1–128 printable ASCII bytes): a retry with the same key
    /// within `api.idempotency_window` gets what the first publish stored (same seq,
    /// id and offset), and nothing is stored again, across restarts too. (Header
    /// `Idempotency-Key` on single and raw publishes.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `POST /v1/events/batch`: publish many events atomically, with one WAL sync.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The events, in order.
    pub events: Vec<PublishRequest>,
}

/// A hybrid logical clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeJson {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Logical counter.
    pub logical: u32,
}

/// A stored event acknowledged to its publisher: durable when you receive this.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    /// Event id.
    pub id: String,
    /// Author (this node's key).
    pub author: String,
    /// Topic.
    pub topic: String,
    /// Position in the author's log for this topic.
    pub seq: u64,
    /// Local arrival offset.
    pub offset: u64,
    /// HLC time.
    pub time: TimeJson,
}

/// Reply to a batch publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    /// One entry per request event, in order.
    pub events: Vec<Published>,
}

/// An event as returned by reads and follow streams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventJson {
    /// Local arrival offset (absent when looked up by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Event id.
    pub id: String,
    /// Author.
    pub author: String,
    /// Topic.
    pub topic: String,
    /// Position in the log.
    pub seq: u64,
    /// Previous event's id (absent at seq 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// HLC time.
    pub time: TimeJson,
    /// `data` or `doc`.
    pub kind: String,
    /// MIME type of data events, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Document id of doc events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// How `data` is encoded: `utf8` or `base64`.
    pub encoding: String,
    /// The payload (data bytes or automerge change bytes).
    pub data: String,
}

impl EventJson {
    /// The payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        if self.encoding == "base64" {
            base64::engine::general_purpose::STANDARD
                .decode(&self.data)
                .unwrap_or_default()
        } else {
            self.data.clone().into_bytes()
        }
    }
}

/// A page of events with the offset (or seq, for log reads) to continue from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    /// The events.
    pub events: Vec<EventJson>,
    /// Pass this as `from` to read on.
    pub next: u64,
    /// Set when retention pruned events of this pattern at offsets from `from` up to
    /// this one: they are not in the page (reads of a log by seq start at its base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_to: Option<u64>,
}

/// One log in a topic listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogJson {
    /// Author.
    pub author: String,
    /// First seq held: retention pruned the events below it (0: none pruned).
    #[serde(default)]
    pub base: u64,
    /// Head seq.
    pub head_seq: u64,
    /// Head id.
    pub head_id: String,
    /// Head time.
    pub head_time: TimeJson,
    /// Fork position if the log is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_at: Option<u64>,
    /// Time of the oldest event the log holds (at its base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_time: Option<TimeJson>,
    /// Bytes of the events held (encoded, as `max_bytes` rules count them).
    #[serde(default)]
    pub bytes: u64,
    /// Bytes of its events deleted here (pruned, or dropped when it started over).
    #[serde(default)]
    pub pruned_bytes: u64,
}

/// One topic with its logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicJson {
    /// The topic.
    pub topic: String,
    /// Events held (sum over logs).
    pub events: u64,
    /// Events below the logs' bases: pruned here by retention, or never held (a log
    /// that started at a peer's base, or pulled from this node's window).
    #[serde(default)]
    pub pruned: u64,
    /// Time of the oldest event held in the topic (over its logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_time: Option<TimeJson>,
    /// Bytes of the events held (encoded, over its logs; what a `max_bytes` rule
    /// counts).
    #[serde(default)]
    pub bytes: u64,
    /// Bytes of its events deleted here (over its logs: pruned by retention, or
    /// dropped when a log started over at a peer's base).
    #[serde(default)]
    pub pruned_bytes: u64,
    /// Its logs.
    pub logs: Vec<LogJson>,
}

/// `GET /v1/topics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicsResponse {
    /// Topics in name order.
    pub topics: Vec<TopicJson>,
}

/// Ingest queue state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueJson {
    /// Requests waiting.
    pub queued: usize,
    /// Capacity.
    pub capacity: usize,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// murmur version.
    pub version: String,
    /// This node's author id.
    pub author: String,
    /// Data directory.
    pub data_dir: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Sync policy (`fsync` or `os`).
    pub sync: String,
    /// Events stored (= next local offset).
    pub events: u64,
    /// Events held now (`events` less what retention pruned).
    #[serde(default)]
    pub held: u64,
    /// Events pruned by retention (below the logs' bases).
    #[serde(default)]
    pub pruned: u64,
    /// Topics held.
    pub topics: u64,
    /// Logs held.
    pub logs: u64,
    /// Logs frozen by forks.
    pub forks: u64,
    /// Ingest queue.
    pub ingest: QueueJson,
    /// Open follow streams.
    pub followers: u64,
    /// Bytes the database occupies on disk.
    pub disk_bytes: u64,
    /// Resident memory of the daemon, bytes.
    pub resident_bytes: u64,
    /// libp2p peer id (absent when replication is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Connected peers.
    #[serde(default)]
    pub peers: u64,
    /// Sync sessions in progress.
    #[serde(default)]
    pub sync_sessions: u64,
    /// Shared documents: held in memory, estimated memory, snapshots, changes applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<DocsStats>,
    /// Publishing is held after `murmur repair` until a sync round with a peer on every
    /// topic has brought the node's own logs back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publishing_held: bool,
    /// What the scan after start found wrong with the store (damage or indexes that
    /// disagree), with what to do; absent while the scan runs and when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_problem: Option<String>,
    /// The database's disk budget (`store.max_disk_mb`), bytes; 0 for none.
    #[serde(default)]
    pub disk_budget_bytes: u64,
    /// The disk is full: publishing answers 507, and replication pulls nothing (it still
    /// serves its peers) until the store writes again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_full: bool,
    /// The clock: its last time, the drift limit, and remote clocks found ahead of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockStatus>,
    /// The fleet: `open`, or closed and whether this node is admitted (see
    /// `GET /v1/fleet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// The MQTT listener and bridges, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttStatus>,
}

/// The MQTT listener and bridges in `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MqttStatus {
    /// The listener's address, if it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Open MQTT connections.
    pub connections: u64,
    /// The bridges.
    #[serde(default)]
    pub bridges: Vec<BridgeStatus>,
}

/// One bridge in `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Its name.
    pub name: String,
    /// Its broker, `host:port`.
    pub broker: String,
    /// The pattern it forwards.
    pub pattern: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Events the broker acknowledged since the daemon started.
    pub forwarded: u64,
    /// Events of its pattern not yet acknowledged by the broker.
    pub pending: u64,
    /// False when `pending` is a lower bound (the count stops after 100,000 offsets).
    #[serde(default)]
    pub pending_exact: bool,
}

/// `GET /v1/fleet`: the fleet's membership and policy as this node knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetJson {
    /// `open` (no root configured: every peer is a member) or `closed`.
    pub mode: String,
    /// The fleet's root key (closed fleets).
    #[serde(default)]
    pub root: String,
    /// This node's id (its key): what `murmur fleet admit` takes.
    pub node: String,
    /// Whether this node has a certificate.
    pub admitted: bool,
    /// This node's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<MemberJson>,
    /// Members known (from the policy log and from peers at connect).
    #[serde(default)]
    pub members: Vec<MemberJson>,
    /// Grants in force, by role.
    #[serde(default)]
    pub grants: Vec<GrantJson>,
    /// Revocations.
    #[serde(default)]
    pub revocations: Vec<RevocationJson>,
}

/// A member's certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberJson {
    /// Its node id.
    pub node: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Topic patterns its certificate alone lets it write.
    #[serde(default)]
    pub topics: Vec<String>,
    /// When the certificate expires.
    pub expires: TimeJson,
    /// Who issued it (the root, or an admin key).
    pub issuer: String,
    /// `ok`, `expires_soon` (within 30 days), `expired`, `revoked`.
    pub state: String,
    /// Connected to this node now.
    pub connected: bool,
}

/// A grant in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantJson {
    /// The role.
    pub role: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// May publish data.
    pub publish: bool,
    /// May write documents.
    pub docs: bool,
    /// When the grant was issued.
    pub issued: TimeJson,
}

/// A revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationJson {
    /// The node (or admin key) revoked.
    pub node: String,
    /// Why.
    pub reason: String,
    /// From when its events are refused.
    pub effective: TimeJson,
    /// Events it wrote after that which this node had stored before it learned of the
    /// revocation, and took back (since the daemon started).
    #[serde(default)]
    pub taken_back: u64,
}

/// `POST /v1/fleet/join`: install this node's certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The certificate as `murmur fleet admit` prints it (`murmur-cert:…`).
    pub cert: String,
}

/// `POST /v1/fleet/policy`: publish a signed policy entry (made by `murmur fleet
/// grant|revoke` with an admin or root key, which never leaves that machine).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRequest {
    /// The entry's encoding, base64.
    pub entry_b64: String,
}

/// The answer to a join or a policy entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetChange {
    /// What happened, for people.
    pub message: String,
    /// The event that carries it on the policy topic, if one was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Published>,
}

/// One connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerJson {
    /// libp2p peer id.
    pub peer: String,
    /// Address of the connection.
    pub addr: String,
    /// How it was found: `dial`, `inbound`, `mdns`.
    pub how: String,
    /// Last ping round trip, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Its gossip score: 0 or a little above for a well-behaved peer, negative after
    /// invalid runs (below -50 our runs no longer go to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// `direct`, `relayed` (through a circuit relay), or `punched` (direct after a
    /// hole punch upgraded a relayed connection).
    #[serde(default)]
    pub path: String,
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersResponse {
    /// Our peer id.
    pub peer_id: String,
    /// Our listen addresses.
    pub listen: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerJson>,
}

/// `POST /v1/dial`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRequest {
    /// A multiaddr, e.g. `/ip4/192.0.2.1/tcp/7470/p2p/12D3…`.
    pub addr: String,
}

/// `POST /v1/sync`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Sync with this peer only (default: every connected peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// Every error response: `{"error": "...", "code": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable message.
    pub error: String,
    /// Stable machine-readable code.
    pub code: String,
}

/// One node in the fleet view (`GET /v1/fleet/nodes`), from its latest heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeJson {
    /// The node's id (its author key).
    pub node: String,
    /// Its host name, as it reports it.
    #[serde(default)]
    pub host: String,
    /// Whether it is the node answering.
    #[serde(default)]
    pub this_node: bool,
    /// `up`, or `stale`: not heard from in 3 of its heartbeat intervals.
    pub state: String,
    /// Its latest heartbeat's time (its clock), ms since the epoch.
    pub seen_ms: u64,
    /// Seconds from then to now (this node's clock).
    pub seen_secs_ago: u64,
    /// Problems: `stale`, `disk` (over 80% of its budget), `lag_growing`, `forks`,
    /// `cert_expiring` (within 30 days), `store_problem`. (A node whose disk is full,
    /// or whose publishing is held after a repair, writes no heartbeat: it goes stale.)
    #[serde(default)]
    pub flags: Vec<String>,
    /// The heartbeat itself (version, uptime, events, disk, memory, peers, lag, forks,
    /// clock, certificate expiry): the JSON the node published on `$fleet/health`, as
    /// it published it (fields of newer versions included).
    pub heartbeat: serde_json::Value,
}

/// `GET /v1/fleet/nodes`: every node whose heartbeat this node holds, problems first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetNodesJson {
    /// This node's clock, ms since the epoch.
    pub now_ms: u64,
    /// This node's heartbeat interval, ms (0: it publishes none).
    pub interval_ms: u64,
    /// Nodes in the view (`nodes` lists at most 5,000 of them, problems first).
    #[serde(default)]
    pub total: u64,
    /// Nodes left out: not heard from in `fleet.forget_after`.
    #[serde(default)]
    pub forgotten: u64,
    /// The nodes.
    pub nodes: Vec<NodeJson>,
}

/// How far this node and one peer differ on one topic, as of their last round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerLagJson {
    /// The peer.
    pub peer: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// Events the peer showed that this node lacked then (and may since have pulled).
    pub behind: u64,
    /// Events this node holds beyond what the peer showed.
    pub ahead: u64,
    /// Seconds since that round.
    pub seen_secs_ago: u64,
    /// Seconds for which the events this node lacks from the peer have not shrunk,
    /// once that is past the lag watchdog's limit (`None`: catching up, or caught up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_secs: Option<u64>,
}

/// One topic's replication state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicLagJson {
    /// The topic.
    pub topic: String,
    /// Per peer.
    pub peers: Vec<PeerLagJson>,
}

/// `GET /v1/replication`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationJson {
    /// Connected peers.
    pub peers: u64,
    /// Sync sessions in progress.
    pub sync_sessions: u64,
    /// Gossiped events held while a gap in their log fills.
    pub held_out_of_order: u64,
    /// The gossip channels joined (one per interest pattern).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Per topic.
    pub topics: Vec<TopicLagJson>,
}

/// `POST /v1/interest`: add or remove one topic pattern this node replicates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterestRequest {
    /// Pattern to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<String>,
    /// Pattern to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<String>,
}

/// `GET`/`POST /v1/interest`: the patterns in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterestResponse {
    /// Topic patterns this node replicates.
    pub patterns: Vec<String>,
}

/// One retention rule as the API shows and takes it (see `[[retention]]` in the
/// config): at least one of `max_age`, `max_events_per_log`, `max_bytes`, or `keep`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleJson {
    /// The topics it covers (`sensors/#`).
    pub pattern: String,
    /// Keep events younger than this (event time), e.g. `7days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Keep this many newest events per log; 1 = latest only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events_per_log: Option<u64>,
    /// Keep the newest this many bytes of each topic (its logs together; encoded
    /// events), the oldest going first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Never prune these topics.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

/// `GET`/`POST /v1/retention`: the rules in force, first match wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionJson {
    /// The rules, in order.
    pub rules: Vec<RetentionRuleJson>,
    /// `config` (the `[[retention]]` rules of the config file) or `runtime` (set
    /// through the API, kept in the data dir across restarts).
    pub source: String,
    /// The disk budget, MiB (0: none; set in the config only).
    pub max_disk_mb: u64,
}

/// `POST /v1/retention`: replace the rules (kept across restarts), or go back to the
/// config's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    /// The new rules, in order (an empty list keeps everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RetentionRuleJson>>,
    /// Drop the rules set at runtime: the config's apply again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

/// Counters of the document manager (in [`Status`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DocsStats {
    /// Documents in memory.
    pub loaded: usize,
    /// Estimated memory of those documents, bytes.
    pub memory_bytes: u64,
    /// Snapshots written since start.
    pub snapshots: u64,
    /// Documents evicted since start.
    pub evicted: u64,
    /// Changes applied from the store since start: from peers, and from snapshots'
    /// tails when loading (changes made here are applied as they are made).
    pub applied: u64,
    /// Changes skipped because they crash automerge.
    #[serde(default)]
    pub poisoned: u64,
    /// Snapshots whose content filled a document's compacted history (a log of its
    /// topic started over at a peer's base).
    #[serde(default)]
    pub snapshots_applied: u64,
    /// Other nodes' snapshots found false against the history held here, set aside.
    #[serde(default)]
    pub snapshots_refused: u64,
}

/// The remote author whose events were furthest ahead of this node's clock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorstAhead {
    /// The author.
    pub author: String,
    /// How far ahead of our wall clock its event was when it arrived, ms.
    pub ahead_ms: u64,
    /// Our wall clock when that event arrived, ms since the epoch.
    pub seen_ms: u64,
}

/// What the clock reports in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ClockStatus {
    /// The daemon's wall clock now, ms since the epoch.
    pub wall_ms: u64,
    /// The last time the clock issued or merged, ms since the epoch.
    pub last_ms: u64,
    /// The configured drift limit, ms.
    pub max_drift_ms: u64,
    /// Remote events whose time was beyond the drift limit (stored, not merged).
    pub ahead_events: u64,
    /// The worst of them, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<WorstAhead>,
}

// --- Shared documents ---

/// One document operation. Several in one request form one atomic change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Put a JSON value at a map key or list position (replacing what is there).
    Set {
        /// Where.
        path: String,
        /// What.
        value: serde_json::Value,
    },
    /// Delete a map key or a list element.
    Delete {
        /// Where.
        path: String,
    },
    /// Put a counter with an initial value.
    Counter {
        /// Where.
        path: String,
        /// Initial value.
        #[serde(default)]
        value: i64,
    },
    /// Add to a counter (negative to subtract).
    Increment {
        /// The counter.
        path: String,
        /// By how much (default 1).
        #[serde(default = "one")]
        by: i64,
    },
    /// Put a collaboratively editable text with initial content.
    Text {
        /// Where.
        path: String,
        /// Initial content.
        #[serde(default)]
        value: String,
    },
    /// Insert a value into a list at `index` (`index` = length appends).
    Insert {
        /// The list.
        path: String,
        /// Position.
        index: usize,
        /// What.
        value: serde_json::Value,
    },
    /// Remove `count` elements of a list from `index`.
    Remove {
        /// The list.
        path: String,
        /// Position.
        index: usize,
        /// How many (default 1).
        #[serde(default = "one_usize")]
        count: usize,
    },
    /// Edit a text: delete `delete` characters at `index`, then insert `insert` there.
    Splice {
        /// The text.
        path: String,
        /// Position, in characters.
        index: usize,
        /// Characters to delete.
        #[serde(default)]
        delete: usize,
        /// Text to insert.
        #[serde(default)]
        insert: String,
    },
}

fn one() -> i64 {
    1
}
fn one_usize() -> usize {
    1
}

/// `POST /v1/doc`: change a document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The topic the document lives in.
    pub topic: String,
    /// The document id.
    pub doc: String,
    /// The operations, applied as one change.
    pub ops: Vec<Op>,
    /// A message kept with the change (at most 1,024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A change, once durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeJson {
    /// Topic.
    pub topic: String,
    /// Document.
    pub doc: String,
    /// Seq of the event in this node's log for the topic.
    pub seq: u64,
    /// Local offset.
    pub offset: u64,
    /// Event id.
    pub id: String,
    /// automerge change hash.
    pub hash: String,
}

/// A document's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocJson {
    /// Topic.
    pub topic: String,
    /// Document.
    pub doc: String,
    /// The path asked for ("" for the whole document).
    pub path: String,
    /// The value there.
    pub value: serde_json::Value,
    /// automerge heads.
    pub heads: Vec<String>,
    /// Changes referenced but not yet received.
    pub missing: usize,
}

/// The documents of a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocsList {
    /// Topic.
    pub topic: String,
    /// Document ids.
    pub docs: Vec<String>,
}

/// One change in a document's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Local offset.
    pub offset: u64,
    /// Event id.
    pub id: String,
    /// Author (hex public key).
    pub author: String,
    /// Seq in the author's log.
    pub seq: u64,
    /// The author's clock when it made the change.
    pub time: TimeJson,
    /// automerge change hash.
    pub hash: String,
    /// Hashes of the changes it builds on.
    pub deps: Vec<String>,
    /// Number of operations.
    pub ops: usize,
    /// The message given with the change.
    pub message: Option<String>,
    /// Size of the change, bytes.
    pub bytes: usize,
}

/// A page of a document's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    /// The changes, in this node's arrival order.
    pub changes: Vec<HistoryEntry>,
    /// Where the next page starts.
    pub next: u64,
}

/// One line of a document follow stream: the state after the changes up to `through`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocUpdate {
    /// Every change of the document stored below this offset is reflected.
    pub through: u64,
    /// The value (whole document or at the path).
    pub value: serde_json::Value,
}

/// A named consumer (`GET /v1/consumers`, `GET /v1/consumers/NAME`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsumerJson {
    /// Its name.
    pub name: String,
    /// The topic pattern it reads (absent: every topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The first offset it has not acknowledged: a follow of it starts here.
    pub next: u64,
    /// Events of its pattern stored here at or after `next` (its lag).
    pub pending: u64,
    /// False when `pending` is a lower bound (the count stops after a million
    /// offsets, or ten thousand in an ack's answer).
    pub pending_exact: bool,
    /// Whether a follow stream reads it now.
    pub streaming: bool,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// When its cursor last moved, ms since the epoch.
    pub acked_ms: u64,
}

/// `GET /v1/consumers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsumersJson {
    /// Every consumer, by name.
    pub consumers: Vec<ConsumerJson>,
    /// The most that may exist (`api.max_consumers`).
    pub max: usize,
}

/// `POST /v1/consumers/NAME/ack`: acknowledges `offset` and everything before it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The offset of the last event handled.
    pub offset: u64,
}
