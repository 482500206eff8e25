//! Plumtree, the experimental push: batched lazy announcements and grafts.

use super::*;

impl Sim {
    /// Plumtree: one batch of ids to every lazy neighbour (not on a tree link).
    pub(crate) fn lazy_flush(&mut self, i: usize) {
        if !self.nodes[i].online || self.nodes[i].announce.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.nodes[i].announce);
        let lazy: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|p| !self.nodes[i].mesh.contains(p))
            .collect();
        for p in lazy {
            self.send(i, p, Msg::IHave(ids.clone()));
        }
    }

    /// Plumtree: an announced message has not arrived; graft the next announcer's link
    /// and ask it for the message, and try the one after if that fails too.
    pub(crate) fn graft_timer(&mut self, node: usize, id: MsgId) {
        if self.nodes[node].seen.contains(&id) {
            self.nodes[node].announced.remove(&id);
            return;
        }
        let Some(peer) = self.nodes[node]
            .announced
            .get_mut(&id)
            .and_then(VecDeque::pop_front)
        else {
            self.nodes[node].announced.remove(&id);
            return;
        };
        self.nodes[node].mesh.insert(peer);
        self.send(node, peer, Msg::Graft(vec![id]));
        let t = self.now + self.sc.graft_ms * 1000;
        self.at(t, Ev::GraftTimer { node, id });
    }
}
