//! The retention task: every `store.prune_interval`, plans the cuts the policy asks for
//! (`murmur_core::retention`, reading the store on the blocking pool) and has the
//! store's writer carry them out, in queue order with everything else it writes.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use murmur_core::retention::{DocCover, Policy};
use murmur_core::{ReadStore, Topic};
use murmur_store::RocksStore;
use tokio_util::sync::CancellationToken;

use crate::clock::NodeClock;
use crate::config::{Config, RetentionRule};
use crate::ingest;
use crate::metrics::Metrics;

/// File in the data dir that keeps the rules set at runtime (JSON), which replace the
/// config's `[[retention]]` rules until reset.
pub const RULES_FILE: &str = "retention.json";

/// The retention rules in force, shared by the retention task, the sync machine's
/// restart and window hooks, and the API, which may replace them at runtime. Each
/// reader takes the current policy at each use.
#[derive(Debug, Clone)]
pub struct Rules {
    current: Arc<std::sync::RwLock<Current>>,
    file: std::path::PathBuf,
    config: Vec<RetentionRule>,
    /// The last disk budget pass found nothing it may prune (topics kept, documents,
    /// heads): pausing pulls would then wait for room that never comes.
    exhausted: Arc<std::sync::atomic::AtomicBool>,
}

/// Why rules could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// A rule is wrong (no limit, a bad pattern…).
    #[error("{0}")]
    Invalid(String),
    /// The rules file could not be written or removed.
    #[error("{0}")]
    Io(String),
}

#[derive(Debug)]
struct Current {
    policy: Arc<Policy>,
    rules: Vec<RetentionRule>,
    runtime: bool,
}

impl Rules {
    /// The rules of `data_dir`'s rules file if there is one (set at runtime), else the
    /// config's. A rules file that does not parse or check stops the start, naming it.
    pub fn load(data_dir: &std::path::Path, config: &Config) -> anyhow::Result<Rules> {
        let file = data_dir.join(RULES_FILE);
        let (rules, runtime) = match std::fs::read(&file) {
            Ok(bytes) => {
                let rules: Vec<RetentionRule> = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {e} (retention rules set at runtime; fix or delete the file to use the config's)",
                        file.display()
                    )
                })?;
                (rules, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (config.retention.clone(), false),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", file.display())),
        };
        let policy = crate::config::policy_of(&rules).map_err(|e| {
            anyhow::anyhow!(
                "retention ({}): {e}",
                if runtime {
                    file.display().to_string()
                } else {
                    "config".into()
                }
            )
        })?;
        Ok(Rules {
            current: Arc::new(std::sync::RwLock::new(Current {
                policy: Arc::new(policy),
                rules,
                runtime,
            })),
            file,
            config: config.retention.clone(),
            exhausted: Arc::default(),
        })
    }

    /// Whether the last disk budget pass found nothing it may prune.
    pub fn budget_exhausted(&self) -> bool {
        self.exhausted.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_budget_exhausted(&self, on: bool) {
        self.exhausted
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.read(|c| c.policy.clone())
    }

    /// The rules in force, and whether they were set at runtime.
    pub fn rules(&self) -> (Vec<RetentionRule>, bool) {
        self.read(|c| (c.rules.clone(), c.runtime))
    }

    /// Replaces the rules (checked first), keeping them in the rules file across
    /// restarts; `None` goes back to the config's and deletes the file. One change at
    /// a time: the file and the rules in force change under one lock.
    pub fn set(&self, rules: Option<Vec<RetentionRule>>) -> Result<(), SetError> {
        let runtime = rules.is_some();
        let rules = rules.unwrap_or_else(|| self.config.clone());
        let policy = crate::config::policy_of(&rules).map_err(SetError::Invalid)?;
        let mut c = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if runtime {
            let json =
                serde_json::to_vec_pretty(&rules).map_err(|e| SetError::Io(e.to_string()))?;
            write_replacing(&self.file, &json)
                .map_err(|e| SetError::Io(format!("cannot write {}: {e}", self.file.display())))?;
        } else {
            match std::fs::remove_file(&self.file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SetError::Io(format!(
                        "cannot remove {}: {e}",
                        self.file.display()
                    )));
                }
            }
        }
        *c = Current {
            policy: Arc::new(policy),
            rules,
            runtime,
        };
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        f(&self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Document compaction's state in the retention task: what this node's own snapshots
/// cover per document topic, and when each topic last had a round.
pub struct Compaction {
    /// The document thread, which makes the snapshots.
    pub docs: crate::docs::Handle,
    /// This node's author key (its snapshots are the ones it compacts behind).
    pub own: murmur_core::AuthorId,
    /// Least time between two rounds of one topic (`docs.compaction_interval`).
    pub every: Duration,
    covers: HashMap<Topic, DocCover>,
    rounds: HashMap<Topic, tokio::time::Instant>,
    /// Per topic, the version vector just after its last round (what it covered, and
    /// this node's own head past the snapshots it published): a topic where nothing
    /// but snapshots arrived since needs no new round, even if its rule would cut
    /// further (snapshots, this node's and other compacting nodes', move the logs'
    /// heads; a round for them would make the other nodes' next round due, forever).
    after_round: HashMap<Topic, DocCover>,
    /// Topics whose cover was read back from the store since the start.
    read_back: std::collections::HashSet<Topic>,
    /// A closed fleet: snapshots only where this node holds the `docs` right (its
    /// peers would refuse the others).
    fleet: Option<crate::fleet::Guard>,
}

impl Compaction {
    /// No rounds made yet (what earlier ones cover is read back from the store).
    pub fn new(docs: crate::docs::Handle, own: murmur_core::AuthorId, every: Duration) -> Self {
        Compaction {
            docs,
            own,
            every,
            covers: HashMap::new(),
            rounds: HashMap::new(),
            after_round: HashMap::new(),
            read_back: Default::default(),
            fleet: None,
        }
    }

    /// In a closed fleet: snapshots only where this node may write documents.
    pub fn with_fleet(mut self, fleet: Option<crate::fleet::Guard>) -> Self {
        self.fleet = fleet;
        self
    }
}

/// Most documents of a topic whose cover is read back from the store after a start (a
/// topic with more has a new round instead).
const OWN_COVER_DOCS: usize = 256;

/// What this node's own snapshot events held in `topic` cover, for every document of
/// the topic (per author, the least over the documents' newest snapshots): `None` when
/// a document has none (a round is due).
fn own_cover(
    store: &RocksStore,
    topic: &Topic,
    own: &murmur_core::AuthorId,
) -> Result<Option<DocCover>, String> {
    let docs = store
        .docs_of(topic, OWN_COVER_DOCS + 1)
        .map_err(|e| e.to_string())?;
    if docs.len() > OWN_COVER_DOCS {
        return Ok(None);
    }
    // The newest of this node's snapshots of each document, found in the index (newest
    // first: the first of this node's seen per document); only those are read.
    let mut newest = HashMap::new();
    for r in store
        .snapshot_refs(topic, None, OWN_COVER_DOCS * 4)
        .map_err(|e| e.to_string())?
    {
        if r.author == *own && !newest.contains_key(&r.doc) {
            newest.insert(r.doc.clone(), r);
        }
    }
    let mut cover: Option<DocCover> = None;
    for doc in docs {
        let Some(r) = newest.get(&doc) else {
            return Ok(None);
        };
        let Some((ev, snap)) = store.snapshot_at(topic, r).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let this = snap.cover_map(&ev);
        cover = Some(match cover {
            None => this,
            Some(c) => c
                .into_iter()
                .filter_map(|(a, s)| this.get(&a).map(|t| (a, s.min(*t))))
                .collect(),
        });
    }
    Ok(cover)
}

/// Most events past a topic's last round looked at to find one that is not a
/// snapshot (more: taken as new).
const NEWS_SCAN: u64 = 4096;

/// Whether `topic` holds an event past `after` (per author, the seq its last round
/// reached) that is not a document snapshot: what makes a new round worth its cost.
/// Told from the snapshot index and the heads alone, without reading events.
fn more_than_snapshots(
    store: &RocksStore,
    topic: &Topic,
    after: &DocCover,
) -> Result<bool, String> {
    let vv = store.version_vector(topic).map_err(|e| e.to_string())?;
    let mut past = 0u64;
    for (author, head) in vv.iter() {
        match after.get(author) {
            Some(s) if *s >= head.seq => {}
            Some(s) => past += head.seq.0 - s.0,
            None => return Ok(true),
        }
    }
    if past == 0 {
        return Ok(false);
    }
    if past > NEWS_SCAN {
        return Ok(true);
    }
    let limit = usize::try_from(past).unwrap_or(usize::MAX);
    let snapshots = store
        .snapshot_refs(topic, None, limit)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| after.get(&r.author).is_some_and(|s| r.seq > *s))
        .count() as u64;
    Ok(snapshots < past)
}

/// The logs of `$fleet/health`, as [`murmur_core::ReadStore::logs`] would list them.
fn heartbeat_logs(
    store: &RocksStore,
) -> Result<Vec<murmur_core::LogSummary>, murmur_store::StoreError> {
    let Ok(topic) = Topic::new(murmur_core::health::HEALTH_TOPIC) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (author, _) in store.version_vector(&topic)?.iter() {
        let st = store.log_state(author, &topic)?;
        if let Some(head) = st.head {
            out.push(murmur_core::LogSummary {
                topic: topic.clone(),
                author: *author,
                head,
                frozen_at: st.frozen_at,
                base: st.base,
                pruned_to: st.pruned_to,
                bytes: st.bytes,
                pruned_bytes: st.pruned_bytes,
            });
        }
    }
    Ok(out)
}

/// Runs passes until `shutdown`: the rules' cuts, then, while the database is over
/// `max_disk` bytes (0: no budget), the budget's.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    rules: Rules,
    every: Duration,
    max_disk: u64,
    store: Arc<RocksStore>,
    writer: ingest::Handle,
    clock: Arc<NodeClock>,
    metrics: Metrics,
    mut compaction: Compaction,
    shutdown: CancellationToken,
) {
    metrics.store_disk_budget_bytes.set(max_disk as i64);
    // The first pass after one interval: not during the startup scan.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The budget is looked at more often than the rules: a node catching up fills
    // its disk in seconds.
    let mut budget_tick = tokio::time::interval(BUDGET_EVERY);
    budget_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bytes pruned since the last compaction, and when it ran.
    let mut uncompacted = 0u64;
    let mut last_compaction = None;
    // After a budget pass that found nothing to prune, the next waits this long.
    let mut budget_quiet_until: Option<tokio::time::Instant> = None;
    loop {
        let rules_due = tokio::select! {
            _ = tick.tick() => true,
            _ = budget_tick.tick(), if max_disk > 0 => false,
            _ = shutdown.cancelled() => return,
        };
        // The rules in force now (they may change at runtime).
        let policy = rules.policy();
        // Every node has a rule that prunes: the built-in one, heartbeats latest-only.
        if rules_due {
            match pass(&policy, &store, &writer, &clock, &metrics, &mut compaction).await {
                Ok(pruned) => uncompacted += pruned.bytes,
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; the next one retries")
                }
            }
        }
        let mut over_budget = false;
        let quiet = budget_quiet_until.is_some_and(|t| tokio::time::Instant::now() < t);
        let high = max_disk > 0 && store.disk_bytes() > max_disk / 100 * BUDGET_HIGH_PCT;
        if !high {
            rules.set_budget_exhausted(false);
        }
        if high && !quiet {
            match budget_pass(&policy, max_disk, &store, &writer, &metrics).await {
                Ok(Some(pruned)) => {
                    uncompacted += pruned.bytes;
                    over_budget = pruned.events > 0;
                    rules.set_budget_exhausted(false);
                    budget_quiet_until = None;
                }
                // Nothing left it may prune: pulls must not wait for room (see
                // `Rules::budget_exhausted`), and the next look waits. (A plan whose
                // cuts a concurrent change voided pruned nothing but is no such
                // sign: it was `Some` and the next pass, 250 ms on, plans again.
                // Counting it as exhausted once lifted the hold and the pauses for
                // 30 s, and a fast run took a host to 55.3 MiB of its 32.)
                Ok(None) => {
                    rules.set_budget_exhausted(true);
                    budget_quiet_until = Some(tokio::time::Instant::now() + BUDGET_QUIET);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "disk budget pass failed; the next one retries")
                }
            }
        }
        // Over the budget, what was pruned must leave the disk now; otherwise once as
        // much was pruned as the database holds, at most every COMPACT_EVERY (RocksDB's
        // own compactions drop the rest meanwhile).
        let due =
            last_compaction.is_none_or(|t: tokio::time::Instant| t.elapsed() >= COMPACT_EVERY);
        if uncompacted > 0
            && (over_budget || (due && uncompacted >= compact_after(store.disk_bytes())))
        {
            uncompacted = 0;
            last_compaction = Some(tokio::time::Instant::now());
            let s = store.clone();
            let t0 = std::time::Instant::now();
            let before = s.disk_bytes();
            match tokio::task::spawn_blocking(move || s.compact_pruned()).await {
                Ok(Ok(())) => tracing::info!(
                    before,
                    after = store.disk_bytes(),
                    secs = t0.elapsed().as_secs_f64(),
                    "compacted after pruning"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "compaction after pruning failed"),
                Err(e) => tracing::warn!(error = %e, "compaction after pruning failed"),
            }
        }
    }
}

/// Writes `path` whole: a synced temporary file renamed over it.
fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// How often the disk budget is checked (a directory listing).
const BUDGET_EVERY: Duration = Duration::from_millis(250);
/// After a budget pass found nothing it may prune (kept topics, documents and heads
/// fill the budget), the next one waits this long instead of reading the same
/// arrivals every 250 ms.
const BUDGET_QUIET: Duration = Duration::from_secs(30);
/// The disk budget's shares, in % of `store.max_disk_mb`. Only part of the budget can
/// hold data: at worst, live gossip has filled the database to [`GOSSIP_HOLD_PCT`]
/// when a memtable flush adds a file at once (the write buffer is capped at an
/// eighth of the budget, see `StoreConfig`) and the compaction after pruning writes
/// what survives ([`BUDGET_LOW_PCT`]) before it deletes the files it replaces. Those
/// three together stay under the budget (checked below). Holding gossip at 75% and
/// pruning to 30% left no such room: a fast run of the netns million-event test
/// touched 34.1 MiB of its 32.
///
/// Pruning for the budget starts when the database passes this share of it…
pub(crate) const BUDGET_HIGH_PCT: u64 = 40;
/// …and brings it down to this share.
const BUDGET_LOW_PCT: u64 = 25;
/// Pulls pause past this share (a catch-up writes faster than pruning and compaction
/// free), and resume at [`BUDGET_HIGH_PCT`], where pruning starts: a database between
/// the two is always either pruning or pulling.
pub(crate) const PULL_PAUSE_PCT: u64 = 50;
/// Past this share live gossip is held too (left to the peers, as when the disk is
/// full: nothing stored, nothing forwarded) until pruning brings the database back to
/// [`BUDGET_HIGH_PCT`]; what was left is pulled then, paced like any catch-up.
pub(crate) const GOSSIP_HOLD_PCT: u64 = 55;
/// The write buffer's most, rounded up (an eighth of the budget).
const WRITE_BUFFER_PCT: u64 = 13;
/// Sync writes handed to the store writer and not yet done when a pause begins: at
/// most the replicator's writes in flight, each a window (see [`budget_window`]).
const IN_FLIGHT_PCT: u64 = 5;
const _: () = assert!(
    BUDGET_LOW_PCT < BUDGET_HIGH_PCT
        && BUDGET_HIGH_PCT < PULL_PAUSE_PCT
        && PULL_PAUSE_PCT < GOSSIP_HOLD_PCT
        && GOSSIP_HOLD_PCT + WRITE_BUFFER_PCT + BUDGET_LOW_PCT + IN_FLIGHT_PCT <= 100
);

/// Bytes an event is taken to occupy when a window is sized (a 256-byte event is
/// about 570 on disk, indexes included).
const EVENT_BYTES: u64 = 600;

/// Events per sync window under a disk budget of `max_disk` bytes (0: none, `most`):
/// the replicator's writes in flight, each a window, stay within
/// [`IN_FLIGHT_PCT`] of the budget, so that what lands after a pause began cannot
/// take the database over it (windows still on the wire then are dropped: see
/// `murmur_core::sync`). At least 64, at most `most`.
pub fn budget_window(max_disk: u64, most: u32) -> u32 {
    if max_disk == 0 {
        return most;
    }
    let writes = crate::replicate::WRITES_IN_FLIGHT as u64;
    let events = max_disk / 100 * IN_FLIGHT_PCT / writes / EVENT_BYTES;
    u32::try_from(events)
        .unwrap_or(most)
        .clamp(64.min(most), most)
}

/// Pruned bytes after which the store is compacted (rules' pruning, not over the
/// budget): as much as it occupies on disk (so a compaction, which rewrites what
/// remains, costs about what was pruned), and at least 1 MiB.
fn compact_after(disk: u64) -> u64 {
    disk.max(1 << 20)
}

/// Compactions for the rules' pruning (not over the budget) run at most this often: a
/// node pruning as fast as it takes events in would otherwise rewrite its database
/// every second.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Label of what the disk budget prunes, in `murmur_pruned_*_total`.
pub const BUDGET_LABEL: &str = "store.max_disk_mb";

/// The disk budget's pass: the oldest events of topics not marked keep, about as many
/// as bring the database to [`BUDGET_LOW_PCT`] of `max_disk` (by its bytes per event
/// held). `None`: nothing it may prune.
async fn budget_pass(
    policy: &Arc<Policy>,
    max_disk: u64,
    store: &Arc<RocksStore>,
    writer: &ingest::Handle,
    metrics: &Metrics,
) -> Result<Option<murmur_core::Pruned>, String> {
    let plan = {
        let (policy, store) = (policy.clone(), store.clone());
        tokio::task::spawn_blocking(move || {
            let logs = store.logs().map_err(|e| e.to_string())?;
            let held: u64 = logs.iter().map(murmur_core::LogSummary::held).sum();
            let disk = store.disk_bytes();
            let excess = disk.saturating_sub(max_disk / 100 * BUDGET_LOW_PCT);
            let per_event = (disk / held.max(1)).max(1);
            let events = excess.div_ceil(per_event);
            policy
                .plan_budget(&logs, events, &*store)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??
    };
    if plan.is_empty() {
        tracing::warn!(
            max_disk,
            disk = store.disk_bytes(),
            "over the disk budget and nothing left to prune (topics marked keep, document topics, heads): the disk may fill"
        );
        return Ok(None);
    }
    let cuts = plan.into_iter().map(|p| p.cut).collect();
    let done = prune(store, writer, cuts).await?;
    metrics.pruned(BUDGET_LABEL, done);
    metrics.prune_passes.inc();
    tracing::info!(
        events = done.events,
        bytes = done.bytes,
        max_disk,
        "over the disk budget: pruned the oldest events"
    );
    Ok(Some(done))
}

/// Carries out `cuts`: what they delete is read on the blocking pool, and the store's
/// writer, in queue order with everything else it writes, only writes it.
async fn prune(
    store: &Arc<RocksStore>,
    writer: &ingest::Handle,
    cuts: Vec<murmur_core::Cut>,
) -> Result<murmur_core::Pruned, String> {
    let s = store.clone();
    let prepared = tokio::task::spawn_blocking(move || s.prepare_prune(&cuts))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    writer.prune(prepared).await
}

/// One pass: plan (document topics only behind this node's snapshots), prune, count;
/// then a round of snapshots for the document topics that want one.
pub async fn pass(
    policy: &Arc<Policy>,
    store: &Arc<RocksStore>,
    writer: &ingest::Handle,
    clock: &NodeClock,
    metrics: &Metrics,
    compaction: &mut Compaction,
) -> Result<murmur_core::Pruned, String> {
    let now = clock.wall_ms();
    let (plan, want_snapshots, recovered) = {
        let (policy, store) = (policy.clone(), store.clone());
        let mut covers = compaction.covers.clone();
        let read_back = compaction.read_back.clone();
        let own = compaction.own;
        tokio::task::spawn_blocking(move || {
            // With no rule of the operator's, only the built-in one (heartbeats) can cut:
            // read those logs alone, not every log of every topic (on a node with
            // thousands of topics that read, every pass, was a burst of work for nothing).
            let logs = if policy.rules().is_empty() {
                heartbeat_logs(&store).map_err(|e| e.to_string())?
            } else {
                store.logs().map_err(|e| e.to_string())?
            };
            let mut plan = policy
                .plan(&logs, now, &*store)
                .map_err(|e| e.to_string())?;
            // What earlier rounds cover, read back once per topic after a start (a
            // topic without this node's snapshots gets them from its first round).
            let mut recovered = Vec::new();
            let mut topics: Vec<&Topic> = logs.iter().map(|l| &l.topic).collect();
            topics.dedup();
            for topic in topics {
                if !covers.contains_key(topic)
                    && !read_back.contains(topic)
                    && policy.rule_for(topic).is_some_and(|(_, r)| !r.keep)
                    && !store
                        .docs_of(topic, 1)
                        .map_err(|e| e.to_string())?
                        .is_empty()
                {
                    let cover = own_cover(&store, topic, &own).unwrap_or_else(|e| {
                        tracing::warn!(%topic, error = %e, "cannot read back what this node's snapshots cover; a new round will");
                        None
                    });
                    if let Some(c) = &cover {
                        covers.insert(topic.clone(), c.clone());
                    }
                    recovered.push((topic.clone(), cover));
                }
            }
            let docs = policy
                .plan_docs(&logs, now, &*store, &covers)
                .map_err(|e| e.to_string())?;
            plan.extend(docs.cuts);
            Ok::<_, String>((plan, docs.want_snapshots, recovered))
        })
        .await
        .map_err(|e| e.to_string())??
    };
    for (topic, cover) in recovered {
        compaction.read_back.insert(topic.clone());
        if let Some(c) = cover {
            compaction.covers.insert(topic, c);
        }
    }
    for topic in want_snapshots {
        let due = compaction
            .rounds
            .get(&topic)
            .is_none_or(|t| t.elapsed() >= compaction.every);
        if !due {
            continue;
        }
        if let Some(after) = compaction.after_round.get(&topic) {
            let (s, t, a) = (store.clone(), topic.clone(), after.clone());
            let news = tokio::task::spawn_blocking(move || more_than_snapshots(&s, &t, &a))
                .await
                .map_err(|e| e.to_string())??;
            if !news {
                continue;
            }
        }
        compaction
            .rounds
            .insert(topic.clone(), tokio::time::Instant::now());
        if let Some(g) = &compaction.fleet
            && let Err(r) = g.may_publish(&topic, true)
        {
            tracing::info!(%topic, reason = %r, "not compacting a document topic: this node may not write documents there (its snapshots would be refused)");
            continue;
        }
        match compaction.docs.snapshot_round(topic.clone()).await {
            Ok((cover, last)) => {
                tracing::info!(%topic, "published document snapshots: the topic is compacted behind them at the next pass");
                let mut after = cover.clone();
                if let Some(seq) = last {
                    after.insert(compaction.own, seq);
                }
                compaction.after_round.insert(topic.clone(), after);
                compaction.covers.insert(topic, cover);
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot snapshot the topic's documents; it is not compacted")
            }
        }
    }
    if plan.is_empty() {
        return Ok(murmur_core::Pruned::default());
    }
    // Counted by rule: prune each rule's cuts together.
    let rules = policy
        .rules()
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.pattern.as_str()))
        .chain([(
            murmur_core::retention::BUILT_IN,
            murmur_core::health::HEALTH_TOPIC,
        )]);
    let mut total = murmur_core::Pruned::default();
    for (i, pattern) in rules {
        let cuts: Vec<_> = plan
            .iter()
            .filter(|p| p.rule == Some(i))
            .map(|p| p.cut.clone())
            .collect();
        if cuts.is_empty() {
            continue;
        }
        let done = prune(store, writer, cuts).await?;
        metrics.pruned(pattern, done);
        // Old heartbeats are a few hundred bytes a node: left to RocksDB's own
        // compactions, they never count toward a full one (a quiet device in a big
        // fleet would otherwise rewrite its database every few minutes).
        if i == murmur_core::retention::BUILT_IN {
            continue;
        }
        total.events += done.events;
        total.bytes += done.bytes;
    }
    metrics.prune_passes.inc();
    // Said when an operator's rule pruned; the built-in heartbeat rule prunes at every
    // pass of every node, quietly.
    if plan
        .iter()
        .any(|p| p.rule != Some(murmur_core::retention::BUILT_IN))
    {
        tracing::info!(
            logs = plan.len(),
            events = total.events,
            bytes = total.bytes,
            "retention pruned"
        );
    } else {
        tracing::debug!(logs = plan.len(), "retention pruned old heartbeats");
    }
    Ok(total)
}
