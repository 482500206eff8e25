//! The replication state reported to operators: per topic and peer, who lacks what.

use super::*;

/// Most (topic, peer) views kept for the replication status.
const REMOTE_VIEWS_MAX: usize = 4096;

/// What a peer showed of a topic in its last round with us.
#[derive(Debug, Clone)]
pub(super) enum RemoteView {
    /// Its version vector (the digests differed).
    Vector(VersionVector),
    /// Same digest as ours at that time.
    InSync,
}

/// Events `theirs` holds beyond `ours` (sum over authors, saturating).
fn lag(ours: &VersionVector, theirs: &VersionVector) -> u64 {
    ours.lacking(theirs)
}

impl Replicator {
    /// Notes what a peer shows of a topic in a round, and how many events it held
    /// that we lacked as the round began (the `murmur_replication_lag_events` gauge).
    pub(super) fn observe(&mut self, peer: PeerId, msg: &proto::Message, now: Instant) {
        let Some(topic) = msg.topic() else { return };
        let (view, behind) = match msg {
            proto::Message::Vector { vv, .. } => {
                let behind = self.store.version_vector(topic).ok();
                let behind = behind.map(|ours| lag(&ours, vv));
                (RemoteView::Vector(vv.clone()), behind)
            }
            proto::Message::InSync { .. } => (RemoteView::InSync, Some(0)),
            // The peer opened a round holding what we hold: nothing to pull.
            proto::Message::Hello { digest, .. } => match self.store.version_vector(topic) {
                Ok(ours) if ours.digest() == *digest => (RemoteView::InSync, Some(0)),
                _ => return,
            },
            _ => return,
        };
        if self.remote.len() >= REMOTE_VIEWS_MAX
            && !self.remote.contains_key(&(topic.clone(), peer))
        {
            // Full: make room by forgetting the oldest view of a peer that is gone, so
            // peers met later are still reported (and get lag series).
            let gone = self
                .remote
                .iter()
                .filter(|((_, p), _)| !self.machine.peers().contains(p))
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            match gone {
                Some(k) => {
                    self.remote.remove(&k);
                }
                None => return,
            }
        }
        self.remote.insert((topic.clone(), peer), (now, view));
        // Only connected peers have series: `forget_lag` removes them on disconnect.
        if let Some(behind) = behind
            && self.machine.peers().contains(&peer)
        {
            self.metrics
                .set_lag(topic.as_str(), &peer.to_string(), behind);
        }
    }
    /// Removes the lag series of a peer that disconnected (each series has an entry in
    /// `remote`, which is bounded).
    pub(super) fn forget_lag(&self, peer: &PeerId) {
        let name = peer.to_string();
        for (topic, _) in self.remote.keys().filter(|(_, p)| p == peer) {
            self.metrics.forget_lag(topic.as_str(), &name);
        }
    }
    /// Per topic and peer: events they showed that we lack, and that we hold beyond them.
    pub(super) fn status(&self, now: Instant) -> crate::api::ReplicationJson {
        let mut topics: BTreeMap<Topic, Vec<crate::api::PeerLagJson>> = BTreeMap::new();
        for ((topic, peer), (at, view)) in &self.remote {
            let Ok(ours) = self.store.version_vector(topic) else {
                continue;
            };
            let (behind, ahead) = match view {
                RemoteView::InSync => (0, 0),
                RemoteView::Vector(theirs) => (lag(&ours, theirs), lag(theirs, &ours)),
            };
            topics
                .entry(topic.clone())
                .or_default()
                .push(crate::api::PeerLagJson {
                    peer: peer.to_string(),
                    connected: self.machine.peers().contains(peer),
                    behind,
                    ahead,
                    seen_secs_ago: now.duration_since(*at).as_secs(),
                    stalled_secs: self.machine.stalled(peer, topic, now).map(|d| d.as_secs()),
                });
        }
        crate::api::ReplicationJson {
            peers: self.machine.peers().len() as u64,
            sync_sessions: self.machine.sessions() as u64,
            held_out_of_order: self.machine.held() as u64,
            channels: self
                .machine
                .joined()
                .iter()
                .map(murmur_core::channel::name)
                .collect(),
            topics: topics
                .into_iter()
                .map(|(topic, peers)| crate::api::TopicLagJson {
                    topic: topic.to_string(),
                    peers,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_core::{EventId, Seq, vv::Entry};

    #[test]
    fn lag_counts_the_events_one_side_lacks() {
        let a = AuthorId([1; 32]);
        let b = AuthorId([2; 32]);
        let e = |seq: u64| Entry {
            seq: Seq(seq),
            id: EventId([seq as u8; 32]),
        };
        let mut ours = VersionVector::new();
        ours.insert(a, e(9)); // 10 events
        let mut theirs = VersionVector::new();
        theirs.insert(a, e(14)); // 15 events: we lack 5
        theirs.insert(b, e(2)); // 3 events of an author we do not have
        assert_eq!(lag(&ours, &theirs), 5 + 3);
        assert_eq!(lag(&theirs, &ours), 0);
        assert_eq!(lag(&ours, &ours), 0);
    }

    #[test]
    fn lag_saturates_on_a_vector_claiming_huge_seqs() {
        let e = Entry {
            seq: Seq(u64::MAX),
            id: EventId([0; 32]),
        };
        let mut theirs = VersionVector::new();
        theirs.insert(AuthorId([1; 32]), e);
        theirs.insert(AuthorId([2; 32]), e);
        assert_eq!(lag(&VersionVector::new(), &theirs), u64::MAX);
    }
}
