//! Retention: which events a node keeps, as prefix cuts of its logs.
//!
//! Rules are matched against a log's topic in order; the first match decides. A rule
//! keeps a log's newest `max_events_per_log` events, and/or its events younger than
//! `max_age` (by event time, the author's hybrid logical clock, which replication
//! keeps within `clock.max_drift` of each node's clock), and/or the newest `max_bytes`
//! of the topic (its logs together, the oldest events by event time going first; the
//! store keeps each log's held bytes in its head record). `keep` marks topics never
//! pruned. A topic no rule matches is kept whole, as before retention existed.
//!
//! A cut never removes a log's head event (the store keeps it: the chain continues from
//! it, and offsets are never reused), so `max_age` leaves the newest event of a quiet
//! log, and `max_events_per_log = 1` is "latest value per author", like a compacted
//! Kafka topic. Document topics are cut only behind this node's own snapshots of
//! their documents ([`Policy::plan_docs`], [`crate::snapshot`]): [`Policy::plan`] leaves
//! them out.
//!
//! The policy is pure: it reads the store and returns cuts; the daemon's writer carries
//! them out ([`crate::storage::Store::prune`]), and the simulator can run the same code.

use std::collections::HashMap;
use std::time::Duration;

use crate::storage::{Cut, LogSummary, ReadStore};
use crate::{Pattern, Seq, Topic};

/// One retention rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The topics it covers.
    pub pattern: Pattern,
    /// Keep events younger than this (by event time).
    pub max_age: Option<Duration>,
    /// Keep at most this many newest events per log (at least 1).
    pub max_events_per_log: Option<u64>,
    /// Keep at most this many bytes per topic (all its logs together; encoded event
    /// bytes, about half of what they take on disk with their indexes), the oldest
    /// events going first. Each log's head stays, so a topic with more authors than
    /// fit holds one event per author.
    pub max_bytes: Option<u64>,
    /// Never prune these topics (no limit may be set with it).
    pub keep: bool,
}

impl Rule {
    /// Checks the rule: a limit of 0 events, or a limit next to `keep`, is a mistake.
    pub fn check(&self) -> Result<(), String> {
        let p = self.pattern.as_str();
        if self.max_events_per_log == Some(0) {
            return Err(format!(
                "{p}: max_events_per_log must be at least 1 (the newest event of a log always stays)"
            ));
        }
        if self.max_bytes == Some(0) {
            return Err(format!(
                "{p}: max_bytes must be at least 1 (the newest event of a log always stays)"
            ));
        }
        let limited =
            self.max_age.is_some() || self.max_events_per_log.is_some() || self.max_bytes.is_some();
        if self.keep && limited {
            return Err(format!(
                "{p}: keep = true with a limit; choose one (a rule that keeps a topic whole, or limits)"
            ));
        }
        if !self.keep && !limited {
            return Err(format!(
                "{p}: no limit; set max_age, max_events_per_log, max_bytes, or keep = true"
            ));
        }
        Ok(())
    }
}

/// Most events one pass reads to find where `max_age` cuts (per pass, not per log):
/// the next pass continues. Bounds the time a pass holds the store's reader.
pub const SCAN_BUDGET: usize = 100_000;

/// Most events one pass cuts (all logs together): the writer deletes them in one batch,
/// so this bounds that batch (and the pause it puts between two commits). A backlog
/// (retention turned on over a full store) goes over several passes.
pub const CUT_BUDGET: u64 = 50_000;

/// The rule index of a built-in rule (not one of the configured ones).
pub const BUILT_IN: usize = usize::MAX;

/// Heartbeats: the latest one per node.
static HEALTH_RULE: std::sync::LazyLock<Option<Rule>> = std::sync::LazyLock::new(|| {
    Some(Rule {
        pattern: Pattern::new(crate::health::HEALTH_TOPIC).ok()?,
        max_age: None,
        max_events_per_log: Some(1),
        max_bytes: None,
        keep: false,
    })
});

/// Events read at a time while looking for a `max_age` cut.
const WINDOW: usize = 1024;

/// The retention rules, first match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// One cut a pass makes, with the index of the rule that made it (`None`: the disk
/// budget, see [`Policy::plan_budget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The cut.
    pub cut: Cut,
    /// The rule's index in the policy, or `None` for the disk budget.
    pub rule: Option<usize>,
}

impl Policy {
    /// A policy from rules, each checked.
    pub fn new(rules: Vec<Rule>) -> Result<Self, String> {
        for r in &rules {
            r.check()?;
        }
        Ok(Policy { rules })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule matching `topic`, with its index. The fleet's own topics
    /// (`$fleet/…`) match none of the configured rules: the policy log is kept whole,
    /// by construction, and heartbeats ([`crate::health::HEALTH_TOPIC`]) are kept
    /// latest-only by the built-in rule (index [`BUILT_IN`]).
    pub fn rule_for(&self, topic: &Topic) -> Option<(usize, &Rule)> {
        if crate::fleet::is_reserved(topic) {
            return (topic.as_str() == crate::health::HEALTH_TOPIC)
                .then(|| HEALTH_RULE.as_ref().map(|r| (BUILT_IN, r)))
                .flatten();
        }
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.pattern.matches(topic))
    }

    /// The cuts one pass makes over `logs` at `now_ms` (the node's clock, ms since
    /// the epoch), reading at most [`SCAN_BUDGET`] events. A rule's limits all apply:
    /// a log keeps what every one of them keeps. `max_bytes` counts a topic's logs
    /// together and cuts its oldest events first, by event time across the logs.
    pub fn plan<S: ReadStore>(
        &self,
        logs: &[LogSummary],
        now_ms: u64,
        store: &S,
    ) -> Result<Vec<Planned>, S::Error> {
        Ok(self.plan_inner(logs, now_ms, store, None)?.cuts)
    }

    /// The cuts one pass makes in document topics, which [`Policy::plan`] leaves out: as
    /// the rules say, but never past what this node's own snapshots cover (`covers`,
    /// per topic; see [`crate::snapshot`]). Topics whose rule would cut more than the
    /// snapshots cover (or that have none) are listed in `want_snapshots`: a new round
    /// of snapshots lets the next pass cut there.
    pub fn plan_docs<S: ReadStore>(
        &self,
        logs: &[LogSummary],
        now_ms: u64,
        store: &S,
        covers: &HashMap<Topic, DocCover>,
    ) -> Result<DocPlan, S::Error> {
        self.plan_inner(logs, now_ms, store, Some(covers))
    }

    /// `plan` (`docs` is `None`: document topics skipped) or `plan_docs` (only
    /// document topics, capped by `docs`).
    fn plan_inner<S: ReadStore>(
        &self,
        logs: &[LogSummary],
        now_ms: u64,
        store: &S,
        docs: Option<&HashMap<Topic, DocCover>>,
    ) -> Result<DocPlan, S::Error> {
        let mut topics: std::collections::BTreeMap<&Topic, Vec<&LogSummary>> =
            std::collections::BTreeMap::new();
        for log in logs {
            topics.entry(&log.topic).or_default().push(log);
        }
        let mut out = Vec::new();
        let mut want_snapshots = Vec::new();
        let mut budget = SCAN_BUDGET;
        let mut cut_budget = CUT_BUDGET;
        for (topic, group) in topics {
            let Some((i, rule)) = self.rule_for(topic) else {
                continue;
            };
            if rule.keep || group.iter().all(|l| l.base >= l.head.seq) {
                continue;
            }
            // Document topics go behind snapshots only (see the module docs).
            if store.docs_of(topic, 1)?.is_empty() == docs.is_some() {
                continue;
            }
            let mut cuts = Vec::with_capacity(group.len());
            for log in &group {
                let mut below = log.base;
                if let Some(n) = rule.max_events_per_log {
                    below = below.max(Seq((log.head.seq.0 + 1).saturating_sub(n)));
                }
                if let Some(age) = rule.max_age {
                    let cutoff =
                        now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
                    if log.head.time.ms < cutoff {
                        // All but the head are older: no need to read them.
                        below = below.max(log.head.seq);
                    } else {
                        let (at, read) = first_at_or_after(store, log, below, cutoff, budget)?;
                        budget -= read;
                        below = below.max(at);
                    }
                }
                cuts.push(below);
            }
            if let Some(max) = rule.max_bytes {
                let held: u64 = group.iter().map(|l| l.bytes).sum();
                if held > max {
                    budget -= free_oldest(store, &group, held - max, budget, &mut cuts)?;
                }
            }
            if let Some(docs) = docs {
                let cover = docs.get(topic);
                let mut wants = false;
                for (log, cut) in group.iter().zip(cuts.iter_mut()) {
                    let covered = cover
                        .and_then(|c| c.get(&log.author))
                        .map_or(log.base, |s| Seq(s.0.saturating_add(1)));
                    let want = (*cut).min(log.head.seq);
                    if want > covered.max(log.base) {
                        wants = true;
                        *cut = covered.max(log.base);
                    }
                }
                if wants {
                    want_snapshots.push(topic.clone());
                }
            }
            for (log, below) in group.iter().zip(cuts) {
                let below = below
                    .min(log.head.seq)
                    .min(Seq(log.base.0.saturating_add(cut_budget)));
                if below > log.base {
                    cut_budget -= below.0 - log.base.0;
                    out.push(Planned {
                        cut: Cut {
                            topic: log.topic.clone(),
                            author: log.author,
                            below,
                        },
                        rule: Some(i),
                    });
                }
                if cut_budget == 0 {
                    break;
                }
            }
            if budget == 0 || cut_budget == 0 {
                break;
            }
        }
        Ok(DocPlan {
            cuts: out,
            want_snapshots,
        })
    }
}

/// What this node's own snapshots cover in one document topic: per author, the
/// highest seq whose changes (to every document of the topic) are in a snapshot this
/// node published. A log's events go only up to there.
pub type DocCover = HashMap<crate::AuthorId, Seq>;

/// What [`Policy::plan_docs`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocPlan {
    /// The cuts to make now.
    pub cuts: Vec<Planned>,
    /// Topics whose rule would cut past what this node's snapshots cover.
    pub want_snapshots: Vec<Topic>,
}

impl Policy {
    /// Whether a log may start over at `first`, a peer's base, when the peer pruned
    /// past this node's head (`sync::Config::may_restart`), `peer_head` being the
    /// peer's head seq and `now_ms` this node's clock. Only if a rule that prunes
    /// covers the topic (a document topic's logs are the daemon's to decide, on
    /// snapshots: see [`crate::snapshot`]), and the events left out, those below
    /// `first`, are ones this rule would not keep:
    /// - `max_events_per_log = n`: the newest `n` up to the peer's head all lie in the
    ///   peer's range (`first + n <= peer_head + 1`);
    /// - `max_age = a`: `first` itself is at most a quarter of `a` younger than the
    ///   cutoff, so what lies below it is (nearly) all older than the window. A peer
    ///   sending only a suffix of a log is refused, past that slack;
    /// - `max_bytes`: only a log that holds nothing here (`held`, the events of it this
    ///   node holds; `None`: unknown, taken as some). A topic's bytes cannot be told
    ///   from one log's seqs, and starting over drops what the log holds: a peer (or
    ///   one with a smaller limit) must not wipe a log this node's own limit keeps.
    ///
    /// A topic that no rule covers, or that a rule keeps, stays as it is (and behind).
    pub fn may_restart(
        &self,
        first: &crate::Event,
        peer_head: Seq,
        now_ms: u64,
        held: Option<u64>,
    ) -> bool {
        let Some((_, rule)) = self.rule_for(first.topic()) else {
            return false;
        };
        if rule.keep || matches!(first.body(), crate::Body::Doc { .. }) {
            return false;
        }
        let by_count = rule
            .max_events_per_log
            .is_some_and(|n| first.seq().0.saturating_add(n) <= peer_head.0.saturating_add(1));
        let by_age = rule.max_age.is_some_and(|a| {
            let a = u64::try_from(a.as_millis()).unwrap_or(u64::MAX);
            first.time().ms <= now_ms.saturating_sub(a).saturating_add(a / 4)
        });
        let by_bytes = rule.max_bytes.is_some() && held == Some(0);
        by_count || by_age || by_bytes
    }

    /// The lowest seq this policy keeps of a log of `topic` whose head is at `head`, by
    /// its `max_events_per_log` (what `max_age` keeps cannot be told from seqs; peers'
    /// bases bound it instead): where a node far behind starts pulling
    /// (`sync::Config::keeps_from`). `None` when the rule keeps the whole log or the
    /// log is shorter than the limit.
    pub fn keeps_from(&self, topic: &Topic, head: Seq) -> Option<Seq> {
        let (_, rule) = self.rule_for(topic)?;
        if rule.keep {
            return None;
        }
        let n = rule.max_events_per_log?;
        let from = head.0.saturating_add(1).checked_sub(n)?;
        (from > 0).then_some(Seq(from))
    }

    /// Whether the disk budget may prune `topic`: every topic but those a `keep` rule
    /// covers (and document topics, which the caller skips).
    pub fn budget_may_prune(&self, topic: &Topic) -> bool {
        !crate::fleet::is_reserved(topic) && self.rule_for(topic).is_none_or(|(_, r)| !r.keep)
    }

    /// The cuts that free about `events` events when the store is over its disk
    /// budget: the oldest events first (by arrival), of topics the budget may prune,
    /// never a log's head, at most [`CUT_BUDGET`] events and [`SCAN_BUDGET`] arrivals
    /// read.
    pub fn plan_budget<S: ReadStore>(
        &self,
        logs: &[LogSummary],
        events: u64,
        store: &S,
    ) -> Result<Vec<Planned>, S::Error> {
        let heads: std::collections::HashMap<(&Topic, &crate::AuthorId), (Seq, Seq)> = logs
            .iter()
            .map(|l| ((&l.topic, &l.author), (l.base, l.head.seq)))
            .collect();
        let mut doc_topics: std::collections::HashMap<Topic, bool> =
            std::collections::HashMap::new();
        let mut cuts: std::collections::BTreeMap<(Topic, crate::AuthorId), Seq> =
            std::collections::BTreeMap::new();
        let want = events.min(CUT_BUDGET);
        let (mut found, mut scanned) = (0u64, 0usize);
        let mut from = crate::Offset(0);
        while found < want && scanned < SCAN_BUDGET {
            let page = store.arrivals(from, None, WINDOW, WINDOW)?;
            if page.events.is_empty() {
                break;
            }
            scanned += page.events.len();
            from = page.next;
            for (_, ev) in page.events {
                let topic = ev.topic();
                if !self.budget_may_prune(topic) {
                    continue;
                }
                let is_doc = match doc_topics.get(topic) {
                    Some(d) => *d,
                    None => {
                        let d = !store.docs_of(topic, 1)?.is_empty();
                        doc_topics.insert(topic.clone(), d);
                        d
                    }
                };
                let author = ev.author();
                let Some((_, head)) = heads.get(&(topic, &author)) else {
                    continue;
                };
                if is_doc || ev.seq() >= *head {
                    continue;
                }
                cuts.insert((topic.clone(), author), Seq(ev.seq().0 + 1));
                found += 1;
                if found >= want {
                    break;
                }
            }
        }
        Ok(cuts
            .into_iter()
            .filter(|((t, a), below)| heads.get(&(t, a)).is_some_and(|(base, _)| below > base))
            .map(|((topic, author), below)| Planned {
                cut: Cut {
                    topic,
                    author,
                    below,
                },
                rule: None,
            })
            .collect())
    }
}

/// Moves `cuts` (one per log of `group`, one topic's logs) up so that at least `over`
/// bytes of the topic's oldest events go, oldest first by event time across the logs,
/// never a head, reading at most `budget` events from the logs' bases (fewer freed
/// when the budget ends first: the next pass goes on). Events below a cut already made
/// (by count or age) count as freed. Returns the events read.
fn free_oldest<S: ReadStore>(
    store: &S,
    group: &[&LogSummary],
    over: u64,
    budget: usize,
    cuts: &mut [Seq],
) -> Result<usize, S::Error> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, VecDeque};
    // Per log, what the merge needs of each event read (seq, time, size), not the
    // event: a window is read at a time, then dropped.
    type Seen = (Seq, crate::Timestamp, u64);
    let window = (WINDOW / group.len().max(1)).max(16);
    let mut next: Vec<Seq> = group.iter().map(|l| l.base).collect();
    let mut bufs: Vec<VecDeque<Seen>> = vec![VecDeque::new(); group.len()];
    let mut heap = BinaryHeap::new();
    let mut read = 0usize;
    // Refills log `i`'s buffer (below its head only) and queues its oldest event.
    let mut refill = |i: usize,
                      bufs: &mut Vec<VecDeque<Seen>>,
                      heap: &mut BinaryHeap<Reverse<(crate::Timestamp, usize)>>,
                      read: &mut usize|
     -> Result<(), S::Error> {
        if bufs[i].is_empty() && *read < budget && next[i] < group[i].head.seq {
            let limit = window.min(budget - *read);
            let got = store.log_range(&group[i].author, &group[i].topic, next[i], limit)?;
            *read += got.len();
            for ev in got {
                if ev.seq() >= group[i].head.seq {
                    break;
                }
                next[i] = Seq(ev.seq().0 + 1);
                bufs[i].push_back((ev.seq(), ev.time(), ev.bytes().len() as u64));
            }
        }
        if let Some((_, time, _)) = bufs[i].front() {
            heap.push(Reverse((*time, i)));
        }
        Ok(())
    };
    for i in 0..group.len() {
        refill(i, &mut bufs, &mut heap, &mut read)?;
    }
    let mut freed = 0u64;
    while freed < over {
        let Some(Reverse((_, i))) = heap.pop() else {
            break;
        };
        let Some((seq, _, size)) = bufs[i].pop_front() else {
            continue;
        };
        freed += size;
        cuts[i] = cuts[i].max(Seq(seq.0 + 1));
        refill(i, &mut bufs, &mut heap, &mut read)?;
    }
    Ok(read)
}

/// The seq of `log`'s first event (from `from` on) with time at or after `cutoff`,
/// reading at most `budget` events (stopping early gives a smaller cut, never a wrong
/// one), and how many it read. A log's times rise with its seqs (the author's clock is
/// monotonic), so the first one found ends the search.
fn first_at_or_after<S: ReadStore>(
    store: &S,
    log: &LogSummary,
    from: Seq,
    cutoff: u64,
    budget: usize,
) -> Result<(Seq, usize), S::Error> {
    let mut at = from;
    let mut read = 0;
    while read < budget && at < log.head.seq {
        let window = store.log_range(&log.author, &log.topic, at, WINDOW.min(budget - read))?;
        if window.is_empty() {
            break;
        }
        read += window.len();
        match window.iter().find(|e| e.time().ms >= cutoff) {
            Some(e) => return Ok((e.seq(), read)),
            None => at = Seq(window[window.len() - 1].seq().0 + 1),
        }
    }
    Ok((at, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str) -> Rule {
        Rule {
            pattern: Pattern::new(p).unwrap(),
            max_age: None,
            max_events_per_log: None,
            max_bytes: None,
            keep: false,
        }
    }

    /// Heartbeats are kept latest-only with no rule configured, and no rule can keep
    /// more of them (nor touch the policy log).
    #[test]
    fn heartbeats_are_latest_only_whatever_the_rules_say() {
        let health = Topic::new(crate::health::HEALTH_TOPIC).unwrap();
        let policy_log = Topic::new(crate::fleet::POLICY_TOPIC).unwrap();
        for policy in [
            Policy::default(),
            Policy::new(vec![Rule {
                keep: true,
                ..rule("#")
            }])
            .unwrap(),
        ] {
            let (i, r) = policy.rule_for(&health).expect("a built-in rule");
            assert_eq!(i, BUILT_IN);
            assert_eq!(r.max_events_per_log, Some(1));
            assert!(!r.keep);
            assert!(policy.rule_for(&policy_log).is_none());
            assert_eq!(policy.keeps_from(&health, Seq(9)), Some(Seq(9)));
            assert!(!policy.budget_may_prune(&health));
        }
    }

    #[test]
    fn rules_are_checked() {
        assert!(
            Rule {
                max_events_per_log: Some(0),
                ..rule("a")
            }
            .check()
            .is_err()
        );
        assert!(rule("a").check().is_err(), "a rule with no limit");
        assert!(
            Rule {
                keep: true,
                max_age: Some(Duration::from_secs(1)),
                ..rule("a")
            }
            .check()
            .is_err()
        );
        assert!(
            Rule {
                keep: true,
                ..rule("a")
            }
            .check()
            .is_ok()
        );
    }
}
