//! Running a node: open everything in order, serve, shut down cleanly.
//!
//! Startup: data directory → node key → store (takes the RocksDB lock, checks
//! integrity) → writer thread → control socket. Shutdown (when the token fires): stop
//! accepting connections, end follow streams, let in-flight publishes finish, stop the
//! writer after it drains its queue, sync the WAL, remove the socket.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use murmur_core::{Clock, Durability, ReadStore, Store};
use murmur_store::{RocksConfig, RocksStore, StoreError};
use prometheus_client::registry::Registry;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::NodeClock;
use crate::config::{Config, DB_DIR, INTEREST_FILE, KEY_FILE, PEERS_FILE, SyncPolicy};
use crate::ingest::{self, WriterConfig};
use crate::keyfile;
use crate::metrics::Metrics;
use crate::replicate;
use crate::server::{self, AppState, Limits};

/// Replicator inbox: network events, published batches, ticks.
const REPLICATOR_QUEUE: usize = 4096;
/// How often the replicator checks deadlines and periodic rounds.
const TICK: Duration = Duration::from_millis(250);
/// How long shutdown waits for open connections before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The MQTT listener and bridges, when configured; they end with `shutdown`.
async fn start_mqtt(
    state: &Arc<AppState>,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let m = &config.mqtt;
    if let Some(addr) = m.listen {
        let login = match (&m.username, &m.password_file) {
            (Some(u), Some(f)) => Some((u.clone(), crate::mqtt::read_password(f)?)),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on mqtt.listen = {addr}"))?;
        tracing::info!(%addr, login = login.is_some(), tls = m.tls_cert.is_some(), "MQTT listener (3.1.1)");
        let ctx = Arc::new(crate::mqtt::Listener {
            state: state.clone(),
            login,
            slots: Arc::new(Semaphore::new(m.max_connections)),
            write_stall: config.api.write_stall,
            clients: std::sync::Mutex::new(std::collections::HashMap::new()),
            connections: std::sync::atomic::AtomicU64::new(0),
            tls: match (&m.tls_cert, &m.tls_key) {
                (Some(c), Some(k)) => Some(crate::mqtt::tls_acceptor(c, k)?),
                _ => None,
            },
        });
        tokio::spawn(crate::mqtt::serve(listener, ctx, shutdown.clone()));
    }
    for b in &m.bridge {
        state
            .consumers
            .own(&format!("{}{}", crate::consumers::BRIDGE_PREFIX, b.name))
            .await;
        let password = match &b.password_file {
            Some(f) => Some(crate::mqtt::read_password(f)?),
            None => None,
        };
        let tls = if b.tls {
            Some(crate::mqtt::bridge::tls_config(b.ca_file.as_deref())?)
        } else {
            None
        };
        tokio::spawn(crate::mqtt::bridge::run(
            state.clone(),
            b.clone(),
            password,
            tls,
            shutdown.clone(),
        ));
    }
    Ok(())
}

/// Creates the data directory (mode 0700) if needed.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    Ok(())
}

/// Opens the store of `data_dir`, translating the lock error into advice.
pub fn open_store(data_dir: &Path, config: &Config) -> anyhow::Result<RocksStore> {
    let rc = RocksConfig {
        block_cache_bytes: config.store.block_cache_mb << 20,
        write_buffer_bytes: config.store.write_buffer_bytes(),
        max_open_files: config.store.max_open_files,
    };
    let path = data_dir.join(DB_DIR);
    RocksStore::open(&path, &rc).map_err(|e| match e {
        StoreError::Locked(_) => anyhow::anyhow!(
            "another murmur daemon is already running on {} (the database lock is held); stop it first or use another --data-dir",
            data_dir.display()
        ),
        other => anyhow::Error::new(other).context(format!("cannot open the store in {}", path.display())),
    })
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is {len} bytes; Unix sockets allow {MAX_SOCKET_PATH}. Set api.socket to a shorter path",
            path.display()
        );
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process is already serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    Ok(listener)
}

/// The running network side: swarm task, replicator thread and their helpers.
struct Network {
    handle: murmur_p2p::Handle,
    replicator: replicate::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    swarm: tokio::task::JoinHandle<()>,
    replicator_thread: std::thread::JoinHandle<()>,
}

impl Network {
    /// Stops the replicator (after the writer, so every local event was handed over),
    /// then the swarm.
    async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        // Explicit stops: an API connection still open may hold senders and handles.
        self.replicator.stop().await;
        drop(self.replicator);
        let replicator = self.replicator_thread;
        if tokio::task::spawn_blocking(move || replicator.join())
            .await
            .is_err()
        {
            tracing::warn!("the replicator thread panicked");
        }
        self.handle.stop().await;
        drop(self.handle);
        if tokio::time::timeout(Duration::from_secs(5), self.swarm)
            .await
            .is_err()
        {
            tracing::warn!("network task did not stop in time");
        }
    }
}

fn parse_addrs(list: &[String]) -> anyhow::Result<Vec<murmur_p2p::Multiaddr>> {
    list.iter()
        .map(|a| a.parse().with_context(|| format!("bad multiaddr {a:?}")))
        .collect()
}

/// When a log may start over at a peer's base (the peer pruned past our head): the
/// node's own logs always (the peer holds what this node signed; going on from a stale
/// head would fork its own log); a document topic's only on a snapshot that covers
/// what lies below the base ([`doc_restart`]); others as
/// `retention::Policy::may_restart` says.
fn restart_check(
    rules: crate::retention::Rules,
    own: murmur_core::AuthorId,
    clock: Arc<NodeClock>,
    store: Arc<RocksStore>,
) -> murmur_core::sync::RestartCheck {
    murmur_core::sync::RestartCheck(Arc::new(move |range, peer_head| {
        let Some(first) = range.first() else {
            return false;
        };
        if first.author() == own {
            return true;
        }
        let held = store
            .log_state(&first.author(), first.topic())
            .ok()
            .map(|s| {
                s.head
                    .map_or(0, |h| h.seq.0 + 1 - s.base.0.min(h.seq.0 + 1))
            });
        let policy = rules.policy();
        match doc_restart(&store, &policy, range, held) {
            Some(ok) => ok,
            None => policy.may_restart(first, peer_head, clock.wall_ms(), held),
        }
    }))
}

/// Most held snapshot events (newest first) a restart of a document topic's log looks
/// through for one that covers it.
const RESTART_SNAPSHOTS: usize = 64;

/// Whether a log of a document topic may start over at the first event of `range`
/// (`None`: not a document topic), `held` being the events of that log held here.
/// Only on a snapshot that covers the author's log up to the event before it
/// (`murmur_core::snapshot`): one in the range (the compacting node's own log keeps
/// its snapshots just past its base), or one held here. And only a log this node
/// prunes, or one it holds nothing of (a node that keeps the topic whole drops
/// nothing it holds; it stays behind instead, as for any kept topic).
fn doc_restart(
    store: &RocksStore,
    policy: &murmur_core::retention::Policy,
    range: &[murmur_core::Event],
    held: Option<u64>,
) -> Option<bool> {
    use murmur_core::snapshot::DocSnapshot;
    let first = range.first()?;
    let doc_topic = range.iter().any(|e| {
        matches!(e.body(), murmur_core::Body::Doc { .. })
            || DocSnapshot::of(e).is_some_and(|s| s.is_ok())
    }) || store
        .docs_of(first.topic(), 1)
        .map_or(true, |d| !d.is_empty());
    if !doc_topic {
        return None;
    }
    let prunes = policy.rule_for(first.topic()).is_some_and(|(_, r)| !r.keep);
    if !prunes && held != Some(0) {
        return Some(false);
    }
    if range
        .iter()
        .any(|ev| DocSnapshot::of(ev).is_some_and(|s| s.is_ok_and(|s| s.covers_below(ev, first))))
    {
        return Some(true);
    }
    let mut covered = false;
    let found = store.snapshot_events(first.topic(), None, RESTART_SNAPSHOTS, |ev, s| {
        covered = s.covers_below(&ev, first);
        !covered
    });
    match found {
        Ok(()) => Some(covered),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the snapshots of a document topic");
            Some(false)
        }
    }
}

/// Where a far-behind log's pull starts: this node's retention window
/// (`retention::Policy::keeps_from`), never for its own logs.
fn keeps_from(
    rules: crate::retention::Rules,
    own: murmur_core::AuthorId,
) -> murmur_core::sync::KeepsFrom {
    murmur_core::sync::KeepsFrom(Arc::new(move |topic, author, peer_head| {
        if *author == own {
            return None;
        }
        rules.policy().keeps_from(topic, peer_head)
    }))
}

/// The check every event from a peer passes before it is stored (document changes
/// must parse, fit the limit and be their author's).
fn body_check(config: &Config) -> murmur_core::sync::BodyCheck {
    let max = config.docs.max_change_bytes;
    murmur_core::sync::BodyCheck(Arc::new(move |ev| crate::docs::check_body(ev, max)))
}

/// What the network's parts share with the rest of the node.
struct Shared {
    /// The store's one writer.
    writer: ingest::Handle,
    metrics: Metrics,
    clock: Arc<NodeClock>,
    hold: ingest::Hold,
    /// The writer's state: while the disk is full the replicator pulls nothing.
    failing: ingest::WriteFailing,
    /// The retention rules in force (the sync machine's restart and window hooks).
    rules: crate::retention::Rules,
    /// The fleet's membership and permissions (`None`: open).
    fleet: Option<crate::fleet::Guard>,
}

fn start_network(
    data_dir: &Path,
    config: &Config,
    key: &murmur_core::Keypair,
    store: Arc<RocksStore>,
    shared: Shared,
    registry: &mut Registry,
) -> anyhow::Result<Network> {
    let Shared {
        writer,
        metrics,
        clock,
        hold,
        failing,
        rules,
        fleet,
    } = shared;
    let psk = match &config.p2p.psk_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the fleet key {}", path.display()))?;
            let key = murmur_p2p::psk::parse(&text)
                .map_err(|e| anyhow::anyhow!("fleet key {}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), "private fleet: only peers with this key can connect");
            Some(key)
        }
        None => None,
    };
    // Peers met before (data dir `peers` file) are dialed like bootstrap peers, so a
    // restarted node reconnects without discovery.
    let peers_file = data_dir.join(PEERS_FILE);
    let mut bootstrap = parse_addrs(&config.p2p.bootstrap)?;
    if let Ok(text) = std::fs::read_to_string(&peers_file) {
        let known: Vec<murmur_p2p::Multiaddr> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.trim().parse().ok())
            .take(replicate::KNOWN_PEERS_MAX * 8)
            .collect();
        tracing::info!(count = known.len(), "dialing known peers from the last run");
        bootstrap.extend(known);
    }
    let p2p = murmur_p2p::Config {
        listen: parse_addrs(&config.p2p.listen)?,
        bootstrap,
        mdns: config.p2p.mdns,
        psk,
        max_connections: config.p2p.max_connections,
        max_connections_per_peer: config.p2p.max_connections_per_peer,
        links: config.p2p.links,
        relay_server: config.p2p.relay_server.then(|| murmur_p2p::RelayLimits {
            max_reservations: config.p2p.relay_max_reservations,
            max_circuits: config.p2p.relay_max_circuits,
            circuit_bytes: config.p2p.relay_circuit_mb << 20,
            circuit_duration: config.p2p.relay_circuit_duration,
            ..murmur_p2p::RelayLimits::default()
        }),
        relays: parse_addrs(&config.p2p.relays)?,
        admission: fleet.as_ref().map(crate::fleet::Guard::credentials),
        ..murmur_p2p::Config::default()
    };
    let (handle, mut events, event_loop) =
        murmur_p2p::spawn(key.seed(), &p2p, registry).context("cannot start the network")?;
    tracing::info!(peer_id = %handle.peer_id(), mdns = p2p.mdns, "network started");
    let swarm = tokio::spawn(event_loop.run());

    // Interest set at runtime (`murmur topics add/remove`) overrides the config file.
    let interest_file = data_dir.join(INTEREST_FILE);
    let patterns: Vec<String> = match std::fs::read_to_string(&interest_file) {
        Ok(text) => {
            tracing::info!(file = %interest_file.display(), "topic interest from the last `murmur topics add/remove`");
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        }
        Err(_) => config.p2p.topics.clone(),
    };
    let mut topics = patterns
        .iter()
        .map(|t| murmur_core::Pattern::new(t.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    // A closed fleet's policy log replicates on every node, whatever its interest, and
    // so do heartbeats (no pattern with a leading wildcard reaches `$fleet/…`).
    let mut own = vec![murmur_core::Pattern::new(
        murmur_core::health::HEALTH_TOPIC,
    )?];
    if fleet.is_some() {
        own.push(murmur_core::Pattern::new(murmur_core::fleet::POLICY_TOPIC)?);
    }
    for p in own {
        if !topics.contains(&p) {
            topics.push(p);
        }
    }
    let (replicator, inbox) = replicate::channel(REPLICATOR_QUEUE);
    let restart = restart_check(rules.clone(), key.author(), clock.clone(), store.clone());
    let replicator_thread = replicate::spawn(
        store,
        handle.clone(),
        writer,
        replicate::Config {
            topics,
            anti_entropy_interval: config.p2p.anti_entropy_interval,
            lag_watch: config.p2p.lag_watch,
            topic_links: config.p2p.topic_links,
            sync: murmur_core::sync::Config {
                check: Some(body_check(config)),
                request_timeout: config.p2p.sync_timeout,
                may_restart: Some(restart),
                keeps_from: Some(keeps_from(rules.clone(), key.author())),
                permit: fleet.as_ref().map(crate::fleet::Guard::permit_check),
                window: crate::retention::budget_window(
                    config.store.max_disk_mb.saturating_mul(1 << 20),
                    murmur_core::sync::Config::default().window,
                ),
                ..murmur_core::sync::Config::default()
            },
            peers_file,
            interest_file,
            clock,
            own: (key.author(), hold),
            failing,
            max_disk: config.store.max_disk_mb.saturating_mul(1 << 20),
            retention: rules.clone(),
            fleet,
        },
        metrics,
        inbox,
    )
    .context("cannot start the replicator thread")?;
    let forward = {
        let replicator = replicator.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if replicator.net(ev).await.is_err() {
                    break;
                }
            }
        })
    };
    let ticker = {
        let replicator = replicator.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                replicator.tick();
            }
        })
    };
    Ok(Network {
        handle,
        replicator,
        tasks: vec![forward, ticker],
        swarm,
        replicator_thread,
    })
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `shutdown` fired: the node stopped cleanly.
    Stopped,
    /// The store refused writes after a full disk or a lack of descriptors, and the
    /// cause is gone: RocksDB stays stopped until it is reopened, so the node shut down
    /// cleanly to be run again on the same data directory (see [`store_watchdog`]).
    Reopen,
}

/// How often the store watchdog looks at a failing store.
const WATCHDOG_EVERY: Duration = Duration::from_secs(2);
/// Bytes the watchdog writes to see whether the disk has room again.
const PROBE_BYTES: usize = 8 << 20;
/// Descriptors the watchdog opens at once to see whether some are free again.
const PROBE_FILES: usize = 32;

/// Can the data directory take writes again: room for [`PROBE_BYTES`] written and synced,
/// and [`PROBE_FILES`] descriptors?
fn disk_takes_writes(data_dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = data_dir.join("MURMUR-PROBE");
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        let held: Vec<std::fs::File> = (0..PROBE_FILES)
            .map(|_| std::fs::File::open(&path))
            .collect::<std::io::Result<_>>()?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()?;
        drop(held);
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Watches a store whose writes fail for environmental reasons ([`ingest::WriteFailing`]).
/// When a synced probe write works again (RocksDB recovered by itself), nothing is
/// needed. When it still fails but the disk takes writes and descriptors are free
/// again, RocksDB is stuck in its background error, which only a reopen clears: the
/// watchdog asks for one by setting `reopen` and firing `stop`.
async fn store_watchdog(
    store: Arc<RocksStore>,
    data_dir: PathBuf,
    failing: ingest::WriteFailing,
    reopen: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(WATCHDOG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if !failing.is_on() {
            continue;
        }
        let (s, dir) = (store.clone(), data_dir.clone());
        let probe = tokio::task::spawn_blocking(move || match s.probe_write() {
            Ok(()) => Ok(true),
            Err(e) => disk_takes_writes(&dir)
                .map(|()| false)
                .map_err(|io| (e, io)),
        })
        .await;
        match probe {
            Ok(Ok(true)) => {
                tracing::info!("the store takes writes again");
                failing.clear();
            }
            Ok(Ok(false)) => {
                tracing::warn!(
                    "the disk has room and descriptors again, but RocksDB stays stopped after its write error: restarting the node to reopen the store (every acknowledged event is in the synced WAL)"
                );
                reopen.store(true, std::sync::atomic::Ordering::Release);
                stop.cancel();
                return;
            }
            Ok(Err((store_err, io))) => {
                tracing::debug!(store = %store_err, disk = %io, "the store still cannot write")
            }
            Err(e) => tracing::warn!(error = %e, "the store probe failed"),
        }
    }
}

/// The store scan after start ([`murmur_store::check::scan`]): reads every event and
/// index entry once, in the background, and reports damage or indexes that disagree in
/// the log, `/v1/status` (`store_problem`) and the `murmur_store_damaged` metric. The
/// startup checks before it look only at heads, the newest arrival and the durability
/// mark; this catches what they cannot (a damaged SST block, a torn copy).
async fn scan_store(
    store: Arc<RocksStore>,
    problem: Arc<std::sync::OnceLock<String>>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let t0 = Instant::now();
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancel.clone();
    let mut scan = tokio::task::spawn_blocking(move || murmur_store::check::scan(&store, &flag));
    let result = tokio::select! {
        r = &mut scan => r,
        () = stop.cancelled() => {
            // Ends within 4,096 entries; the store must be free before a reopen.
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = scan.await;
            return;
        }
    };
    let found = match result {
        Ok(Ok(Some(s))) => match s.problem() {
            None => {
                tracing::info!(events = s.events, took = ?t0.elapsed(), "store scan: every event and index entry read back, all consistent");
                return;
            }
            Some(p) => format!(
                "{p}. Events are served as they are; some may be missing from reads and replication. Stop murmur, run `murmur verify` to list the problems, then `murmur repair`"
            ),
        },
        Ok(Ok(None)) => return,
        // Damage names the file and says what to do.
        Ok(Err(e)) if e.is_corruption() => e.to_string(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the store scan could not read the store");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "the store scan failed to run");
            return;
        }
    };
    tracing::error!("store scan: {found}");
    metrics.store_damaged.set(1);
    let _ = problem.set(found);
}

/// Runs a node until `shutdown` fires, or until the store must be reopened
/// ([`Exit::Reopen`]; the caller runs it again).
pub async fn run(
    data_dir: PathBuf,
    config: Config,
    shutdown_all: CancellationToken,
) -> anyhow::Result<Exit> {
    // Stops this run: the caller's shutdown, or the store watchdog asking for a reopen.
    let shutdown = shutdown_all.child_token();
    let reopen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    config.validate()?;
    // Who may join: chosen before anything is created or heard.
    if config.p2p.enabled {
        config.fleet.mode()?;
    }
    // Descriptors: raise the soft limit, keep room for RocksDB's files, libp2p's
    // connections and the daemon's own, and cap API connections to what is left.
    let nofile = server::listener::raise_nofile();
    let reserved = u64::try_from(config.store.max_open_files).unwrap_or(0)
        + 64
        + if config.p2p.enabled {
            u64::from(config.p2p.max_connections) + 16
        } else {
            0
        };
    let api_slots = server::listener::connection_cap(config.api.max_connections, nofile, reserved);
    if api_slots < config.api.max_connections {
        tracing::warn!(
            nofile,
            reserved,
            api_slots,
            "the open-files limit is low: API connections are capped lower than api.max_connections"
        );
    }
    ensure_data_dir(&data_dir)?;
    let (key, created) = keyfile::load_or_create(&data_dir.join(KEY_FILE))?;
    if created {
        tracing::info!(author = %key.author(), "created a new node key");
    }
    let store = {
        let (dir, cfg) = (data_dir.clone(), config.clone());
        Arc::new(tokio::task::spawn_blocking(move || open_store(&dir, &cfg)).await??)
    };
    // After `murmur repair`, the node's own logs may have lost a tail its peers hold:
    // it signs nothing until a round with a peer on every topic has brought it back.
    let hold = ingest::Hold::new(store.own_logs_unconfirmed()?.is_some());
    if hold.is_on() {
        if config.p2p.enabled {
            tracing::warn!(
                "this node was repaired: publishing is held until a sync round with a peer on every topic has brought its own logs back (no peer ever? run `murmur repair --confirm-own-logs` with the node stopped)"
            );
        } else {
            tracing::warn!(
                "this node was repaired and replication is off: no peer can bring its own logs back; publishing resumes on what it holds"
            );
            store.confirm_own_logs()?;
            hold.release();
        }
    }
    let mut registry = Registry::default();
    let clock = Arc::new(NodeClock::new(
        Clock::new(config.clock.max_drift),
        config.clock.offset_ms()?,
        &mut registry,
    ));
    clock.resume_after(ingest::last_own_time(&store, &key.author())?);

    let metrics = Metrics::new(&mut registry);
    metrics.stored_events.set(store.next_offset().0 as i64);
    metrics
        .ingest_queue_capacity
        .set(i64::try_from(config.ingest.queue_requests).unwrap_or(i64::MAX));
    let (offsets_tx, offsets_rx) = watch::channel(ingest::Committed::at(store.next_offset()));
    let offsets_tx = Arc::new(offsets_tx);
    let durability = match config.store.sync {
        SyncPolicy::Fsync => Durability::Sync,
        SyncPolicy::Os => Durability::Buffered,
    };
    let failing = ingest::WriteFailing::default();
    // A node without a network needs no choice: it meets no one.
    let mode = if config.p2p.enabled {
        config.fleet.mode()?
    } else {
        config
            .fleet
            .mode()
            .unwrap_or(crate::config::FleetMode::Open)
    };
    let fleet = match mode {
        crate::config::FleetMode::Open => {
            if config.p2p.enabled {
                tracing::info!(
                    "open fleet (fleet.open = true): every peer that connects is a member and may write anything"
                );
            }
            None
        }
        crate::config::FleetMode::Closed(root) => {
            let (dir, st, c, m) = (
                data_dir.clone(),
                store.clone(),
                clock.clone(),
                metrics.clone(),
            );
            let author = key.author();
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::fleet::Guard::open(root, &dir, author, &*st, c, m)
                })
                .await??,
            )
        }
    };
    // The retention rules: the config's, or those set at runtime (kept in the data dir).
    let rules = crate::retention::Rules::load(&data_dir, &config)?;
    tokio::spawn(store_watchdog(
        store.clone(),
        data_dir.clone(),
        failing.clone(),
        reopen.clone(),
        shutdown.clone(),
    ));
    // The store's one writer: its handle first, as the replicator writes through it and
    // it hands the replicator what it published.
    let writer_config = WriterConfig {
        queue_requests: config.ingest.queue_requests,
        queue_bytes: config.ingest.queue_bytes,
        max_commit_events: config.ingest.max_commit_events,
        durability,
        hold: hold.clone(),
        failing: failing.clone(),
        idempotency_window: config.api.idempotency_window,
    };
    let (ingest, writer_inbox) = ingest::channel(&writer_config, metrics.clone());
    let net = if config.p2p.enabled {
        Some(start_network(
            &data_dir,
            &config,
            &key,
            store.clone(),
            Shared {
                writer: ingest.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
                hold: hold.clone(),
                failing: failing.clone(),
                rules: rules.clone(),
                fleet: fleet.clone(),
            },
            &mut registry,
        )?)
    } else {
        None
    };
    let writer = ingest::spawn(
        writer_inbox,
        store.clone(),
        key.clone(),
        clock.clone(),
        &writer_config,
        metrics.clone(),
        offsets_tx,
        net.as_ref().map(|n| n.replicator.clone()),
        fleet.clone(),
    )
    .context("cannot start the writer thread")?;

    let (docs, docs_thread) = crate::docs::spawn(
        store.clone(),
        ingest.clone(),
        key.author(),
        config.docs.manager(),
        offsets_rx.clone(),
        metrics.clone(),
    )
    .context("cannot start the document thread")?;

    // Retention (its rules checked at load): the writer carries out its cuts.
    tokio::spawn(crate::retention::run(
        rules.clone(),
        config.store.prune_interval,
        config.store.max_disk_mb.saturating_mul(1 << 20),
        store.clone(),
        ingest.clone(),
        clock.clone(),
        metrics.clone(),
        crate::retention::Compaction::new(
            docs.clone(),
            key.author(),
            config.docs.compaction_interval,
        )
        .with_fleet(fleet.clone()),
        shutdown.clone(),
    ));

    let store_problem = Arc::new(std::sync::OnceLock::new());
    tokio::spawn(scan_store(
        store.clone(),
        store_problem.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let socket = config.socket_path(&data_dir);
    let listener = bind_socket(&socket)?;
    let writer_handle = ingest.clone();
    let consumers = Arc::new(
        crate::consumers::Consumers::load(store.clone(), config.api.max_consumers)
            .map_err(|e| anyhow::anyhow!("reading the named consumers: {e}"))?,
    );
    let state = Arc::new(AppState {
        store: store.clone(),
        ingest,
        offsets: offsets_rx,
        metrics,
        registry,
        limits: Limits {
            max_payload: config.api.max_payload_bytes,
            max_batch_events: config.api.max_batch_events,
            max_request: config.api.max_request_bytes,
            max_read: config.api.max_read_events,
        },
        followers: Arc::new(Semaphore::new(config.api.max_followers)),
        shutdown: shutdown.clone(),
        author: key.author(),
        data_dir: data_dir.clone(),
        sync: match config.store.sync {
            SyncPolicy::Fsync => "fsync",
            SyncPolicy::Os => "os",
        },
        started: Instant::now(),
        net: net
            .as_ref()
            .map(|n| (n.handle.clone(), n.replicator.clone())),
        docs: docs.clone(),
        clock,
        store_problem: store_problem.clone(),
        failing: failing.clone(),
        disk_budget: config.store.max_disk_mb.saturating_mul(1 << 20),
        rules: rules.clone(),
        fleet,
        heartbeat_interval: config.fleet.heartbeat_interval,
        forget_after: config.fleet.forget_after,
        consumers,
        consumers_max: config.api.max_consumers,
        mqtt: config.mqtt.clone(),
    });
    // A member publishes its certificate on the policy topic once, so that nodes it
    // never meets learn its roles.
    {
        let state = state.clone();
        tokio::spawn(async move { server::publish_own_cert(&state).await });
    }
    // MQTT before "ready": a missing password file or a port in use stops the start.
    start_mqtt(&state, &config, &shutdown).await?;
    // Heartbeats on `$fleet/health`, and the fleet view's gauges.
    tokio::spawn(server::health::run(
        state.clone(),
        config.fleet.heartbeat_interval,
    ));
    tracing::info!(
        author = %key.author(),
        data_dir = %data_dir.display(),
        socket = %socket.display(),
        events = store.next_offset().0,
        sync = state.sync,
        "murmur daemon ready"
    );

    let commits = state.metrics.commits.clone();
    let app = server::router(state);
    // One set of connection slots for the control socket and the TCP address.
    let api_conns = Arc::new(Semaphore::new(api_slots.max(1)));
    // The API and the dashboard over TCP, when asked for.
    let tcp = match config.api.http_listen {
        None => None,
        Some(addr) => {
            let token = server::dashboard::load_or_create_token(
                &data_dir.join(server::dashboard::TOKEN_FILE),
            )
            .context("cannot read or create the API token (<data dir>/api.token)")?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on api.http_listen = {addr}"))?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the API and dashboard listen beyond loopback over plain HTTP: the token crosses the network in the clear; put TLS in front");
            }
            tracing::info!(%addr, "dashboard and API over TCP (`murmur dashboard` prints the URL with its token)");
            let serve = axum::serve(
                server::listener::Capped::sharing(
                    listener,
                    api_conns.clone(),
                    config.api.write_stall,
                    config.api.idle_timeout,
                ),
                server::dashboard::router(app.clone(), token)
                    .into_make_service_with_connect_info::<server::listener::ConnMeta>(),
            )
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            Some(tokio::spawn(async move { serve.await }))
        }
    };

    // Under systemd (`Type=notify`): ready now that the store is open and the API's
    // socket is bound, and alive while the writer moves.
    crate::service::ready(&format!(
        "ready: {} events, socket {}",
        store.next_offset().0,
        socket.display()
    ));
    // STOPPING=1 as soon as a stop begins (not a reopen of the store: the node goes
    // on), whichever way the server below ends.
    {
        let stop = shutdown_all.clone();
        let this_run = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A stop cancels this run too: look at the stop first.
                biased;
                () = stop.cancelled() => crate::service::stopping(),
                () = this_run.cancelled() => {}
            }
        });
    }
    if let Some(timeout) = crate::service::watchdog() {
        tracing::info!(?timeout, "service watchdog on");
        tokio::spawn(crate::service::keep_alive(
            timeout,
            writer_handle.clone(),
            commits,
            shutdown.clone(),
        ));
    }

    let serve = axum::serve(
        server::listener::Capped::sharing(
            listener,
            api_conns,
            config.api.write_stall,
            config.api.idle_timeout,
        ),
        app.into_make_service_with_connect_info::<server::listener::ConnMeta>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut served = tokio::spawn(async move { serve.await });
    tokio::select! {
        result = &mut served => {
            // With graceful shutdown the server can finish draining before this select
            // sees the cancellation (both branches ready; select picks one at random):
            // that is a clean stop, not a failure.
            if shutdown.is_cancelled() {
                tracing::info!("shutting down: the API server has drained");
            } else {
                // The server never stops by itself; if it does, shut the node down cleanly.
                crate::service::stopping();
                tracing::error!(?result, "the API server stopped unexpectedly; shutting down");
                shutdown.cancel();
            }
        }
        () = shutdown.cancelled() => {
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut served).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error during shutdown"),
                Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
                Err(_) => {
                    tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
                    served.abort();
                }
            }
        }
    }
    if let Some(mut tcp) = tcp
        && tokio::time::timeout(DRAIN_TIMEOUT, &mut tcp).await.is_err()
    {
        tcp.abort();
    }
    // Documents in memory are snapshotted; then the writer finishes what is queued.
    docs.stop().await;
    tokio::task::spawn_blocking(move || docs_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the document thread panicked"))?;
    // Publishes queued before this point are committed and answered; later ones get 503.
    writer_handle.stop().await;
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    if let Some(net) = net {
        net.stop().await;
    }
    let reopening =
        reopen.load(std::sync::atomic::Ordering::Acquire) && !shutdown_all.is_cancelled();
    let flush_store = store.clone();
    let flushed = tokio::task::spawn_blocking(move || flush_store.flush()).await?;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, socket = %socket.display(), "cannot remove the socket");
    }
    if reopening {
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "cannot flush the store before reopening it; the WAL holds every acknowledged event");
        }
        // RocksDB's lock is per process: every user of the store must be gone before it
        // can be opened again (the last follow streams and the watchdog end just now).
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while Arc::strong_count(&store) > 1 {
            if Instant::now() > deadline {
                bail!(
                    "cannot reopen the store: it is still in use after {DRAIN_TIMEOUT:?}; restart murmur"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(
            events = store.next_offset().0,
            "stopped to reopen the store"
        );
        return Ok(Exit::Reopen);
    }
    flushed.context(
        "cannot flush the store at shutdown (a full disk?); every acknowledged event is in the synced WAL and is replayed at the next start",
    )?;
    tracing::info!(events = store.next_offset().0, "stopped cleanly");
    Ok(Exit::Stopped)
}
