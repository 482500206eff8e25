//! Live push as gossipsub's mesh: forwarding a stored run, the heartbeat (mesh repair,
//! IHAVE), the message cache, GRAFT and PRUNE as symmetric link changes.

use super::*;

impl Sim {
    pub(crate) fn remember(&mut self, i: usize, id: MsgId) {
        let m = &mut self.nodes[i].mcache;
        if m.is_empty() {
            m.push_back(Vec::new());
        }
        if let Some(w) = m.back_mut() {
            w.push(id);
        }
    }

    /// A received run, after `validate_ms`: the node's replication machine checks,
    /// verifies and stores it, holds what lies past a gap, and gives the verdict.
    pub(crate) fn validated(&mut self, node: usize, from: usize, id: MsgId, run: Arc<Vec<u8>>) {
        // The channel of the run's topic: the one topic's, or the fleet's policy log's
        // (every node of a closed fleet is on both).
        let channel = match murmur_core::run::header(&run) {
            Ok(h) if murmur_core::fleet::is_reserved(&h.topic) => Pattern::new(h.topic.as_str())
                .map(|p| murmur_core::channel::name(&p))
                .unwrap_or_else(|_| self.channel.clone()),
            _ => self.channel.clone(),
        };
        let n = &mut self.nodes[node];
        let outs = n.machine.gossiped(
            vec![Gossip {
                from,
                id,
                channel,
                data: run.to_vec(),
            }],
            &n.store,
        );
        self.outputs(node, outs);
    }

    /// gossipsub on `Accept`: the node keeps the message in its cache and forwards it to
    /// its mesh (after `hold_ms`).
    pub(crate) fn accepted(&mut self, node: usize, from: usize, id: MsgId) {
        self.remember(node, id);
        if self.sc.push == Push::Plumtree {
            self.nodes[node].announce.push(id);
        }
        let hold = (self.sc.hold_ms * 1000.0) as u64;
        if hold == 0 {
            self.forward(node, from, id);
        } else {
            self.at(self.now + hold, Ev::Forward { node, from, id });
        }
    }

    /// Sends a held run to the mesh peers that do not have it.
    pub(crate) fn forward(&mut self, node: usize, from: usize, id: MsgId) {
        if let Some(run) = self.runs.get(&id).cloned() {
            let msg = Msg::Push { id, run };
            let skip = self.nodes[node].has.get(&id).cloned().unwrap_or_default();
            for peer in self.nodes[node].mesh.clone() {
                if peer != from && !skip.contains(&peer) {
                    self.send(node, peer, msg.clone());
                }
            }
        }
    }

    /// The run behind a message id, if node `i` still caches it (message ids are
    /// content hashes, so one table serves every node).
    pub(crate) fn cached_run(&self, i: usize, id: &MsgId) -> Option<Arc<Vec<u8>>> {
        if !self.nodes[i].mcache.iter().any(|w| w.contains(id)) {
            return None;
        }
        self.runs.get(id).cloned()
    }

    pub(crate) fn heartbeat(&mut self, i: usize) {
        if !self.nodes[i].online {
            return;
        }
        if self.sc.push == Push::Plumtree {
            self.rotate_cache(i);
            return;
        }
        // Mesh repair: drop unreachable peers, top up from neighbours, trim the excess.
        // Both ends of a mesh link change together (GRAFT and PRUNE are not sent as
        // messages: they are rare and small).
        let reachable = self.reachable(i);
        let gone: Vec<usize> = self.nodes[i]
            .mesh
            .iter()
            .copied()
            .filter(|p| !reachable.contains(p))
            .collect();
        for p in gone {
            self.prune(i, p);
        }
        if self.nodes[i].mesh.len() < self.sc.mesh_lo {
            self.graft(i);
        }
        while self.nodes[i].mesh.len() > self.sc.mesh_hi {
            let k = self.rng.random_range(0..self.nodes[i].mesh.len());
            if let Some(p) = self.nodes[i].mesh.iter().nth(k).copied() {
                self.prune(i, p);
            }
        }
        // IHAVE: the last `history` windows, to `lazy` non-mesh neighbours.
        let mut ids: Vec<MsgId> = self.nodes[i].mcache.iter().flatten().copied().collect();
        // At most `ihave_ids` per IHAVE; gossipsub takes a random subset, modelled here
        // as the newest (deterministic).
        if ids.len() > self.sc.ihave_ids {
            ids.drain(..ids.len() - self.sc.ihave_ids);
        }
        if !ids.is_empty() {
            let mut pool: Vec<usize> = reachable
                .into_iter()
                .filter(|&p| self.nodes[p].interested && !self.nodes[i].mesh.contains(&p))
                .collect();
            for _ in 0..self.sc.lazy.min(pool.len()) {
                let k = self.rng.random_range(0..pool.len());
                let p = pool.swap_remove(k);
                self.send(i, p, Msg::IHave(ids.clone()));
            }
        }
        self.rotate_cache(i);
    }

    /// Starts a new message cache window and forgets what fell out of the last one.
    pub(crate) fn rotate_cache(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.mcache.push_back(Vec::new());
        while node.mcache.len() > self.sc.history {
            node.mcache.pop_front();
        }
        let recent: BTreeSet<MsgId> = node.mcache.iter().flatten().copied().collect();
        node.has.retain(|id, _| recent.contains(id));
    }

    /// Grafts reachable neighbours with room (under `mesh_hi`) into node `i`'s mesh,
    /// up to `mesh_n`; both ends add the link.
    pub(crate) fn graft(&mut self, i: usize) {
        // A topic's mesh is made of nodes subscribed to it.
        if !self.nodes[i].interested {
            return;
        }
        let mut pool: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|&p| {
                self.connected(i, p)
                    && self.nodes[p].interested
                    && !self.nodes[i].mesh.contains(&p)
                    && self.nodes[p].mesh.len() < self.sc.mesh_hi
            })
            .collect();
        while self.nodes[i].mesh.len() < self.sc.mesh_n && !pool.is_empty() {
            let k = self.rng.random_range(0..pool.len());
            let p = pool.swap_remove(k);
            self.nodes[i].mesh.insert(p);
            self.nodes[p].mesh.insert(i);
        }
    }

    /// Removes the mesh link between `i` and `p`, at both ends.
    pub(crate) fn prune(&mut self, i: usize, p: usize) {
        self.nodes[i].mesh.remove(&p);
        self.nodes[p].mesh.remove(&i);
    }
}
