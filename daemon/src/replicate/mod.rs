//! Replication: the thread that drives the core replication machine
//! ([`murmur_core::replicate::Replicator`]) over the network.
//!
//! The machine holds the whole policy: gossip verdicts and bans, events held past gaps
//! and gap pulls, rounds on connect, periodically and on announced topics, interest,
//! fork handling, own-log confirmation after a repair. The simulator runs the same
//! machine. This thread only routes: network events, durable local events and ticks go
//! in (gossip that queued up as one batch, published batches coalesced), and each
//! output becomes a network command, a metric, a clock update, a write for the store
//! writer, or a file write (peers met, interest set at runtime). It reads the store
//! directly (blocking is fine on this thread, never on the network task) and never
//! writes it: the machine's writes go to the store writer ([`crate::ingest`]),
//! group-committed with everything else, and their outcomes come back to the machine.
//! While the writer writes one window, this thread decodes and verifies the next: the
//! catch-up path runs on both cores. At most [`WRITES_IN_FLIGHT`] writes are
//! outstanding; past that the thread stops taking input until one is done, so a slow
//! disk slows the network down instead of filling memory.

mod persist;
mod status;

use status::RemoteView;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use murmur_core::VersionVector;
use murmur_core::replicate::{self as policy, Gossip, Output, Replicator as Machine, Ticket};
use murmur_core::sync::{self as proto};
use murmur_core::{AuthorId, Event, Pattern, ReadStore, Topic};
use murmur_p2p::{Command as NetCommand, MessageId, PeerId, Verdict};
use murmur_store::RocksStore;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// What the replicator thread is asked to do (through its [`Handle`]).
#[derive(Debug)]
enum Command {
    /// Something from the network.
    Net(murmur_p2p::Event),
    /// Durable local events to gossip.
    Published(Vec<Event>),
    /// Time passed: deadlines and periodic rounds.
    Tick,
    /// Run a round now (with one peer, or all).
    SyncNow(Option<PeerId>),
    /// Stop (at shutdown; other senders may still be alive).
    Stop,
    /// Report the replication state.
    Status(tokio::sync::oneshot::Sender<crate::api::ReplicationJson>),
    /// Add or remove an interest pattern; answers with the patterns now in force.
    Interest {
        /// Pattern to add.
        add: Option<Pattern>,
        /// Pattern to remove.
        remove: Option<Pattern>,
        /// The patterns in force afterwards.
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// Settings of the replicator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Topics this node replicates (patterns).
    pub topics: Vec<Pattern>,
    /// Interval between periodic rounds.
    pub anti_entropy_interval: Duration,
    /// The lag watchdog's limit.
    pub lag_watch: Duration,
    /// Connected peers wanted per interest pattern (topic-aware discovery; 0: off).
    pub topic_links: usize,
    /// Sync machine settings.
    pub sync: proto::Config,
    /// Where known peer addresses are kept across restarts.
    pub peers_file: std::path::PathBuf,
    /// Where interest changes made at runtime are kept (overrides `topics` when present).
    pub interest_file: std::path::PathBuf,
    /// The node's clock: remote events' times move it (within the drift limit).
    pub clock: Arc<crate::clock::NodeClock>,
    /// This node's author, and the publishing hold to release once its own logs are
    /// confirmed by a round with a peer on every topic (after `murmur repair`).
    pub own: (AuthorId, crate::ingest::Hold),
    /// The store writer's state: while the disk is full, the machine pulls nothing
    /// (`Replicator::set_store_full`) and goes on serving.
    pub failing: crate::ingest::WriteFailing,
    /// The database's disk budget, bytes (0: none): past [`PULL_PAUSE_PCT`] of it,
    /// pulls pause until pruning brings it under [`PULL_RESUME_PCT`].
    pub max_disk: u64,
    /// Retention's state: when the budget finds nothing left to prune, pulls go on.
    pub retention: crate::retention::Rules,
    /// The fleet's membership and permissions (`None`: an open fleet).
    pub fleet: Option<crate::fleet::Guard>,
}

use crate::retention::{BUDGET_HIGH_PCT as PULL_RESUME_PCT, GOSSIP_HOLD_PCT, PULL_PAUSE_PCT};
/// How often the database's size is read while a budget is set (a directory listing).
const DISK_CHECK_EVERY: Duration = Duration::from_millis(20);

/// Most gossiped messages verified and stored together.
const GOSSIP_BATCH: usize = 256;
/// Most peers remembered in the peers file.
pub const KNOWN_PEERS_MAX: usize = 256;
/// How long a misbehaving peer is kept out.
const BAN: Duration = Duration::from_secs(600);
/// How long a peer that showed no certificate is kept out: most often a member that
/// has not joined yet (`murmur fleet join` comes after the daemon started).
const NO_CREDENTIALS: Duration = Duration::from_secs(10);
/// How long a peer whose certificate is refused (another fleet, expired, forged) is
/// kept out; a revoked one gets [`BAN`].
const NOT_ADMITTED: Duration = Duration::from_secs(60);
/// How long a peer the fleet refuses at connect is kept out: a revoked one like a
/// misbehaving one, one that showed no certificate briefly (it may join any moment),
/// any other refusal (another fleet, expired, forged) for a minute.
fn keep_out_for(refusal: &murmur_core::fleet::Refusal, showed_nothing: bool) -> Duration {
    match refusal {
        murmur_core::fleet::Refusal::Revoked { .. } => BAN,
        _ if showed_nothing => NO_CREDENTIALS,
        _ => NOT_ADMITTED,
    }
}

#[cfg(test)]
mod keep_out_tests {
    use super::*;
    use murmur_core::fleet::Refusal;

    /// The README's numbers: 10 s without a certificate, 60 s for a refused one,
    /// 10 minutes for a revoked one.
    #[test]
    fn refused_peers_are_kept_out_as_the_readme_says() {
        let a = murmur_core::testing::key(1).author();
        let revoked = Refusal::Revoked {
            author: a,
            effective_ms: 0,
            reason: "stolen".into(),
        };
        let expired = Refusal::Expired {
            author: a,
            expires_ms: 0,
        };
        assert_eq!(keep_out_for(&revoked, false), Duration::from_secs(600));
        assert_eq!(keep_out_for(&revoked, true), Duration::from_secs(600));
        assert_eq!(
            keep_out_for(&Refusal::NotAMember(a), true),
            Duration::from_secs(10)
        );
        assert_eq!(keep_out_for(&expired, false), Duration::from_secs(60));
        assert_eq!(
            keep_out_for(&Refusal::NotAMember(a), false),
            Duration::from_secs(60)
        );
    }
}

/// Least time between the rounds with every peer that a policy change starts (events
/// refused for a certificate or grant that had not arrived yet are pulled again).
const POLICY_ROUNDS_EVERY: Duration = Duration::from_secs(2);
/// How often connected peers are checked against the policy without a change (a
/// certificate that expired).
const STANDING_EVERY: Duration = Duration::from_secs(5);
/// Largest gossip message accepted: one event of the maximum size, as a run.
pub(crate) const GOSSIP_MAX_BYTES: usize = murmur_p2p::MAX_GOSSIP_BYTES;
/// Most durable events gathered from queued batches into one round of gossip.
const PUBLISH_COALESCE: usize = 8192;
/// Most writes handed to the store writer and not yet done.
pub(crate) const WRITES_IN_FLIGHT: usize = 16;

struct Replicator {
    machine: Machine<PeerId, MessageId>,
    store: Arc<RocksStore>,
    net: murmur_p2p::Handle,
    config: Config,
    known: BTreeMap<PeerId, Vec<murmur_p2p::Multiaddr>>,
    /// The last version vector each peer showed for each topic, and when.
    remote: BTreeMap<(Topic, PeerId), (Instant, RemoteView)>,
    known_dirty: bool,
    metrics: Metrics,
    /// The store's one writer.
    writer: crate::ingest::Handle,
    /// Writes handed to it, oldest first (it answers in order).
    writing: VecDeque<(Ticket, oneshot::Receiver<crate::ingest::Written>)>,
    /// When the database's size was last read against the budget.
    disk_checked: Option<Instant>,
    /// The database is past [`GOSSIP_HOLD_PCT`] of its budget: gossip is held too.
    budget_hold: bool,
    /// The fleet policy's generation last acted on, and when.
    policy_seen: (u64, Option<Instant>),
    /// Whether revoked keys' events were looked for since start, and when to look
    /// again after a change (see [`Replicator::take_back`]).
    took_back_at_start: bool,
    take_back_again: Option<Instant>,
    /// Refusals by the fleet's policy since the last log line about them.
    refusals_unlogged: u64,
    refusals_logged: Option<Instant>,
}

/// What the thread waits for.
enum Step {
    Input(Command),
    Written(Ticket, crate::ingest::Written),
}

/// The replicator's handle: cloneable, one bounded inbox; [`Handle::stop`] ends it.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

/// The replicator is gone (shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the replicator has stopped")]
pub struct Stopped;

impl Handle {
    /// A network event; waits for room (the network task's backpressure). `Err` once
    /// the replicator has stopped.
    pub async fn net(&self, ev: murmur_p2p::Event) -> Result<(), Stopped> {
        self.tx.send(Command::Net(ev)).await.map_err(|_| Stopped)
    }

    /// Time passed; dropped when the inbox is full (the next tick comes soon).
    pub fn tick(&self) {
        let _ = self.tx.try_send(Command::Tick);
    }

    /// Durable local events to gossip; dropped when the inbox is full (anti-entropy
    /// delivers them instead).
    pub fn published(&self, events: Vec<Event>) {
        let _ = self.tx.try_send(Command::Published(events));
    }

    /// A round now with `peer`, or with every connected peer.
    pub async fn sync_now(&self, peer: Option<PeerId>) -> Result<(), Stopped> {
        self.tx
            .send(Command::SyncNow(peer))
            .await
            .map_err(|_| Stopped)
    }

    /// The replication state, per topic and peer.
    pub async fn status(&self) -> Result<crate::api::ReplicationJson, Stopped> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Status(reply))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Adds and/or removes an interest pattern; the patterns in force afterwards.
    pub async fn interest(
        &self,
        add: Option<Pattern>,
        remove: Option<Pattern>,
    ) -> Result<Vec<String>, Stopped> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Interest { add, remove, reply })
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Stops the replicator (other handles may still be alive).
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

/// Starts the replicator thread on `inbox` (see [`channel`]); it stops on
/// [`Handle::stop`] or when every handle is dropped.
pub fn spawn(
    store: Arc<RocksStore>,
    net: murmur_p2p::Handle,
    writer: crate::ingest::Handle,
    config: Config,
    metrics: Metrics,
    inbox: Inbox,
) -> std::io::Result<JoinHandle<()>> {
    let inputs = inbox.0;
    let confirm = config.own.1.is_on().then(|| {
        store
            .logs()
            .map(|logs| logs.into_iter().map(|l| l.topic).collect())
            .unwrap_or_default()
    });
    let machine = Machine::new(
        policy::Config {
            interest: config.topics.clone(),
            round_every: config.anti_entropy_interval,
            lag_watch: config.lag_watch,
            topic_links: config.topic_links,
            gossip_max_bytes: GOSSIP_MAX_BYTES,
            sync: config.sync.clone(),
            ..policy::Config::default()
        },
        confirm,
    );
    let r_generation = config
        .fleet
        .as_ref()
        .map_or(0, crate::fleet::Guard::generation);
    let r = Replicator {
        machine,
        store,
        net,
        config,
        known: BTreeMap::new(),
        remote: BTreeMap::new(),
        known_dirty: false,
        metrics,
        writer,
        writing: VecDeque::new(),
        disk_checked: None,
        budget_hold: false,
        // The policy as loaded at start is not a change: no extra rounds for it.
        policy_seen: (r_generation, None),
        took_back_at_start: false,
        take_back_again: None,
        refusals_unlogged: 0,
        refusals_logged: None,
    };
    let thread = std::thread::Builder::new()
        .name("murmur-replicator".into())
        .spawn(move || {
            // A runtime of its own, on this thread only: to wait on its inbox and on
            // the writer at once. Its store reads block this thread, as before.
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt.block_on(r.run(inputs)),
                Err(e) => tracing::error!(error = %e, "cannot start the replicator"),
            }
        })?;
    Ok(thread)
}

/// The replicator's inbox, made before it starts (the writer and the replicator each
/// need the other's handle).
#[derive(Debug)]
pub struct Inbox(mpsc::Receiver<Command>);

/// A replicator's handle and inbox, with room for `queue` commands.
pub fn channel(queue: usize) -> (Handle, Inbox) {
    let (tx, rx) = mpsc::channel(queue);
    (Handle { tx }, Inbox(rx))
}

impl Replicator {
    async fn run(mut self, mut inputs: mpsc::Receiver<Command>) {
        let outs = self.machine.start(&*self.store);
        self.outputs(outs).await;
        let mut next: Option<Command> = None;
        loop {
            let step = match next.take() {
                Some(i) => Step::Input(i),
                None => {
                    let full = self.writing.len() >= WRITES_IN_FLIGHT;
                    let writing = &mut self.writing;
                    tokio::select! {
                        // Finished writes first: what waits on them goes on.
                        biased;
                        (ticket, written) = next_written(writing), if !writing.is_empty() => {
                            Step::Written(ticket, written)
                        }
                        i = inputs.recv(), if !full => match i {
                            Some(i) => Step::Input(i),
                            None => break,
                        },
                    }
                }
            };
            let now = Instant::now();
            self.follow_disk(now).await;
            self.follow_budget(now).await;
            let input = match step {
                Step::Written(ticket, written) => {
                    let outs = self.machine.persisted(ticket, written, now, &*self.store);
                    self.outputs(outs).await;
                    continue;
                }
                Step::Input(i) => i,
            };
            match input {
                // Gossip that queued up is verified as a batch and stored in one write.
                Command::Net(murmur_p2p::Event::Gossip {
                    source,
                    id,
                    topic,
                    data,
                }) => {
                    let mut batch = vec![Gossip {
                        from: source,
                        id,
                        channel: topic,
                        data,
                    }];
                    while batch.len() < GOSSIP_BATCH {
                        match inputs.try_recv() {
                            Ok(Command::Net(murmur_p2p::Event::Gossip {
                                source,
                                id,
                                topic,
                                data,
                            })) => {
                                batch.push(Gossip {
                                    from: source,
                                    id,
                                    channel: topic,
                                    data,
                                });
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let outs = self.machine.gossiped(batch, &*self.store);
                    self.outputs(outs).await;
                }
                Command::Net(ev) => self.net_event(ev, now).await,
                // Durable batches that queued up are gossiped together, so a log's
                // consecutive events leave as few, large runs.
                Command::Published(mut events) => {
                    while events.len() < PUBLISH_COALESCE {
                        match inputs.try_recv() {
                            Ok(Command::Published(more)) => events.extend(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let outs = self.machine.published(events);
                    self.outputs(outs).await;
                }
                Command::Tick => self.tick(now).await,
                Command::Stop => break,
                Command::Interest { add, remove, reply } => {
                    self.change_interest(add, remove, now).await;
                    let _ = reply.send(
                        self.machine
                            .interest()
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                    );
                }
                Command::Status(reply) => {
                    let _ = reply.send(self.status(now));
                }
                Command::SyncNow(peer) => {
                    let outs = self.machine.sync_now(peer, now, &*self.store);
                    self.outputs(outs).await;
                }
            }
        }
        tracing::debug!("replicator stopped");
    }

    /// Tells the machine when the disk fills or has room again (the writer's state,
    /// read before every input: a write that failed for lack of space stops the pulls
    /// at once, before the next gossip batch or window is handed to the writer), or
    /// when the disk budget holds gossip (see [`GOSSIP_HOLD_PCT`]): the machine treats
    /// both alike.
    async fn follow_disk(&mut self, now: Instant) {
        let disk_full = self.config.failing.disk_full();
        let full = disk_full || self.budget_hold;
        if full == self.machine.store_full() {
            return;
        }
        if self.budget_hold && !disk_full {
            tracing::info!(
                "the database is past {GOSSIP_HOLD_PCT}% of its disk budget: live events are left to the peers (pulled later) until pruning makes room"
            );
        } else if full {
            tracing::warn!(
                "the disk is full: replication stops pulling (it goes on serving its peers) until the store writes again"
            );
        } else {
            tracing::info!(
                "the store writes again (or pruning made room under the disk budget): replication resumes with a round with every peer"
            );
        }
        let outs = self.machine.set_store_full(full, now, &*self.store);
        self.outputs(outs).await;
    }

    /// Pauses pulls while the database is over [`PULL_PAUSE_PCT`] of its budget, and
    /// resumes them below [`PULL_RESUME_PCT`] (read at most every
    /// [`DISK_CHECK_EVERY`]). Live gossip goes on.
    async fn follow_budget(&mut self, now: Instant) {
        let max = self.config.max_disk;
        if max == 0
            || self
                .disk_checked
                .is_some_and(|t| now.duration_since(t) < DISK_CHECK_EVERY)
        {
            return;
        }
        self.disk_checked = Some(now);
        let disk = self.store.disk_bytes();
        let exhausted = self.config.retention.budget_exhausted();
        let hold = !exhausted
            && if self.budget_hold {
                disk > max / 100 * PULL_RESUME_PCT
            } else {
                disk > max / 100 * GOSSIP_HOLD_PCT
            };
        if hold != self.budget_hold {
            self.budget_hold = hold;
            self.metrics.gossip_held.set(i64::from(hold));
            self.follow_disk(now).await;
        }
        let paused = self.machine.pulls_paused();
        // With nothing left the budget may prune (kept topics, documents, heads), a
        // pause would wait for room that never comes: the disk fills instead, and a
        // full disk stops the pulls by itself.
        let over = !exhausted
            && if paused {
                disk > max / 100 * PULL_RESUME_PCT
            } else {
                disk > max / 100 * PULL_PAUSE_PCT
            };
        if over == paused {
            return;
        }
        tracing::debug!(
            disk,
            budget = max,
            paused = over,
            "pulls paused or resumed by the disk budget"
        );
        self.metrics.pulls_paused.set(i64::from(over));
        if over {
            self.metrics.pull_pauses.inc();
        }
        let outs = self.machine.set_pulls_paused(over, now, &*self.store);
        self.outputs(outs).await;
    }

    async fn tick(&mut self, now: Instant) {
        let outs = self.machine.tick(now, &*self.store);
        self.outputs(outs).await;
        self.follow_policy(now).await;
        self.save_known();
        self.metrics
            .sync_sessions
            .set(self.machine.sessions() as i64);
        self.metrics.peers.set(self.machine.peers().len() as i64);
        self.metrics.expire_bans(now);
    }

    /// After the fleet's policy changed (at most every [`POLICY_ROUNDS_EVERY`]): peers
    /// that no longer stand (revoked) are dropped, and a round runs with every other
    /// peer, so that what was refused for a certificate or grant that had not arrived
    /// yet is pulled again. Expiry comes with time alone, so the peers are also looked
    /// at every [`STANDING_EVERY`].
    async fn follow_policy(&mut self, now: Instant) {
        let Some(g) = self.config.fleet.clone() else {
            return;
        };
        let generation = g.generation();
        let (seen, at) = self.policy_seen;
        let changed = generation != seen;
        let due = at.is_none_or(|t| now.duration_since(t) >= POLICY_ROUNDS_EVERY);
        // Expiry passes with time alone: look at the peers every so often anyway.
        let periodic = at.is_none_or(|t| now.duration_since(t) >= STANDING_EVERY);
        if !(periodic || (changed && due)) {
            return;
        }
        self.policy_seen = (generation, Some(now));
        let outs = self
            .machine
            .policy_changed(changed, |peer| g.stands(peer), now, &*self.store);
        self.outputs(outs).await;
        // At start (a crash may have come between a revocation and its take-back), on
        // every change, and once more a little after one (writes checked under the
        // policy before it may still have been on their way to the writer).
        let again = self.take_back_again.is_some_and(|t| now >= t);
        if changed || again || !self.took_back_at_start {
            self.took_back_at_start = true;
            self.take_back_again = changed.then(|| now + STANDING_EVERY);
            self.take_back(g);
        }
    }

    /// Takes back what revoked keys wrote after their revocation and this node stored
    /// before it knew (a revocation learned late, or at startup after a crash midway),
    /// on its own task: the store's writer, after what is queued before, finds each
    /// log's suffix and takes it back. Nothing of theirs is stored again: the policy
    /// refuses it by gossip and by sync alike.
    fn take_back(&self, g: crate::fleet::Guard) {
        let (writer, metrics) = (self.writer.clone(), self.metrics.clone());
        tokio::spawn(async move {
            match writer.take_back(g.clone()).await {
                Ok(done) => {
                    for (topic, author, from, pruned) in done {
                        metrics.fleet_taken_back.inc_by(pruned.events);
                        g.taken_back(author, pruned.events);
                        tracing::warn!(%author, %topic, from = %from, events = pruned.events, "took back what a revoked key wrote after its revocation (stored before this node knew of it)");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not take back what revoked keys wrote after their revocation; the next policy change retries");
                }
            }
        });
    }

    /// A new peer's credentials: admitted, or kept out.
    async fn credentials(&mut self, peer: PeerId, proof: Option<Vec<u8>>) {
        let Some(g) = self.config.fleet.clone() else {
            // An open fleet never asks; admit whatever shows up.
            self.net.send(NetCommand::Admit(peer)).await;
            return;
        };
        match g.judge(&peer, proof.as_deref()) {
            Ok(()) => {
                tracing::debug!(%peer, "admitted to the fleet");
                self.net.send(NetCommand::Admit(peer)).await;
            }
            Err(r) => {
                let reason = if proof.as_deref().is_none_or(<[u8]>::is_empty) {
                    "no_credentials"
                } else {
                    r.reason()
                };
                tracing::warn!(%peer, reason, error = %r, "peer not admitted to the fleet");
                Metrics::count(&self.metrics.fleet_peers_refused, reason);
                let for_ = keep_out_for(&r, reason == "no_credentials");
                self.keep_out(peer, reason, for_);
            }
        }
    }

    /// Disconnects `peer` and keeps it out for `for_` (fleet refusals; bans for
    /// misbehaviour go through [`Replicator::ban`]).
    fn keep_out(&mut self, peer: PeerId, reason: &'static str, for_: Duration) {
        if self.known.remove(&peer).is_some() {
            self.known_dirty = true;
        }
        if self.net.try_send(NetCommand::Ban { peer, for_ }) {
            self.metrics
                .banned(reason, &peer.to_string(), Instant::now() + for_);
        }
    }

    /// An event the fleet's policy refused: counted, and logged at most every 10 s.
    fn refused(
        &mut self,
        from: PeerId,
        ev: &Event,
        reason: &murmur_core::fleet::Refusal,
        via: &str,
    ) {
        self.metrics
            .fleet_events_refused
            .get_or_create(&crate::metrics::Refused {
                reason: reason.reason().to_owned(),
                path: via.to_owned(),
            })
            .inc();
        self.refusals_unlogged += 1;
        let now = Instant::now();
        if self
            .refusals_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(peer = %from, via, topic = %ev.topic(), author = %ev.author(), seq = %ev.seq(), refused = self.refusals_unlogged, error = %reason, "events refused by the fleet's policy (not stored, not forwarded)");
            self.refusals_unlogged = 0;
            self.refusals_logged = Some(now);
        }
    }

    async fn net_event(&mut self, ev: murmur_p2p::Event, now: Instant) {
        let outs = match ev {
            murmur_p2p::Event::Credentials { peer, proof } => {
                self.credentials(peer, proof).await;
                Vec::new()
            }
            murmur_p2p::Event::Connected(peer) => {
                // Its node key signs its events: its live push is watched.
                if let Some(key) = murmur_p2p::key_of(&peer) {
                    self.machine.peer_author(peer, murmur_core::AuthorId(key));
                }
                self.machine.connected(peer, now, &*self.store)
            }
            murmur_p2p::Event::Disconnected(peer) => {
                self.forget_lag(&peer);
                self.machine.disconnected(&peer, &*self.store)
            }
            murmur_p2p::Event::Sync { peer, msg } => {
                if msg.topic().is_some_and(|t| self.machine.interested(t)) {
                    self.observe(peer, &msg, now);
                }
                self.machine.sync_message(peer, msg, now, &*self.store)
            }
            murmur_p2p::Event::Identified { peer, addrs } => {
                self.remember(peer, addrs);
                Vec::new()
            }
            murmur_p2p::Event::PeerSubscribed { peer, topic } => {
                self.machine.peer_subscribed(peer, &topic);
                Vec::new()
            }
            murmur_p2p::Event::PeerUnsubscribed { peer, topic } => {
                self.machine.peer_unsubscribed(&peer, &topic);
                Vec::new()
            }
            murmur_p2p::Event::Gossip {
                source,
                id,
                topic,
                data,
            } => self.machine.gossiped(
                vec![Gossip {
                    from: source,
                    id,
                    channel: topic,
                    data,
                }],
                &*self.store,
            ),
        };
        self.outputs(outs).await;
    }

    /// Carries out the machine's outputs. A write goes to the store writer (waiting for
    /// room in its queue); its outcome comes back through the main loop.
    async fn outputs(&mut self, outs: Vec<Output<PeerId, MessageId>>) {
        let mut outs: VecDeque<_> = outs.into();
        // Stalled topics per peer (first topic, topics, events behind, longest stall):
        // one warning per peer, not one per topic (a round on 2,000 topics once wrote
        // a hundred lines in the same millisecond).
        let mut lagging: BTreeMap<PeerId, (Topic, usize, u64, Duration)> = BTreeMap::new();
        while let Some(o) = outs.pop_front() {
            match o {
                Output::Persist {
                    ticket,
                    events,
                    durability,
                    restart,
                } => match self.writer.write(events, durability, restart).await {
                    Ok(rx) => self.writing.push_back((ticket, rx)),
                    Err(e) => {
                        // The writer has stopped (shutting down): nothing is written.
                        let more = self.machine.persisted(
                            ticket,
                            Err(e.to_string()),
                            Instant::now(),
                            &*self.store,
                        );
                        outs.extend(more);
                    }
                },
                // Sync messages, runs and verdicts wait for room in the network's queue:
                // the network task takes commands before anything else and never waits
                // on us, so the wait is short, and nothing is lost. Dropped, a sync
                // message stalled its session until the timeout, a run reached peers
                // only by the next round, and a verdict left a run unforwarded.
                Output::Sync(proto::Output::Send { to, msg }) => {
                    self.net.send(NetCommand::Sync { peer: to, msg }).await;
                }
                Output::Sync(proto::Output::Stored { events, .. }) => {
                    self.metrics.received("sync", events.len() as u64);
                    self.config
                        .clock
                        .observe(events.iter().map(|(_, e)| (e.author(), e.time())));
                }
                Output::Sync(proto::Output::Done {
                    peer,
                    topic,
                    pulled,
                }) => {
                    self.metrics.session("done");
                    if pulled > 0 {
                        tracing::info!(%peer, %topic, pulled, "caught up");
                    }
                }
                Output::Sync(proto::Output::Failed {
                    peer,
                    topic,
                    reason,
                }) => {
                    self.metrics.session("failed");
                    tracing::debug!(%peer, %topic, ?reason, "sync round failed");
                }
                Output::Sync(proto::Output::Misbehaved { peer, violation }) => {
                    self.metrics.rejected("sync_violation");
                    tracing::warn!(%peer, ?violation, "peer broke the sync protocol");
                }
                // The machine hands the sync machine's writes on as Output::Persist.
                Output::Sync(proto::Output::Persist { .. }) => {}
                Output::Sync(proto::Output::Refused {
                    from,
                    event,
                    reason,
                }) => self.refused(from, &event, &reason, "sync"),
                Output::Refused {
                    from,
                    event,
                    reason,
                } => self.refused(from, &event, &reason, "gossip"),
                Output::Sync(proto::Output::Fork(proof)) => {
                    tracing::warn!(author = %proof.author(), topic = %proof.topic(), seq = %proof.seq(), "fork proven: log frozen");
                }
                Output::Gossip { channel, data } => {
                    let topic = murmur_core::channel::name(&channel);
                    self.net.send(NetCommand::Publish { topic, data }).await;
                }
                Output::Verdict { id, from, verdict } => {
                    let verdict = match verdict {
                        policy::Verdict::Accept => Verdict::Accept,
                        policy::Verdict::Ignore => Verdict::Ignore,
                        policy::Verdict::Reject => Verdict::Reject,
                    };
                    let source = from;
                    self.net
                        .send(NetCommand::Validate {
                            id,
                            source,
                            verdict,
                        })
                        .await;
                }
                Output::Received { events } => {
                    self.metrics.received("gossip", events.len() as u64);
                    self.config
                        .clock
                        .observe(events.iter().map(|e| (e.author(), e.time())));
                }
                Output::Rejected { from, reason } => {
                    tracing::debug!(peer = %from, reason, "rejected gossip");
                    self.metrics.rejected(reason);
                }
                Output::Duplicates(n) => {
                    self.metrics.duplicates.inc_by(n);
                }
                Output::Forked(ev) => {
                    tracing::warn!(author = %ev.author(), topic = %ev.topic(), seq = %ev.seq(), "fork proven by gossip: log frozen");
                }
                Output::Ban { peer, reason } => self.ban(peer, reason),
                Output::PushLost {
                    peer,
                    events,
                    reconnect,
                } => {
                    self.metrics.push_lost.inc_by(events);
                    if reconnect {
                        tracing::warn!(%peer, "this peer's live push no longer reaches us (three rounds in a row brought its own events by sync after a round with it had ended): reconnecting");
                        if self.net.try_send(NetCommand::Reconnect(peer)) {
                            self.metrics.push_reconnects.inc();
                        }
                    }
                }
                Output::Lagging {
                    peer,
                    topic,
                    behind,
                    stalled,
                } => {
                    self.metrics.session("lagging");
                    let l = lagging.entry(peer).or_insert((topic, 0, 0, stalled));
                    l.1 += 1;
                    l.2 += behind;
                    l.3 = l.3.max(stalled);
                }
                Output::Stuck {
                    peer,
                    topic,
                    failures,
                    reason,
                } => {
                    self.metrics.session("stuck");
                    tracing::warn!(%peer, %topic, failures, ?reason, "sync rounds with this peer keep failing; retrying with back-off");
                }
                Output::Provide(key) => {
                    self.net.send(NetCommand::Provide(key)).await;
                }
                Output::Unprovide(key) => {
                    self.net.send(NetCommand::Unprovide(key)).await;
                }
                Output::FindPeers { key, want } => {
                    self.metrics.topic_lookups.inc();
                    if !self.net.try_send(NetCommand::FindPeers { key, want }) {
                        // The next count asks again.
                        self.metrics.refused("network_queue_full");
                    }
                }
                Output::Subscribe(pattern) => {
                    let name = murmur_core::channel::name(&pattern);
                    tracing::info!(channel = %name, "joining a gossip channel");
                    // Waits for room: a lost join would leave the pattern without push.
                    self.net.send(NetCommand::Subscribe(name)).await;
                }
                Output::Unsubscribe(pattern) => {
                    let name = murmur_core::channel::name(&pattern);
                    tracing::info!(channel = %name, "leaving a gossip channel");
                    self.net.send(NetCommand::Unsubscribe(name)).await;
                }
                Output::OwnLogsConfirmed => self.confirm_own().await,
            }
        }
        for (peer, (topic, topics, behind, stalled)) in lagging {
            tracing::warn!(%peer, %topic, topics, behind, stalled_secs = stalled.as_secs(), "the events this node lacks from a peer have not shrunk (topic: the first of them); trying it and another peer");
        }
    }

    /// Disconnects `peer` and refuses it for `BAN`; `reason` is the metric's label.
    fn ban(&mut self, peer: PeerId, reason: &'static str) {
        if self.known.remove(&peer).is_some() {
            self.known_dirty = true;
        }
        let why = match reason {
            "bad_gossip" => "forwarded invalid events",
            "sync_violation" => "broke the sync protocol",
            "revoked" | "expired" | "not_a_member" => {
                // The fleet's policy no longer admits it (see `follow_policy`).
                Metrics::count(&self.metrics.fleet_peers_refused, reason);
                "is no longer admitted by the fleet's policy"
            }
            other => other,
        };
        tracing::warn!(%peer, why, "disconnecting a misbehaving peer for {BAN:?}");
        self.metrics.refused("peer_banned");
        if self.net.try_send(NetCommand::Ban { peer, for_: BAN }) {
            let until = Instant::now() + BAN;
            self.metrics.banned(reason, &peer.to_string(), until);
        } else {
            // Not banned: the peer stays until it misbehaves again.
            self.metrics.refused("network_queue_full");
        }
    }
}

/// The outcome of the oldest write in flight (the writer answers in order).
async fn next_written(
    writing: &mut VecDeque<(Ticket, oneshot::Receiver<crate::ingest::Written>)>,
) -> (Ticket, crate::ingest::Written) {
    let Some((ticket, rx)) = writing.front_mut() else {
        return std::future::pending().await;
    };
    let ticket = *ticket;
    let written = rx
        .await
        .unwrap_or_else(|_| Err("the store writer has stopped".into()));
    writing.pop_front();
    (ticket, written)
}
