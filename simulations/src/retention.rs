//! Retention in the fleet: each node that prunes runs the daemon's own policy
//! (`core::retention::Policy`): its passes plan prefix cuts and the real store carries
//! them out, and its sync machine gets the daemon's restart and window hooks
//! (`sync::Config::may_restart`, `keeps_from`). The simulator only counts what the
//! policy and the protocol do:
//! - events a node stored again below a cut it made (resurrection: the goal is 0, and
//!   any is an invariant violation);
//! - events stored already outside the node's window (a whole log pulled and pruned at
//!   once, instead of the window);
//! - the most events a pruning node held at once (a reset device catching up must stay
//!   near its window);
//! - at the end, whether every node holds exactly its window of every log.

use std::sync::atomic::{AtomicU64, Ordering};

use murmur_core::retention::{Policy, Rule};
use murmur_core::storage::{Cut, LogSummary};

use super::*;

/// Wall clock of the simulated fleet, ms since the epoch (events are timed from it).
pub(crate) fn wall_ms(now_us: u64) -> u64 {
    1_700_000_000_000 + now_us / 1000
}

/// The node's retention policy from the scenario: one rule on the topic.
pub(crate) fn policy(r: &scenario::Retention, topic: &Topic) -> anyhow::Result<Policy> {
    Policy::new(vec![Rule {
        pattern: Pattern::new(topic.as_str())?,
        max_age: r.max_age_s.map(Duration::from_secs_f64),
        max_events_per_log: r.max_events_per_log,
        max_bytes: None,
        keep: false,
    }])
    .map_err(|e| anyhow::anyhow!("retention: {e}"))
}

/// The daemon's hooks on a node's sync machine (`daemon/src/node.rs`): a log may start
/// over at a peer's base as the policy says, or always for the node's own log; a far
/// behind log is pulled from the policy's window, never the node's own.
pub(crate) fn hooks(
    cfg: &mut sync::Config,
    policy: &Policy,
    own: Option<AuthorId>,
    clock: &Arc<AtomicU64>,
    window_pulls: bool,
) {
    let (p, c) = (policy.clone(), clock.clone());
    cfg.may_restart = Some(sync::RestartCheck(Arc::new(move |range, peer_head| {
        range.first().is_some_and(|first| {
            Some(first.author()) == own
                || p.may_restart(first, peer_head, c.load(Ordering::Relaxed), None)
        })
    })));
    if !window_pulls {
        return;
    }
    let p = policy.clone();
    cfg.keeps_from = Some(sync::KeepsFrom(Arc::new(move |topic, author, head| {
        if Some(*author) == own {
            return None;
        }
        p.keeps_from(topic, head)
    })));
}

/// What retention did over the run (see [`crate::Report::retention`]).
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    /// Nodes that prune, and those that keep everything.
    pub pruning_nodes: usize,
    /// Interested nodes that keep everything (archives).
    pub archives: usize,
    /// Events deleted by prune passes, over all nodes.
    pub pruned: u64,
    /// Events a node stored again below a cut it had made. The goal is 0.
    pub refetched_pruned: u64,
    /// Events a pruning node stored already outside its window (`max_events_per_log`
    /// older than the log's head after the write).
    pub stored_outside_window: u64,
    /// Most events a pruning node held at once, and the window of all logs
    /// (`max_events_per_log` × logs) it is compared with.
    pub peak_held: (u64, u64),
    /// The same for nodes that came back without their store (reset devices).
    pub peak_held_reset: u64,
    /// At the end (after a last pass), every pruning node holds exactly its window of
    /// every log: the newest `max_events_per_log` events.
    pub converged_on_window: bool,
    /// Archives holding every event at the end. An archive back after the fleet's
    /// window continues only from another archive (pruning peers cannot continue a log
    /// it keeps whole): in a random graph it may meet none.
    pub archives_complete: usize,
}

impl Sim {
    /// Node `i`'s prune pass: the daemon's planner over its store, then the cuts.
    pub(crate) fn retention_pass(&mut self, i: usize) {
        let Some(policy) = self.nodes[i].policy.clone() else {
            return;
        };
        let store = &self.nodes[i].store;
        let Ok(logs) = store.logs();
        let Ok(plan) = policy.plan(&logs, wall_ms(self.now), store);
        let cuts: Vec<Cut> = plan.into_iter().map(|p| p.cut).collect();
        if cuts.is_empty() {
            return;
        }
        let Ok(p) = store.prune(&cuts);
        self.ret.pruned += p.events;
        for c in cuts {
            let below = self.nodes[i].cut_below.entry(c.author).or_default();
            *below = (*below).max(c.below.0);
        }
    }

    /// Retention's checks at a write of node `i` (events it stored now).
    pub(crate) fn check_retained(&mut self, i: usize, appended: &[&Event]) {
        if appended.is_empty() || self.nodes[i].policy.is_none() {
            return;
        }
        for ev in appended {
            if self.nodes[i]
                .cut_below
                .get(&ev.author())
                .is_some_and(|b| ev.seq().0 < *b)
            {
                self.ret.refetched_pruned += 1;
                self.violation(format!(
                    "node {i} stored seq {} again below its cut",
                    ev.seq().0
                ));
            }
        }
        let Ok(logs) = self.nodes[i].store.logs();
        if let Some(n) = self
            .sc
            .retention
            .as_ref()
            .and_then(|r| r.max_events_per_log)
        {
            for ev in appended {
                if let Some(l) = logs.iter().find(|l| l.author == ev.author())
                    && ev.seq().0 + n <= l.head.seq.0
                {
                    self.ret.stored_outside_window += 1;
                }
            }
        }
        let held: u64 = logs.iter().map(LogSummary::held).sum();
        let node = &self.nodes[i];
        self.ret.peak_held.0 = self.ret.peak_held.0.max(held);
        if node.reset {
            self.ret.peak_held_reset = self.ret.peak_held_reset.max(held);
        }
    }

    /// Whether node `i` holds exactly its window of every publisher's log: the newest
    /// `max_events_per_log` (or every event, for a node that keeps everything).
    pub(crate) fn holds_window(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        let keep = n
            .policy
            .as_ref()
            .and(self.sc.retention.as_ref())
            .and_then(|r| r.max_events_per_log);
        self.final_heads.iter().all(|(author, head)| {
            let Ok(st) = n.store.log_state(author, &self.topic);
            let from = keep.map_or(0, |k| (head + 1).saturating_sub(k));
            st.head.is_some_and(|h| h.seq.0 == *head)
                && st.base.0 == from
                && matches!(
                    n.store.log_range(author, &self.topic, Seq(from), usize::MAX),
                    Ok(evs) if evs.len() as u64 == head + 1 - from
                )
        })
    }

    /// The end of a run with retention: a last pass on every node, then the figures.
    pub(crate) fn finish_retention(&mut self) {
        if self.sc.retention.is_none() {
            return;
        }
        for i in 0..self.nodes.len() {
            self.retention_pass(i);
        }
        self.final_heads = self
            .nodes
            .iter()
            .filter_map(|n| n.author.as_ref())
            .filter_map(|(k, _, h)| Some((k.author(), h.as_ref()?.seq().0)))
            .collect();
        self.ret.pruning_nodes = self.nodes.iter().filter(|n| n.policy.is_some()).count();
        self.ret.archives = self
            .nodes
            .iter()
            .filter(|n| n.interested && !n.byzantine() && n.policy.is_none())
            .count();
        self.ret.peak_held.1 = self
            .sc
            .retention
            .as_ref()
            .and_then(|r| r.max_events_per_log)
            .map_or(0, |k| k * self.final_heads.len() as u64);
        let honest = |n: &Node| n.interested && !n.byzantine();
        self.ret.converged_on_window = (0..self.nodes.len())
            .filter(|&i| honest(&self.nodes[i]) && self.nodes[i].policy.is_some())
            .all(|i| self.holds_window(i));
        self.ret.archives_complete = (0..self.nodes.len())
            .filter(|&i| honest(&self.nodes[i]) && self.nodes[i].policy.is_none())
            .filter(|&i| self.holds_window(i))
            .count();
    }
}
