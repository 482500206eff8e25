//! What a run measured, and its table.

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Events published.
    pub events: usize,
    /// Interested nodes.
    pub interested: usize,
    /// Over events: ms until 50% of interested nodes held it (p50 and p99 over events).
    pub t50_ms: (f64, f64),
    /// Over events: ms until 99% of interested nodes held it.
    pub t99_ms: (f64, f64),
    /// Over events: ms until every interested node held it.
    pub t100_ms: (f64, f64),
    /// Bytes received per event per interested node, push path.
    pub push_bytes_per_event: f64,
    /// Bytes received per event per interested node, sync path.
    pub sync_bytes_per_event: f64,
    /// Messages received per event per interested node, push path (runs, IHAVE, IWANT,
    /// IDONTWANT, Plumtree's control messages).
    pub push_msgs_per_event: f64,
    /// Messages received per event per interested node, sync path.
    pub sync_msgs_per_event: f64,
    /// Mean encoded event size (to compare the above with).
    pub event_bytes: f64,
    /// Push messages received that were already seen, per event per node.
    pub redundancy: f64,
    /// Most bytes queued towards one node at once (in flight on its links).
    pub peak_queued_bytes: u64,
    /// Time from the heal until every interested node held every event, ms.
    pub converged_after_heal_ms: Option<f64>,
    /// Every interested node holds every event at the end.
    pub complete: bool,
    /// Hash of every node's final state (version vectors): equal for equal seeds.
    pub state_hash: String,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Scheduler events processed.
    pub steps: u64,
    /// Forged events (bad signatures) that byzantine nodes published.
    pub forged: usize,
    /// Events that nodes returning without their store held before and got again.
    pub refetched: usize,
    /// Rendezvous lookups made (topic-aware discovery), per node.
    pub lookups_per_node: f64,
    /// Forks met at honest nodes' writes (each left a proof, or it is a violation).
    pub forks_met: u64,
    /// With cloned devices: honest interested nodes that hold a proof of every forked
    /// log at the end (the rest hold one side and have not heard of the fork yet).
    pub fork_proven_at: Option<usize>,
    /// Invariant violations seen at the writes of honest nodes during the run: an event
    /// stored that no honest author published, or a log head that went back.
    pub violations: u64,
    /// The first few violations, described.
    pub violation_examples: Vec<String>,
    /// What retention did, when the scenario has it.
    pub retention: Option<crate::RetentionReport>,
    /// What the fleet's permissions did, in a closed fleet.
    pub fleet: Option<crate::FleetReport>,
}

impl Report {
    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let heal = self
            .converged_after_heal_ms
            .map_or("n/a".to_string(), |ms| format!("{:.1} s", ms / 1000.0));
        format!(
            "| measurement | value |\n|---|---:|\n\
             | events published / interested nodes | {} / {} |\n\
             | time until 50% hold an event, p50 / p99 over events (ms) | {:.2} / {:.2} |\n\
             | time until 99% hold an event, p50 / p99 (ms) | {:.2} / {:.2} |\n\
             | time until 100% hold an event, p50 / p99 (ms) | {:.2} / {:.2} |\n\
             | bytes per event per node, push (event size {:.0} B) | {:.0} ({:.2}×) |\n\
             | bytes per event per node, sync | {:.0} |\n\
             | messages per event per node, push / sync | {:.2} / {:.3} |\n\
             | redundant push receipts per event per node | {:.2} |\n\
             | peak bytes in flight towards one node | {} |\n\
             | convergence after heal | {} |\n\
             | every interested node holds every event (with retention: its window) | {} |\n\
             | events got again after a lost store | {} |\n\
             | rendezvous lookups per node | {:.2} |\n\
             | forks met / nodes holding every fork proof at the end | {} / {} |\n\
             | forged events published / invariant violations | {} / {} |\n\
             | simulated time / scheduler steps | {:.0} s / {} |\n\
             | final state hash | {}… |\n",
            self.events,
            self.interested,
            self.t50_ms.0,
            self.t50_ms.1,
            self.t99_ms.0,
            self.t99_ms.1,
            self.t100_ms.0,
            self.t100_ms.1,
            self.event_bytes,
            self.push_bytes_per_event,
            self.push_bytes_per_event / self.event_bytes.max(1.0),
            self.sync_bytes_per_event,
            self.push_msgs_per_event,
            self.sync_msgs_per_event,
            self.redundancy,
            self.peak_queued_bytes,
            heal,
            self.complete,
            self.refetched,
            self.lookups_per_node,
            self.forks_met,
            self.fork_proven_at
                .map_or("n/a".to_string(), |n| format!("{n} of {}", self.interested)),
            self.forged,
            self.violations,
            self.simulated_s,
            self.steps,
            &self.state_hash[..16],
        ) + &self.retention.as_ref().map_or(String::new(), |r| {
            format!(
                "| retention: pruning nodes / archives | {} / {} |\n\
                 | events pruned, all nodes | {} |\n\
                 | events stored again below a node's own cut (goal 0) | {} |\n\
                 | events stored already outside the node's window | {} |\n\
                 | most events a pruning node held / its window | {} / {} |\n\
                 | most events a reset device held while catching up | {} |\n\
                 | every pruning node holds exactly its window at the end | {} |\n\
                 | archives holding every event at the end | {} of {} |\n",
                r.pruning_nodes,
                r.archives,
                r.pruned,
                r.refetched_pruned,
                r.stored_outside_window,
                r.peak_held.0,
                r.peak_held.1,
                r.peak_held_reset,
                r.converged_on_window,
                r.archives_complete,
                r.archives,
            )
        }) + &self.fleet.as_ref().map_or(String::new(), |f| {
            let s = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{t:.1} s"));
            let refused = f
                .refused
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "| fleet: revocation issued at | {:.1} s |\n\
                 | honest nodes that know of it at the end | {} of {} |\n\
                 | time until half / every honest node knew of it | {} / {} |\n\
                 | revoked author's events after its revocation / stored by nodes not yet knowing | {} / {} |\n\
                 | events of authors without the grant published / stored by honest nodes | {} / 0 (else a violation) |\n\
                 | refused by the permission check at honest nodes | {} |\n\
                 | links honest nodes dropped to peers no longer admitted | {} |\n",
                f.revoked_at_s,
                f.knew,
                f.honest,
                s(f.knew_after_s.0),
                s(f.knew_after_s.1),
                f.published_after,
                f.stored_unknowing,
                f.unprivileged_published,
                if refused.is_empty() { "none".into() } else { refused },
                f.links_dropped,
            )
        })
    }
}
