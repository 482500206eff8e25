//! Faults beyond the network's: churn (nodes leave and return, with or without their
//! store), cloned device keys, swizzle-clog. Partitions and link faults are in
//! `network`; the byzantine forgers publish in `replication`.

use super::*;

impl Sim {
    /// One second of churn: `churn_per_min` of the fleet leaves, each for
    /// `churn_offline_s`; a fraction `churn_wipe` of them will return without its store.
    pub(crate) fn churn_step(&mut self) {
        let per_s = self.sc.churn_per_min / 60.0 * self.sc.nodes as f64;
        let mut k = per_s.floor() as usize;
        if self.rng.random_range(0.0..1.0) < per_s.fract() {
            k += 1;
        }
        for _ in 0..k {
            let i = self
                .rng
                .random_range(self.sc.publishers..self.sc.nodes.max(self.sc.publishers + 1));
            if i < self.sc.nodes && self.nodes[i].online && !self.nodes[i].byzantine() {
                self.nodes[i].online = false;
                let back = self.now + (self.sc.churn_offline_s * US as f64) as u64;
                // (No draw without wipes, so runs without them stay as they were.)
                let wiped = self.sc.churn_wipe > 0.0
                    && self.rng.random_range(0.0..1.0) < self.sc.churn_wipe;
                self.at(back, Ev::Rejoin { node: i, wiped });
            }
        }
        // Churn stops with publishing, so the settle phase shows the fleet heal.
        if (self.now as f64) < self.sc.publish_s * US as f64 {
            self.at(self.now + US, Ev::ChurnStep);
        }
    }

    /// A churned node returns, as a reset device if `wiped`.
    pub(crate) fn rejoin(&mut self, i: usize, wiped: bool) {
        if wiped {
            self.wipe(i);
        }
        self.nodes[i].online = true;
        // Its machine meets its neighbours again at its next tick, and rounds with each
        // as it connects.
    }

    /// Node `i` comes back without its store (a reset or replaced device): an empty
    /// store and a fresh sync machine; what it held must come again.
    pub(crate) fn wipe(&mut self, i: usize) {
        // A pruning node must get back its window, not what it held (checked at the
        // end instead).
        let held: Vec<EventId> = if self.nodes[i].policy.is_some() {
            Vec::new()
        } else {
            self.published
                .keys()
                .copied()
                .filter(|id| matches!(self.nodes[i].store.event(id), Ok(Some(_))))
                .collect()
        };
        self.lost_total += held.len();
        let own = self.nodes[i].author.as_ref().map(|(k, _, _)| k.author());
        let node = &mut self.nodes[i];
        node.lost.extend(held);
        node.store = MemoryStore::new();
        node.reset = true;
        node.cut_below.clear();
        node.machine = Replicator::new(
            replication::machine_config(
                &self.sc,
                node.interested,
                &self.topic,
                &self.verifier,
                node.policy.as_ref().map(|p| (p, own, &self.wall)),
                node.fleet.as_ref(),
            ),
            None,
        );
        let outs = node.machine.start(&node.store);
        node.banned.clear();
        node.seen.clear();
        node.mcache.clear();
        node.has.clear();
        node.announce.clear();
        node.announced.clear();
        node.heads.clear();
        self.outputs(i, outs);
    }

    /// Cloned devices get a copy of their publisher's key and head, and start
    /// publishing: the log forks at the next seq.
    pub(crate) fn clone_keys(&mut self) {
        for c in 0..self.nodes.len() {
            let Some(src) = self.nodes[c].clone_of else {
                continue;
            };
            let head = self.nodes[src].author.as_ref().and_then(|a| a.2.clone());
            let key = author_key(src, self.sc.seed);
            let seq = head.as_ref().map_or(0, |h| h.seq().0 + 1);
            self.fork_at.push((key.author(), seq));
            self.nodes[c].author = Some((key, Clock::default(), head));
            self.at(self.now, Ev::Publish(c));
        }
    }

    /// Swizzle-clog: cut the next node of the order, or restore a random cut one (the
    /// last restore is the "heal").
    pub(crate) fn swizzle(&mut self, cut: bool) {
        if cut {
            if let Some(&i) = self.swizzle_order.get(self.swizzle_cut.len()) {
                self.nodes[i].cut = true;
                self.swizzle_cut.push(i);
            }
        } else if !self.swizzle_cut.is_empty() {
            let k = self.rng.random_range(0..self.swizzle_cut.len());
            let i = self.swizzle_cut.swap_remove(k);
            self.nodes[i].cut = false;
            if self.swizzle_cut.is_empty() {
                self.heal_at = Some(self.now);
            }
        }
    }
}
