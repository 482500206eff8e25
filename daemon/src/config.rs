//! Node configuration: one TOML file, every option defaulted and documented.
//!
//! Where things are: the data directory comes from `--data-dir`, else `MURMUR_DATA_DIR`,
//! else `data_dir` in the config file, else `$XDG_DATA_HOME/murmur` (usually
//! `~/.local/share/murmur`). The config file is `--config FILE`, else
//! `<data dir>/murmur.toml` when it exists; without one, the defaults below apply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Name of the config file looked for in the data directory.
pub const CONFIG_FILE: &str = "murmur.toml";
/// Name of the node key file in the data directory.
pub const KEY_FILE: &str = "node.key";
/// Name of the control socket in the data directory.
pub const SOCKET_FILE: &str = "murmur.sock";
/// Name of the interest file (patterns set with `murmur topics add/remove`).
pub const INTEREST_FILE: &str = "interest";
/// Name of the known-peers file in the data directory.
pub const PEERS_FILE: &str = "peers";
/// Name of the RocksDB directory in the data directory.
pub const DB_DIR: &str = "db";

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are errors, to catch typos).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// No data directory could be determined.
    #[error("no data directory: pass --data-dir or set MURMUR_DATA_DIR (no home directory found)")]
    NoDataDir,
}

/// The whole configuration. Every field has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory (key, database, socket). Overridden by `--data-dir` and `MURMUR_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// The local control API.
    pub api: ApiConfig,
    /// The ingest pipeline (local publishing).
    pub ingest: IngestConfig,
    /// Storage.
    pub store: StoreConfig,
    /// Hybrid logical clock.
    pub clock: ClockConfig,
    /// Logging.
    pub log: LogConfig,
    /// Peer-to-peer replication.
    pub p2p: P2pConfig,
    /// Shared documents (automerge).
    pub docs: DocsConfig,
    /// Retention rules (`[[retention]]` tables), the first matching a topic deciding.
    /// None: every event is kept.
    pub retention: Vec<RetentionRule>,
    /// Fleet membership and permissions.
    pub fleet: FleetConfig,
    /// The MQTT listener and bridges.
    pub mqtt: MqttConfig,
}

/// The MQTT listener (MQTT 3.1.1: local sensors and tools publish and subscribe as to a
/// broker) and bridges to upstream brokers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Listen for MQTT clients here, e.g. `"127.0.0.1:1883"` (off by default). Beyond
    /// loopback a username and password are required, and TLS (unless
    /// `allow_plaintext`).
    pub listen: Option<std::net::SocketAddr>,
    /// The listener's certificate chain (PEM): with `tls_key`, the listener speaks
    /// MQTT over TLS (clients connect as to port 8883).
    pub tls_cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Listen beyond loopback without TLS (a network you trust): the password then
    /// crosses it in the clear.
    pub allow_plaintext: bool,
    /// The username clients must give (with `password_file`).
    pub username: Option<String>,
    /// A file holding the password clients must give (its first line).
    pub password_file: Option<PathBuf>,
    /// Most open MQTT connections; more are closed at once.
    pub max_connections: usize,
    /// Bridges to upstream brokers (`[[mqtt.bridge]]`).
    pub bridge: Vec<BridgeConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: None,
            tls_cert: None,
            tls_key: None,
            allow_plaintext: false,
            username: None,
            password_file: None,
            max_connections: 64,
            bridge: Vec::new(),
        }
    }
}

impl MqttConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.username.is_some() != self.password_file.is_some() {
            return bad("mqtt.username and mqtt.password_file go together".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("mqtt.tls_cert and mqtt.tls_key go together".into());
        }
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
        {
            if self.username.is_none() {
                return bad(format!(
                    "mqtt.listen = {addr} is beyond loopback: set mqtt.username and mqtt.password_file (any device on the network could publish otherwise), or listen on 127.0.0.1"
                ));
            }
            if self.tls_cert.is_none() && !self.allow_plaintext {
                return bad(format!(
                    "mqtt.listen = {addr} is beyond loopback: set mqtt.tls_cert and mqtt.tls_key (the password would cross the network in the clear), or mqtt.allow_plaintext = true on a network you trust"
                ));
            }
        }
        if self.max_connections == 0 {
            return bad("mqtt.max_connections must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for b in &self.bridge {
            let consumer = format!("bridge.{}", b.name);
            if b.name.is_empty() || crate::consumers::check_name(&consumer).is_err() {
                return bad(format!(
                    "mqtt.bridge name {:?}: give 1 to 57 of A-Z a-z 0-9 . _ -",
                    b.name
                ));
            }
            if !names.insert(&b.name) {
                return bad(format!("two mqtt.bridge entries are named {:?}", b.name));
            }
            if b.broker
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return bad(format!(
                    "mqtt.bridge {:?}: broker {:?} is not host:port",
                    b.name, b.broker
                ));
            }
            if let Err(e) = murmur_core::Pattern::new(&b.pattern) {
                return bad(format!(
                    "mqtt.bridge {:?}: pattern {:?}: {e}",
                    b.name, b.pattern
                ));
            }
            if b.remote_prefix.contains(['+', '#', '\0']) || b.remote_prefix.starts_with('$') {
                return bad(format!(
                    "mqtt.bridge {:?}: remote_prefix {:?} may not hold + # or NUL, nor start with $",
                    b.name, b.remote_prefix
                ));
            }
            if b.username.is_some() != b.password_file.is_some() {
                return bad(format!(
                    "mqtt.bridge {:?}: username and password_file go together",
                    b.name
                ));
            }
            if b.tls
                && let Some((host, _)) = b.broker.rsplit_once(':')
                && rustls::pki_types::ServerName::try_from(host).is_err()
            {
                return bad(format!(
                    "mqtt.bridge {:?}: {host:?} cannot be checked against a certificate (give a DNS name or an IPv4 address)",
                    b.name
                ));
            }
            if b.ca_file.is_some() && !b.tls {
                return bad(format!(
                    "mqtt.bridge {:?}: ca_file is for tls = true",
                    b.name
                ));
            }
            if b.inflight == 0 || b.keep_alive < Duration::from_secs(5) {
                return bad(format!(
                    "mqtt.bridge {:?}: inflight must be at least 1 and keep_alive at least 5s",
                    b.name
                ));
            }
        }
        Ok(())
    }
}

/// A bridge: forwards the events of one topic pattern to an upstream MQTT broker, at
/// least once, through a named consumer (`bridge.NAME`), so it resumes where it stopped
/// after a restart or an outage of the broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Its name (the consumer is `bridge.NAME`; metrics and logs name it).
    pub name: String,
    /// The broker, `host:port`.
    pub broker: String,
    /// The events to forward (an MQTT-style pattern).
    pub pattern: String,
    /// Put before each topic upstream, e.g. `"site-7/"`.
    pub remote_prefix: String,
    /// The MQTT client id upstream [default: `murmur-<node id prefix>-<name>`].
    pub client_id: Option<String>,
    /// Username upstream.
    pub username: Option<String>,
    /// A file holding the password upstream (its first line).
    pub password_file: Option<PathBuf>,
    /// Most events sent and not yet acknowledged by the broker.
    pub inflight: u16,
    /// MQTT keep-alive with the broker.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Connect to the broker over TLS (its certificate checked against `ca_file`, or
    /// the system's roots).
    pub tls: bool,
    /// The CA certificates (PEM) that sign the broker's certificate [default: the
    /// system's roots].
    pub ca_file: Option<PathBuf>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: String::new(),
            broker: String::new(),
            pattern: String::new(),
            remote_prefix: String::new(),
            client_id: None,
            username: None,
            password_file: None,
            inflight: 100,
            keep_alive: Duration::from_secs(30),
            tls: false,
            ca_file: None,
        }
    }
}

/// Fleet membership and permissions (see `murmur fleet`), and fleet health.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// The fleet's root public key (hex, printed by `murmur fleet init`): a closed
    /// fleet (peers need a certificate from it, events a grant).
    pub root: Option<String>,
    /// An open fleet, chosen explicitly: every peer that connects is a member and may
    /// write anything. A node that speaks to the network must choose one or the other
    /// (`murmur init` writes `open = true` into the config it creates).
    pub open: bool,
    /// How often this node publishes its heartbeat on `$fleet/health` (what
    /// `murmur fleet nodes` and the dashboard show for every node). `0s`: never (the
    /// node still shows the others').
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node not heard from in this long leaves the fleet view (a decommissioned or
    /// re-keyed device stops being a problem). Its last heartbeat stays stored.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            root: None,
            open: false,
            heartbeat_interval: Duration::from_secs(30),
            forget_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Who may join and write: the choice [`FleetConfig::mode`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMode {
    /// Every peer that connects is a member and may write anything.
    Open,
    /// Peers need a certificate from this root key, events a grant.
    Closed(murmur_core::AuthorId),
}

/// What a node that speaks to the network is told when its config chose no fleet.
pub const NO_FLEET_CHOICE: &str = "the config must say who may join this fleet. A closed fleet      (peers need a certificate, events a grant): `murmur fleet init` on the operator's machine,      then `[fleet] root = \"<the key it printed>\"` on every node. An open fleet (every peer      that connects may write anything; keep it to a network only you reach, with      p2p.psk_file): `[fleet] open = true`";

impl FleetConfig {
    /// The fleet's mode: a root key is a closed fleet, `open = true` an open one;
    /// both, or neither, is an error ([`NO_FLEET_CHOICE`]).
    pub fn mode(&self) -> Result<FleetMode, ConfigError> {
        match (self.root_key()?, self.open) {
            (Some(_), true) => Err(ConfigError::Invalid(
                "fleet.root and fleet.open = true: a fleet is closed (root) or open, not both"
                    .into(),
            )),
            (Some(root), false) => Ok(FleetMode::Closed(root)),
            (None, true) => Ok(FleetMode::Open),
            (None, false) => Err(ConfigError::Invalid(NO_FLEET_CHOICE.into())),
        }
    }

    /// The root key, if set and valid.
    pub fn root_key(&self) -> Result<Option<murmur_core::AuthorId>, ConfigError> {
        match &self.root {
            None => Ok(None),
            Some(r) => r
                .trim()
                .parse::<murmur_core::AuthorId>()
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("fleet.root {r:?}: {e} (expected the 64 hex digits `murmur fleet init` printed)"))),
        }
    }
}

/// One retention rule (see `murmur_core::retention`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionRule {
    /// The topics it covers (`sensors/#`).
    pub pattern: String,
    /// Keep events younger than this (event time), e.g. "7days".
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Keep this many newest events per log (per author and topic); 1 = latest only.
    pub max_events_per_log: Option<u64>,
    /// Keep the newest this many bytes of each topic it covers (its logs together,
    /// counted as encoded events: about half of what they take on disk): an integer,
    /// or a size such as "64 MiB".
    #[serde(with = "byte_size")]
    pub max_bytes: Option<u64>,
    /// Never prune these topics.
    pub keep: bool,
}

/// A size in the config: an integer (bytes) or a string with a unit ("64 MiB",
/// "1GB"); written back as an integer (so a rule saved at runtime reads back exactly).
mod byte_size {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Size>::deserialize(d)? {
            None => Ok(None),
            Some(Size::Bytes(n)) => Ok(Some(n)),
            Some(Size::Text(t)) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| Some(b.as_u64()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{t:?} is not a size (e.g. \"64 MiB\", \"1GB\", 4096)"
                    ))
                }),
        }
    }
}

impl Config {
    /// The retention policy of the `[[retention]]` rules.
    pub fn retention_policy(&self) -> Result<murmur_core::retention::Policy, String> {
        policy_of(&self.retention)
    }
}

/// The retention policy of `rules`, each checked.
pub fn policy_of(rules: &[RetentionRule]) -> Result<murmur_core::retention::Policy, String> {
    {
        let rules = rules
            .iter()
            .map(|r| {
                Ok(murmur_core::retention::Rule {
                    pattern: murmur_core::Pattern::new(r.pattern.as_str())
                        .map_err(|e| format!("{:?}: {e}", r.pattern))?,
                    max_age: r.max_age,
                    max_events_per_log: r.max_events_per_log,
                    max_bytes: r.max_bytes,
                    keep: r.keep,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        murmur_core::retention::Policy::new(rules)
    }
}

/// Shared document settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DocsConfig {
    /// Snapshot a document every this many changes (and when evicted, and at shutdown).
    pub snapshot_every: u64,
    /// Largest document change, bytes; larger changes from peers are refused.
    pub max_change_bytes: usize,
    /// Largest document a local write may grow, bytes (snapshot plus changes since).
    pub max_doc_bytes: u64,
    /// Cap on the estimated memory of documents held in memory, MiB.
    pub max_memory_mb: u64,
    /// Documents untouched this long are snapshotted and dropped from memory.
    #[serde(with = "humantime_serde")]
    pub idle_evict: Duration,
    /// A document topic that a retention rule prunes is compacted behind snapshot
    /// events this node publishes (one per document, replicated to every node of the
    /// topic): at most one round of them per topic this often.
    #[serde(with = "humantime_serde")]
    pub compaction_interval: Duration,
}

impl Default for DocsConfig {
    fn default() -> Self {
        let d = crate::docs::DocsConfig::default();
        Self {
            snapshot_every: d.snapshot_every,
            max_change_bytes: d.max_change_bytes,
            max_doc_bytes: d.max_doc_bytes,
            max_memory_mb: d.max_memory_bytes >> 20,
            idle_evict: d.idle_evict,
            compaction_interval: Duration::from_secs(600),
        }
    }
}

impl DocsConfig {
    /// The document manager's settings.
    pub fn manager(&self) -> crate::docs::DocsConfig {
        crate::docs::DocsConfig {
            snapshot_every: self.snapshot_every,
            max_change_bytes: self.max_change_bytes,
            max_doc_bytes: self.max_doc_bytes,
            max_memory_bytes: self.max_memory_mb << 20,
            idle_evict: self.idle_evict,
        }
    }
}

/// Peer-to-peer replication settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Replicate with other nodes at all.
    pub enabled: bool,
    /// libp2p listen addresses.
    pub listen: Vec<String>,
    /// Peers to dial at start and bootstrap Kademlia with (`/ip4/…/tcp/…/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Find peers on the local network by mDNS.
    pub mdns: bool,
    /// Topic patterns this node replicates (MQTT-style).
    pub topics: Vec<String>,
    /// Most connections in total (beyond it new ones are refused).
    pub max_connections: u32,
    /// Most connections with one peer.
    pub max_connections_per_peer: u32,
    /// Peers learned through Kademlia are dialed while fewer than this many are
    /// connected.
    pub links: usize,
    /// Topic-aware discovery: connected peers wanted per interest pattern that
    /// replicate an overlapping pattern; fewer, and the node looks up the pattern's
    /// rendezvous key in Kademlia and dials some. 0 turns it off.
    pub topic_links: usize,
    /// Serve as a circuit relay for nodes behind NAT (a site gateway, a small VM).
    pub relay_server: bool,
    /// Relay: most nodes holding a reservation at once.
    pub relay_max_reservations: usize,
    /// Relay: most circuits open at once.
    pub relay_max_circuits: usize,
    /// Relay: megabytes one circuit may carry before it is closed.
    pub relay_circuit_mb: u64,
    /// Relay: how long one circuit may stay open.
    #[serde(with = "humantime_serde")]
    pub relay_circuit_duration: Duration,
    /// Relays to hold a reservation at (`/ip4/…/tcp/7470/p2p/<relay id>`), so that
    /// peers can reach this node from behind its NAT; hole punching then tries to
    /// make the connection direct.
    pub relays: Vec<String>,
    /// Private fleet: a pre-shared key file (`murmur genpsk`); peers without the same key
    /// cannot connect. Turns QUIC off (pnet works over TCP only).
    pub psk_file: Option<PathBuf>,
    /// Interval between periodic anti-entropy rounds, e.g. `"10s"`.
    #[serde(with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// How long a sync message may go unanswered before its round fails (and is
    /// retried with back-off).
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// Lag watchdog: when what this node lacks from a peer (by the peer's last vector)
    /// has not shrunk for this long, it is logged, counted
    /// (`murmur_sync_rounds_total{outcome="lagging"}`), shown in `murmur status`, and
    /// rounds on the topic run with that peer and the next one that replicates it.
    #[serde(with = "humantime_serde")]
    pub lag_watch: Duration,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec![
                "/ip4/0.0.0.0/tcp/7470".into(),
                "/ip4/0.0.0.0/udp/7470/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            topics: vec!["#".into()],
            psk_file: None,
            max_connections: 256,
            max_connections_per_peer: 2,
            links: 8,
            topic_links: 3,
            relay_server: false,
            relay_max_reservations: 128,
            relay_max_circuits: 64,
            relay_circuit_mb: 256,
            relay_circuit_duration: Duration::from_secs(3600),
            relays: Vec::new(),
            anti_entropy_interval: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(10),
            lag_watch: Duration::from_secs(60),
        }
    }
}

/// Local control API settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket path; default `<data dir>/murmur.sock`. Created with mode 0600.
    pub socket: Option<PathBuf>,
    /// Also serve the API, and the web dashboard at `/`, on this TCP address, e.g.
    /// `"127.0.0.1:7480"` (off by default). Every API request over TCP needs the
    /// bearer token in `<data dir>/api.token` (`murmur dashboard` prints the URL).
    /// Plain HTTP: keep it on loopback, or put TLS in front.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Largest event payload accepted from local applications, bytes.
    pub max_payload_bytes: usize,
    /// Most events in one batch publish request.
    pub max_batch_events: usize,
    /// Largest request body (a batch publish), bytes.
    pub max_request_bytes: usize,
    /// Most concurrent follow streams; more get 503.
    pub max_followers: usize,
    /// Most events returned by one read request.
    pub max_read_events: usize,
    /// Most open API connections; more wait until one closes. Lowered at start when the
    /// open-files limit leaves less room beside RocksDB and libp2p.
    pub max_connections: usize,
    /// A connection whose client has not read for this long while the daemon has data
    /// for it (a stalled follower, a dead client) is closed, e.g. `"30s"`.
    #[serde(with = "humantime_serde")]
    pub write_stall: Duration,
    /// A connection that sends and receives nothing for this long, with no follow
    /// stream open on it (an idle keep-alive, a client that connected and went away),
    /// is closed, e.g. `"60s"`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long an idempotency key answers for what it published: a retry within it
    /// gets the first result and stores nothing, e.g. `"24h"`.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Most named consumers (server-side cursors, `murmur consumers`); creating one
    /// more is refused until one is deleted.
    pub max_consumers: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: None,
            http_listen: None,
            max_payload_bytes: 1 << 20,
            max_batch_events: 10_000,
            max_request_bytes: 16 << 20,
            max_followers: 64,
            max_read_events: 10_000,
            max_connections: 256,
            write_stall: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_consumers: 256,
        }
    }
}

/// Ingest pipeline settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Publish requests waiting for the writer; when full the API answers 503 + Retry-After.
    pub queue_requests: usize,
    /// Payload bytes waiting for the writer; when full the API answers 503 + Retry-After.
    pub queue_bytes: usize,
    /// Most events written in one group commit (one WriteBatch, one WAL sync).
    pub max_commit_events: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue_requests: 1024,
            queue_bytes: 64 << 20,
            max_commit_events: 4096,
        }
    }
}

/// When a local publish counts as durable.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// fsync the write-ahead log before acknowledging: survives power loss.
    #[default]
    Fsync,
    /// Hand the write to the OS before acknowledging: survives a daemon crash, not a
    /// power loss. Several times faster on slow storage.
    Os,
}

/// Storage settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `fsync` (default) or `os`; see [`SyncPolicy`].
    pub sync: SyncPolicy,
    /// RocksDB block cache, MiB.
    pub block_cache_mb: usize,
    /// RocksDB memtable budget across column families, MiB.
    pub write_buffer_mb: usize,
    /// Most open SST files.
    pub max_open_files: i32,
    /// How often retention prunes (when `[[retention]]` rules or a disk budget exist).
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Disk budget of the database, MiB (0: none). Past 40% of it, the oldest events
    /// of topics not marked `keep` are pruned down to 25%; the rest is RocksDB's
    /// working room.
    pub max_disk_mb: u64,
}

impl StoreConfig {
    /// The memtable budget in bytes: `write_buffer_mb`, but at most an eighth of a
    /// disk budget (at least 2 MiB). Memtables are written to the WAL as they fill and
    /// flushed to files only when full, so a 16 MiB buffer would be half of a 32 MiB
    /// budget before pruning could free any of it.
    pub fn write_buffer_bytes(&self) -> usize {
        let mb = if self.max_disk_mb > 0 {
            let cap = usize::try_from(self.max_disk_mb / 8).unwrap_or(usize::MAX);
            self.write_buffer_mb.min(cap.max(2))
        } else {
            self.write_buffer_mb
        };
        mb << 20
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Fsync,
            block_cache_mb: 8,
            write_buffer_mb: 16,
            max_open_files: 256,
            prune_interval: Duration::from_secs(60),
            max_disk_mb: 0,
        }
    }
}

/// Hybrid logical clock settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// How far ahead of our wall clock a remote timestamp may be and still move our
    /// clock, e.g. `"60s"`. Events with times further ahead are kept (they are signed
    /// history) but do not move the clock; they are counted and shown in status.
    #[serde(with = "humantime_serde")]
    pub max_drift: Duration,
    /// Shifts this node's wall clock, e.g. `"24h"` or `"-5m"`: for labs and tests that
    /// need a host with a wrong clock. Leave it at `"0s"` on a real device.
    pub offset: String,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            max_drift: murmur_core::Clock::DEFAULT_MAX_DRIFT,
            offset: "0s".into(),
        }
    }
}

impl ClockConfig {
    /// `offset` in ms: a humantime duration with an optional leading `-`.
    pub fn offset_ms(&self) -> Result<i64, ConfigError> {
        let s = self.offset.trim();
        let (neg, abs) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let d = humantime::parse_duration(abs.trim()).map_err(|e| {
            ConfigError::Invalid(format!(
                "clock.offset {s:?}: {e} (write e.g. \"24h\" or \"-5m\")"
            ))
        })?;
        let ms = i64::try_from(d.as_millis())
            .map_err(|_| ConfigError::Invalid(format!("clock.offset {s:?} is too large")))?;
        Ok(if neg { -ms } else { ms })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax, used when `RUST_LOG` is not set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Checks `log.level` for words tracing would take as a target rather than a level:
/// `"warning"` is valid `RUST_LOG` syntax meaning "trace for a target named warning",
/// which turns every other log line off, errors included. Each comma-separated
/// directive must be a level or `target=level` (span filters `[..]` are left to
/// tracing).
fn check_log_level(filter: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.contains('[') {
            continue;
        }
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(ConfigError::Invalid(format!(
                "log.level: {d:?} is not a level; write one of trace, debug, info, warn, error, off, or target=level (e.g. \"info,murmur_daemon=debug\")"
            )));
        }
    }
    Ok(())
}

impl Config {
    /// Parses TOML text; `path` is for error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Loads `explicit` if given, else `<data_dir>/murmur.toml` if it exists, else defaults.
    pub fn discover(explicit: Option<&Path>, data_dir: &Path) -> Result<Self, ConfigError> {
        match explicit {
            Some(p) => Self::load(p),
            None => {
                let p = data_dir.join(CONFIG_FILE);
                if p.exists() {
                    Self::load(&p)
                } else {
                    Ok(Self::default())
                }
            }
        }
    }

    /// Checks ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.mqtt.validate()?;
        if self.fleet.forget_after <= self.fleet.heartbeat_interval * 3
            || self.fleet.forget_after < Duration::from_secs(60)
        {
            return bad(format!(
                "fleet.forget_after is {}: give at least 1m, and more than 3 heartbeat intervals (a node is stale after 3)",
                humantime::format_duration(self.fleet.forget_after)
            ));
        }
        let hb = self.fleet.heartbeat_interval;
        if !hb.is_zero() && (hb < Duration::from_secs(1) || hb > Duration::from_secs(24 * 3600)) {
            return bad(format!(
                "fleet.heartbeat_interval is {}: give 1s to 24h, or 0s for none",
                humantime::format_duration(hb)
            ));
        }
        if self.fleet.open && self.fleet.root.is_some() {
            return bad(
                "fleet.root and fleet.open = true: a fleet is closed (root) or open, not both"
                    .into(),
            );
        }
        self.fleet.root_key()?;
        let max_payload = murmur_core::MAX_EVENT_BYTES - 4096;
        if self.api.max_payload_bytes == 0 || self.api.max_payload_bytes > max_payload {
            return bad(format!("api.max_payload_bytes must be 1..={max_payload}"));
        }
        if self.api.max_batch_events == 0 {
            return bad("api.max_batch_events must be at least 1".into());
        }
        if self.api.max_request_bytes < self.api.max_payload_bytes {
            return bad("api.max_request_bytes must be at least api.max_payload_bytes".into());
        }
        if self.api.write_stall.is_zero() {
            return bad("api.write_stall must be more than 0".into());
        }
        if self.api.idle_timeout.is_zero() {
            return bad("api.idle_timeout must be more than 0".into());
        }
        if self.api.max_connections <= self.api.max_followers {
            return bad("api.max_connections must be larger than api.max_followers".into());
        }
        if self.api.max_read_events == 0 || self.api.max_followers == 0 {
            return bad("api.max_read_events and api.max_followers must be at least 1".into());
        }
        if self.ingest.queue_requests == 0 || self.ingest.max_commit_events == 0 {
            return bad(
                "ingest.queue_requests and ingest.max_commit_events must be at least 1".into(),
            );
        }
        if self.docs.snapshot_every == 0 || self.docs.max_change_bytes == 0 {
            return bad("docs.snapshot_every and docs.max_change_bytes must be at least 1".into());
        }
        self.clock.offset_ms()?;
        check_log_level(&self.log.level)?;
        if self.ingest.queue_bytes < self.api.max_request_bytes {
            return bad("ingest.queue_bytes must be at least api.max_request_bytes".into());
        }
        for a in self
            .p2p
            .listen
            .iter()
            .chain(&self.p2p.bootstrap)
            .chain(&self.p2p.relays)
        {
            if a.parse::<murmur_p2p::Multiaddr>().is_err() {
                return bad(format!(
                    "p2p: {a:?} is not a multiaddr (e.g. /ip4/192.0.2.1/tcp/7470/p2p/<peer id>)"
                ));
            }
        }
        for t in &self.p2p.topics {
            if let Err(e) = murmur_core::Pattern::new(t.as_str()) {
                return bad(format!("p2p.topics: {t:?}: {e}"));
            }
        }
        for r in &self.p2p.relays {
            if !r.contains("/p2p/") {
                return bad(format!(
                    "p2p.relays: {r:?} needs the relay's peer id: /ip4/192.0.2.1/tcp/7470/p2p/<peer id> (murmur peers on the relay prints it)"
                ));
            }
        }
        if self.p2p.sync_timeout < Duration::from_secs(1)
            || self.p2p.lag_watch < Duration::from_secs(1)
        {
            return bad("p2p.sync_timeout and p2p.lag_watch must be at least 1s".into());
        }
        if self.p2p.topics.len() > murmur_core::channel::MAX_JOINED {
            return bad(format!(
                "p2p.topics: {} patterns; at most {} (each is a gossip channel). Use broader patterns: sensors/# covers every sensors/<device>/... topic",
                self.p2p.topics.len(),
                murmur_core::channel::MAX_JOINED
            ));
        }
        if self.p2p.max_connections == 0 || self.p2p.max_connections_per_peer == 0 {
            return bad(
                "p2p.max_connections and p2p.max_connections_per_peer must be at least 1".into(),
            );
        }
        if let Err(e) = self.retention_policy() {
            return bad(format!("retention: {e}"));
        }
        if self.store.prune_interval < Duration::from_secs(1) {
            return bad("store.prune_interval must be at least 1s".into());
        }
        if self.store.block_cache_mb == 0 || self.store.write_buffer_mb < 2 {
            return bad(
                "store.block_cache_mb must be at least 1 and store.write_buffer_mb at least 2"
                    .into(),
            );
        }
        Ok(())
    }

    /// The control socket path for `data_dir`.
    pub fn socket_path(&self, data_dir: &Path) -> PathBuf {
        self.api
            .socket
            .clone()
            .unwrap_or_else(|| data_dir.join(SOCKET_FILE))
    }
}

/// The data directory: `flag`, else `MURMUR_DATA_DIR` (clap passes both as `flag`), else
/// the config's `data_dir`, else `$XDG_DATA_HOME/murmur`.
pub fn resolve_data_dir(
    flag: Option<&Path>,
    config: Option<&Config>,
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = config.and_then(|c| c.data_dir.clone()) {
        return Ok(p);
    }
    dirs::data_dir()
        .map(|d| d.join("murmur"))
        .ok_or(ConfigError::NoDataDir)
}

/// A commented config file with every option at its default, written by `murmur init`.
pub const EXAMPLE: &str = r##"# murmur configuration. Every option is shown with its default.
# Unknown keys are errors, so a typo cannot silently leave a default in force.

# Data directory (node key, database, control socket). --data-dir and MURMUR_DATA_DIR
# take precedence.
# data_dir = "/var/lib/murmur"

[api]
# Control socket (HTTP/1.1 + JSON, mode 0600). Default: <data dir>/murmur.sock
# socket = "/run/murmur/murmur.sock"
# The web dashboard and the API over TCP (for Prometheus too), off by default. Every
# request needs the bearer token in <data dir>/api.token; `murmur dashboard` prints the
# URL. Plain HTTP: keep it on loopback (or put TLS in front).
# http_listen = "127.0.0.1:7480"
# Largest event payload accepted from local applications, bytes.
max_payload_bytes = 1048576
# Most events in one batch publish request.
max_batch_events = 10000
# Largest request body (batch publishes), bytes.
max_request_bytes = 16777216
# Most concurrent follow streams (more get 503).
max_followers = 64
# Most events returned by one read request.
max_read_events = 10000
# Most open API connections; more wait until one closes (lowered at start when the
# open-files limit leaves less room beside RocksDB and libp2p).
max_connections = 256
# Close a connection whose client has not read for this long while data waits for it
# (a stalled follower, a dead client): its slots come back.
write_stall = "30s"
# Close a connection that sends and receives nothing for this long and has no follow
# stream open (an idle keep-alive, a client that went away): its slot comes back.
idle_timeout = "60s"
# A publish with an idempotency key (field idempotency_key, or header Idempotency-Key)
# retried within this window gets the first result; nothing is stored twice.
idempotency_window = "24h"
# Most named consumers (server-side cursors: `murmur sub --consumer`, `murmur consumers`).
max_consumers = 256

[ingest]
# Publish requests waiting for the writer; beyond this the API answers 503 + Retry-After.
queue_requests = 1024
# Payload bytes waiting for the writer; beyond this the API answers 503 + Retry-After.
queue_bytes = 67108864
# Most events per group commit (one RocksDB WriteBatch, one WAL sync).
max_commit_events = 4096

[docs]
# Snapshot a document every this many changes (and when evicted, and at shutdown).
snapshot_every = 1000
# Largest document change, bytes; larger changes from peers are refused.
max_change_bytes = 1048576
# Largest document a local write may grow, bytes (snapshot plus changes since).
max_doc_bytes = 67108864
# Cap on the estimated memory of documents held in memory, MiB.
max_memory_mb = 256
# Documents untouched this long are snapshotted and dropped from memory.
idle_evict = "10m"
# A document topic that a [[retention]] rule prunes is compacted behind snapshot
# events this node publishes (one per document, replicated to every node of the
# topic, which a node joining later starts from): at most one round per topic this often.
compaction_interval = "10m"

[store]
# "fsync": acknowledge a publish after the WAL is fsynced (survives power loss).
# "os": after the OS has the write (survives a daemon crash, not power loss).
sync = "fsync"
# RocksDB block cache, MiB.
block_cache_mb = 8
# RocksDB memtable budget across column families, MiB.
write_buffer_mb = 16
# Most open SST files.
max_open_files = 256
# How often retention prunes, when [[retention]] rules or a disk budget exist.
prune_interval = "1m"
# Disk budget of the database, MiB (0: none). Past 40% of it, the oldest events of
# topics not marked keep = true go first, down to 25% (the rest is RocksDB's working
# room: memtable flushes, and compactions that write before they delete). Topics marked
# keep that fill the disk alone end in the disk-full state (publishing answers 507).
# A catch-up pauses its pulls past 50% until pruning makes room (live gossip goes on
# until 55%), and the memtables get at most an eighth of the budget.
max_disk_mb = 0

# Retention: none by default (every event is kept). Rules are matched against a topic
# in order and the first match decides; a topic no rule matches is kept whole. A log's
# newest event always stays (the chain continues from it). Document topics are cut
# only behind snapshots this node publishes (see [docs] compaction_interval). For
# example, a device fleet:
#
# [[retention]]            # heartbeats and status: latest value per device
# pattern = "status/#"
# max_events_per_log = 1
#
# [[retention]]            # sensor readings: a week
# pattern = "sensors/#"
# max_age = "7days"
#
# [[retention]]            # logs: the newest 256 MiB of each topic, oldest first
# pattern = "logs/#"
# max_bytes = "256 MiB"   # encoded events (the disk holds about twice that)
#
# [[retention]]            # configuration: kept whole
# pattern = "config/#"
# keep = true

# `murmur retention set|rm|reset` changes the rules on a running node; those replace
# these until reset (kept in <data dir>/retention.json).

[clock]
# Remote times up to this far ahead of our wall clock move our clock, so later local
# events are ordered after them. Events further ahead are kept but do not move the
# clock; they are counted (murmur_clock_ahead_events_total) and the worst author is
# shown by `murmur status`.
max_drift = "1m"
# Shift this node's wall clock ("24h", "-5m"): for labs and tests only.
offset = "0s"

[p2p]
# Replicate with other nodes.
enabled = true
# libp2p listen addresses (TCP and QUIC).
listen = ["/ip4/0.0.0.0/tcp/7470", "/ip4/0.0.0.0/udp/7470/quic-v1"]
# Peers to dial at start and to join a wider fleet through (Kademlia); never public nodes.
bootstrap = []
# Find peers on the local network by mDNS.
mdns = true
# Topic patterns this node replicates ("#": every application topic; the fleet's own
# $fleet/… topics are always replicated).
topics = ["#"]
# Most connections in total, and with one peer; beyond them new ones are refused.
max_connections = 256
max_connections_per_peer = 2
# Peers learned through Kademlia are dialed while fewer than this many are connected.
links = 8
# Topic-aware discovery: for each pattern in `topics`, keep this many connected peers
# that replicate an overlapping pattern, found through Kademlia (0: off).
topic_links = 3
# Serve as a circuit relay for nodes behind NAT (a site gateway, a small VM). A relay
# forwards Noise-encrypted bytes it cannot read, within these limits.
relay_server = false
relay_max_reservations = 128
relay_max_circuits = 64
relay_circuit_mb = 256
relay_circuit_duration = "1h"
# Relays to hold a reservation at: peers reach this node through them from behind NAT,
# and hole punching then tries to make the connection direct.
relays = []
# Private fleet: a pre-shared key file made by `murmur genpsk`. Peers without the same
# key cannot connect. QUIC is off when a key is set (pnet works over TCP only).
# psk_file = "/etc/murmur/fleet.key"
# Interval between periodic anti-entropy rounds with the next peer in turn.
anti_entropy_interval = "10s"
# A sync message unanswered this long fails its round, which is retried with back-off.
sync_timeout = "10s"
# Lag watchdog: what this node lacks from a peer has not shrunk for this long: warn,
# count, show in `murmur status`, and try the next peer that replicates the topic.
lag_watch = "60s"

[fleet]
# Who may join and write; every node that speaks to the network must choose.
# Open: any peer that connects (with the psk_file's key, if set) may write anything.
# Fine for a lab or a network only you reach; remove this line for a closed fleet.
open = true
# Closed fleet: the root key printed by `murmur fleet init`. Peers then need a
# certificate from it (`murmur fleet admit` / `murmur fleet join`) to connect, and every
# event needs a grant for its topic (`murmur fleet grant`).
# root = "…64 hex digits…"
# Every node publishes a small signed heartbeat (version, disk, memory, peers, lag,
# forks) on $fleet/health, kept latest-only; `murmur fleet nodes` lists the whole
# fleet from them and flags nodes not heard from in 3 intervals. "0s": none.
heartbeat_interval = "30s"
# A node not heard from in this long leaves that list (a retired device).
forget_after = "7days"

[mqtt]
# An MQTT 3.1.1 listener for local sensors and tools (mosquitto_pub, Node-RED,
# Telegraf): a PUBLISH becomes a signed event on the same topic (QoS 1 acknowledged
# once it is durable), a SUBSCRIBE follows the matching events from every device.
# Off unless set. Beyond loopback, username and password_file are required.
# listen = "127.0.0.1:1883"
# username = "sensors"
# password_file = "/etc/murmur/mqtt.password"
# MQTT over TLS (required beyond loopback, unless allow_plaintext = true):
# tls_cert = "/etc/murmur/mqtt.crt"
# tls_key = "/etc/murmur/mqtt.key"
max_connections = 64
# Bridges forward a pattern's events to an upstream broker, at least once, resuming
# after restarts and outages (through the named consumer bridge.NAME).
# [[mqtt.bridge]]
# name = "cloud"
# broker = "mqtt.example.net:8883"
# pattern = "sensors/#"
# remote_prefix = "site-7/"
# username = "site-7"
# password_file = "/etc/murmur/cloud.password"
# inflight = 100
# keep_alive = "30s"
# tls = true
# ca_file = "/etc/murmur/cloud-ca.pem"

[log]
# "text" or "json".
format = "text"
# Filter in RUST_LOG syntax; RUST_LOG takes precedence.
level = "info"
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_budget_caps_the_memtables_at_an_eighth_of_it() {
        let mut s = StoreConfig::default();
        assert_eq!(s.write_buffer_bytes(), 16 << 20, "no budget: as set");
        s.max_disk_mb = 32;
        assert_eq!(s.write_buffer_bytes(), 4 << 20);
        s.max_disk_mb = 8;
        assert_eq!(s.write_buffer_bytes(), 2 << 20, "never under 2 MiB");
        s.max_disk_mb = 10_000;
        assert_eq!(s.write_buffer_bytes(), 16 << 20, "never over what is set");
    }

    #[test]
    fn mqtt_settings_are_checked() {
        let bridge = |broker: &str, tls: bool| MqttConfig {
            bridge: vec![BridgeConfig {
                name: "up".into(),
                broker: broker.into(),
                pattern: "a/#".into(),
                tls,
                ..BridgeConfig::default()
            }],
            ..MqttConfig::default()
        };
        assert!(bridge("broker.example:8883", true).validate().is_ok());
        assert!(bridge("192.0.2.1:8883", true).validate().is_ok());
        // A bracketed IPv6 host cannot be checked against a certificate by name.
        assert!(bridge("[::1]:8883", true).validate().is_err());
        assert!(bridge("[::1]:1883", false).validate().is_ok());
        assert!(bridge("no-port", false).validate().is_err());
        let mut prefix = bridge("b:1883", false);
        prefix.bridge[0].remote_prefix = "site/+/".into();
        assert!(prefix.validate().is_err());
        // Beyond loopback: a login, and TLS unless plaintext is allowed.
        let open = MqttConfig {
            listen: Some("0.0.0.0:1883".parse().unwrap()),
            ..MqttConfig::default()
        };
        assert!(open.validate().is_err());
        let login = MqttConfig {
            username: Some("u".into()),
            password_file: Some("/p".into()),
            ..open.clone()
        };
        let err = login.validate().unwrap_err().to_string();
        assert!(err.contains("tls_cert"), "{err}");
        assert!(
            MqttConfig {
                allow_plaintext: true,
                ..login.clone()
            }
            .validate()
            .is_ok()
        );
        assert!(
            MqttConfig {
                tls_cert: Some("/c".into()),
                tls_key: Some("/k".into()),
                ..login
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn example_parses_to_the_defaults() {
        let mut c = Config::from_toml(EXAMPLE, Path::new("example")).unwrap();
        // The one choice the example makes for the user, out loud: an open fleet.
        assert_eq!(c.fleet.mode().unwrap(), FleetMode::Open);
        c.fleet.open = false;
        assert_eq!(c, Config::default());
    }

    /// A node that speaks to the network must choose its fleet: closed (a root key),
    /// or open, explicitly; neither, or both, is refused with what to write.
    #[test]
    fn the_fleet_must_be_chosen_open_or_closed() {
        let root = murmur_core::testing::key(9).author().to_string();
        let mode = |t: &str| Config::from_toml(t, Path::new("x")).and_then(|c| c.fleet.mode());
        assert_eq!(mode("[fleet]\nopen = true\n").unwrap(), FleetMode::Open);
        assert_eq!(
            mode(&format!("[fleet]\nroot = \"{root}\"\n")).unwrap(),
            FleetMode::Closed(root.parse().unwrap())
        );
        let none = mode("").unwrap_err().to_string();
        assert!(
            none.contains("[fleet] open = true") && none.contains("murmur fleet init"),
            "{none}"
        );
        let both = mode(&format!("[fleet]\nroot = \"{root}\"\nopen = true\n"))
            .unwrap_err()
            .to_string();
        assert!(both.contains("not both"), "{both}");
    }

    /// The example's commented retention rules, uncommented, are the policy they say.
    #[test]
    fn the_retention_example_parses_and_bad_rules_are_refused() {
        let start = EXAMPLE.find("# [[retention]]").unwrap();
        let end = EXAMPLE[start..].find("\n\n").unwrap() + start;
        let rules: String = EXAMPLE[start..end]
            .lines()
            .map(|l| l.trim_start_matches("# ").trim_start_matches('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&rules, Path::new("x")).unwrap();
        let p = c.retention_policy().unwrap();
        let r = p.rules();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].max_events_per_log, Some(1));
        assert_eq!(r[1].max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r[2].max_bytes, Some(256 << 20));
        assert!(r[3].keep);
        // Sizes read as integers too, and are written back as integers (a rule set at
        // runtime is saved as JSON and must read back the same).
        let c = Config::from_toml(
            "[[retention]]\npattern = \"a/#\"\nmax_bytes = 1234567\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.retention[0].max_bytes, Some(1_234_567));
        let json = serde_json::to_string(&c.retention).unwrap();
        let back: Vec<RetentionRule> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c.retention);
        for bad in [
            "[[retention]]\npattern = \"a/#\"\n",
            "[[retention]]\npattern = \"a/#\"\nmax_events_per_log = 0\n",
            "[[retention]]\npattern = \"a/#\"\nmax_bytes = 0\n",
            "[[retention]]\npattern = \"a/#\"\nmax_bytes = \"lots\"\n",
            "[[retention]]\npattern = \"a/#\"\nkeep = true\nmax_age = \"1h\"\n",
            "[[retention]]\npattern = \"a/#/b\"\nkeep = true\n",
        ] {
            let e = Config::from_toml(bad, Path::new("x"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("retention") || e.contains("is not a size"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::from_toml("[store]\nsynk = \"os\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("synk"), "{e}");
        let e = Config::from_toml("[store]\nsync = \"sometimes\"\n", Path::new("x")).unwrap_err();
        assert!(
            e.to_string().contains("sometimes") || e.to_string().contains("variant"),
            "{e}"
        );
        let e = Config::from_toml("[api]\nmax_payload_bytes = 0\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)));
        let c = Config::from_toml(
            "[store]\nsync = \"os\"\n[clock]\nmax_drift = \"5s\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.store.sync, SyncPolicy::Os);
        assert_eq!(c.clock.max_drift, Duration::from_secs(5));
        assert_eq!(c.clock.offset_ms().unwrap(), 0);
    }

    #[test]
    fn a_log_level_that_is_not_a_level_is_refused() {
        let at = |l: &str| Config::from_toml(&format!("[log]\nlevel = \"{l}\"\n"), Path::new("x"));
        for ok in [
            "info",
            "WARN",
            "info,murmur_daemon=debug",
            "off",
            "libp2p_gossipsub=error",
        ] {
            assert!(at(ok).is_ok(), "{ok}");
        }
        for bad in ["warning", "information", "info,murmur_daemon=verbose"] {
            let e = at(bad).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{bad}: {e}");
            assert!(e.to_string().contains("not a level"), "{e}");
        }
    }

    #[test]
    fn p2p_limits_are_checked_with_a_way_out() {
        let at = |t: &str| Config::from_toml(&format!("[p2p]\n{t}\n"), Path::new("x"));
        let e = at("relays = [\"/ip4/192.0.2.1/tcp/7470\"]").unwrap_err();
        assert!(e.to_string().contains("peer id"), "{e}");
        let topics: Vec<String> = (0..33).map(|i| format!("\"t/{i}\"")).collect();
        let e = at(&format!("topics = [{}]", topics.join(","))).unwrap_err();
        assert!(e.to_string().contains("broader patterns"), "{e}");
        let e = at("lag_watch = \"0s\"").unwrap_err();
        assert!(e.to_string().contains("at least 1s"), "{e}");
        let c = at("relay_server = true\nrelay_circuit_mb = 16\ntopic_links = 0").unwrap();
        assert!(c.p2p.relay_server);
        assert_eq!(c.p2p.relay_circuit_mb, 16);
        assert_eq!(c.p2p.topic_links, 0);
    }

    #[test]
    fn clock_offset_takes_a_sign() {
        let at = |o: &str| {
            Config::from_toml(&format!("[clock]\noffset = \"{o}\"\n"), Path::new("x"))
                .and_then(|c| c.clock.offset_ms())
        };
        assert_eq!(at("24h").unwrap(), 86_400_000);
        assert_eq!(at("-5m").unwrap(), -300_000);
        assert_eq!(at("+1s").unwrap(), 1_000);
        assert!(matches!(at("tomorrow"), Err(ConfigError::Invalid(_))));
    }
}
