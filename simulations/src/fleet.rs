//! A closed fleet: each node runs the daemon's permission check (`core::fleet`) in its
//! own replication machine (`sync::Config::permit`, asked of gossip and sync alike),
//! replicates the policy log (`$fleet/policy`) with the real machine, applies entries
//! as they are stored (as the daemon's writer does), and on a change drops the peers
//! that no longer stand (`Replicator::policy_changed`, the daemon's call). The
//! simulator only decides who is hostile and checks, at every write of an honest node:
//! - no event of an author without the grant is stored;
//! - no event timed at or after a revocation is stored by a node that knew of it;
//!
//! and measures how long the revocation takes to reach every node.

use std::sync::RwLock;

use murmur_core::fleet::{Applied, Fleet, Rule};
use murmur_core::testing;

use super::*;

/// The fleet's side of the simulation.
pub(crate) struct FleetSim {
    pub(crate) root: Keypair,
    pub(crate) policy: Topic,
    /// The revoked node, and its author id.
    pub(crate) revoked: (usize, AuthorId),
    /// Authors without a grant.
    pub(crate) unprivileged: BTreeSet<AuthorId>,
    /// Each node's author id, if it has a key.
    pub(crate) authors: Vec<Option<AuthorId>>,
    /// The revocation's effective time (ms), once issued, and when it was issued (µs).
    pub(crate) revoked_from: Option<(u64, u64)>,
    /// Events of the revoked author timed at or after the revocation.
    pub(crate) after: BTreeSet<EventId>,
    pub(crate) report: FleetReport,
}

/// What the fleet's permissions did over the run (see [`crate::Report::fleet`]).
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    /// Honest nodes.
    pub honest: usize,
    /// When the revocation was issued, s.
    pub revoked_at_s: f64,
    /// Honest nodes that knew of it at the end.
    pub knew: usize,
    /// Seconds from the revocation until half, and until every honest node knew of it
    /// (`None`: some never did).
    pub knew_after_s: (Option<f64>, Option<f64>),
    /// Events the revoked author published at or after its revocation.
    pub published_after: u64,
    /// Stores of those at honest nodes that did not know yet (allowed: the node learns
    /// later; purging them is not built).
    pub stored_unknowing: u64,
    /// Events the authors without a grant published.
    pub unprivileged_published: u64,
    /// Events refused by the permission check, by reason, at honest nodes.
    pub refused: BTreeMap<&'static str, u64>,
    /// Links honest nodes dropped to a peer the policy no longer admits.
    pub links_dropped: u64,
}

impl FleetSim {
    /// The fleet for `sc`: the root, every author's certificate, the grant, and the
    /// policy every node starts with (as if the log had replicated before the run).
    pub(crate) fn new(
        sc: &Scenario,
        topic: &Topic,
        keys: &[Option<Keypair>],
    ) -> anyhow::Result<(FleetSim, Fleet)> {
        let f = sc
            .fleet
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no fleet"))?;
        let n = sc.nodes;
        anyhow::ensure!(
            f.unprivileged + 1 + sc.publishers <= n,
            "fleet: more authors than nodes"
        );
        let mut seed = [0xF1u8; 32];
        seed[..8].copy_from_slice(&sc.seed.to_le_bytes());
        let root = Keypair::from_seed(&seed);
        let mut fleet = Fleet::new(root.author(), 60_000);
        let t0 = retention::wall_ms(0);
        let authors: Vec<Option<AuthorId>> = keys
            .iter()
            .map(|k| k.as_ref().map(Keypair::author))
            .collect();
        let unprivileged: BTreeSet<AuthorId> = (n - 1 - f.unprivileged..n - 1)
            .filter_map(|i| authors[i])
            .collect();
        for a in authors.iter().flatten() {
            let role = if unprivileged.contains(a) {
                "reader"
            } else {
                "writer"
            };
            let (from, to) = (t0 - 1_000, t0 + 365 * 86_400_000);
            let cert = testing::member_cert(&root, *a, &[role], from, to);
            fleet.apply(murmur_core::fleet::Entry::Member(cert))?;
        }
        fleet.apply(testing::root_rule(
            &root,
            testing::grant("writer", &[topic.as_str()], false),
            t0 - 1_000,
        ))?;
        let revoked =
            authors[n - 1].ok_or_else(|| anyhow::anyhow!("fleet: the last node has no key"))?;
        Ok((
            FleetSim {
                root,
                policy: Topic::new(murmur_core::fleet::POLICY_TOPIC)?,
                revoked: (n - 1, revoked),
                unprivileged,
                authors,
                revoked_from: None,
                after: BTreeSet::new(),
                report: FleetReport::default(),
            },
            fleet,
        ))
    }
}

/// A node's permission check, on its own copy of the policy.
pub(crate) fn permit(fleet: &Arc<RwLock<Fleet>>) -> sync::PermitCheck {
    let f = fleet.clone();
    sync::PermitCheck(Arc::new(move |evs: &[Event]| {
        f.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first_refused(evs)
    }))
}

impl Sim {
    /// Node 0 revokes the last node: a policy event, stored and pushed like any.
    pub(crate) fn revoke(&mut self) -> anyhow::Result<()> {
        let now_ms = retention::wall_ms(self.now);
        let Some(fs) = self.fleet.as_mut() else {
            return Ok(());
        };
        fs.revoked_from = Some((now_ms, self.now));
        fs.report.revoked_at_s = self.now as f64 / US as f64;
        let revoke = Rule::Revoke {
            subject: fs.revoked.1,
            reason: "stolen".into(),
            effective_ms: now_ms,
        };
        let entry = testing::root_rule(&fs.root, revoke, now_ms);
        let Some((key, clock, _)) = self.nodes[0].author.as_mut() else {
            anyhow::bail!("fleet: node 0 has no key");
        };
        let ev = Event::sign(
            &Draft {
                topic: fs.policy.clone(),
                seq: Seq(0),
                prev: None,
                time: clock.tick(now_ms),
                body: entry.payload(),
            },
            key,
        )?;
        self.store(0, std::slice::from_ref(&ev));
        self.push_own(0, ev);
        Ok(())
    }

    /// Policy entries among what node `i` just stored: applied to its policy (not by
    /// a hostile node: it ignores its revocation); on a change, the machine drops the
    /// peers that no longer stand and runs a round with the others.
    pub(crate) fn observe_policy(&mut self, i: usize, stored: &[&Event]) {
        if self.nodes[i].byzantine() {
            return;
        }
        let (Some(policy), Some(fleet)) = (
            self.fleet.as_ref().map(|f| f.policy.clone()),
            self.nodes[i].fleet.clone(),
        ) else {
            return;
        };
        let mut changed = false;
        for ev in stored.iter().filter(|e| *e.topic() == policy) {
            let applied = fleet
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .apply_event(ev);
            match applied {
                Ok(Applied::Nothing) => {}
                Ok(a) => {
                    changed = true;
                    if a == Applied::Revoke && self.nodes[i].knew_at.is_none() {
                        self.nodes[i].knew_at = Some(self.now);
                    }
                }
                Err(e) => self.violation(format!("node {i}: a policy entry did not apply: {e}")),
            }
        }
        if !changed {
            return;
        }
        let now_ms = retention::wall_ms(self.now);
        let authors = self
            .fleet
            .as_ref()
            .map(|f| f.authors.clone())
            .unwrap_or_default();
        let f = fleet
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let stands = |peer: &usize| match authors.get(*peer).copied().flatten() {
            Some(a) => f.still_admitted(&a, now_ms),
            None => Ok(()),
        };
        let now = self.instant();
        let n = &mut self.nodes[i];
        let outs = n.machine.policy_changed(true, stands, now, &n.store);
        self.outputs(i, outs);
    }

    /// The fleet's invariants at a write of an honest node `i` (data events only).
    pub(crate) fn check_permitted(&mut self, i: usize, ev: &Event) {
        let Some(fs) = self.fleet.as_mut() else {
            return;
        };
        if fs.unprivileged.contains(&ev.author()) {
            let msg = format!(
                "node {i} stored event seq {} of an author without the grant",
                ev.seq().0
            );
            self.violation(msg);
        } else if fs.after.contains(&ev.id()) {
            if self.nodes[i].knew_at.is_some() {
                let msg = format!(
                    "node {i} stored event seq {} timed after a revocation it knew of",
                    ev.seq().0
                );
                self.violation(msg);
            } else {
                fs.report.stored_unknowing += 1;
            }
        }
    }

    /// Whether `ev` (published by node `p`) is one the fleet's honest nodes must hold:
    /// not from an author without the grant, not timed after its author's revocation.
    pub(crate) fn fleet_counts(&mut self, ev: &Event) -> bool {
        let Some(fs) = self.fleet.as_mut() else {
            return true;
        };
        if fs.unprivileged.contains(&ev.author()) {
            fs.report.unprivileged_published += 1;
            return false;
        }
        if ev.author() == fs.revoked.1 && fs.revoked_from.is_some_and(|(ms, _)| ev.time().ms >= ms)
        {
            fs.after.insert(ev.id());
            fs.report.published_after += 1;
            return false;
        }
        true
    }

    /// A refusal by node `i`'s permission check.
    pub(crate) fn refused(&mut self, i: usize, reason: &murmur_core::fleet::Refusal) {
        if self.nodes[i].byzantine() {
            return;
        }
        if let Some(fs) = self.fleet.as_mut() {
            *fs.report.refused.entry(reason.reason()).or_default() += 1;
        }
    }

    /// Honest node `i` dropped a link because the policy no longer admits the peer.
    pub(crate) fn link_dropped(&mut self, i: usize, reason: &str) {
        if !self.nodes[i].byzantine()
            && matches!(reason, "revoked" | "expired" | "not_a_member")
            && let Some(fs) = self.fleet.as_mut()
        {
            fs.report.links_dropped += 1;
        }
    }

    /// The fleet's report at the end.
    pub(crate) fn fleet_report(&self) -> Option<FleetReport> {
        let fs = self.fleet.as_ref()?;
        let mut r = fs.report.clone();
        let honest: Vec<&Node> = self.nodes.iter().filter(|n| !n.byzantine()).collect();
        r.honest = honest.len();
        r.knew = honest.iter().filter(|n| n.knew_at.is_some()).count();
        if let Some((_, at)) = fs.revoked_from {
            let mut t: Vec<f64> = honest
                .iter()
                .filter_map(|n| n.knew_at)
                .map(|k| (k - at) as f64 / US as f64)
                .collect();
            t.sort_by(f64::total_cmp);
            let half = t.get(honest.len().div_ceil(2).saturating_sub(1)).copied();
            let all = (t.len() == honest.len())
                .then(|| t.last().copied())
                .flatten();
            r.knew_after_s = (half, all);
        }
        Some(r)
    }
}
