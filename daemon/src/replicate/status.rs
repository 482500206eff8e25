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

/// Events `theirs` holds beyond `ours` (sum over authors).
fn lag(ours: &VersionVector, theirs: &VersionVector) -> u64 {
    ours.wants_from(theirs)
        .iter()
        .map(|w| w.to.0 + 1 - w.from.0)
        .sum()
}

impl Replicator {
    /// Notes what a peer shows of a topic in a round.
    pub(super) fn observe(&mut self, peer: PeerId, msg: &proto::Message, now: Instant) {
        let view = match msg {
            proto::Message::Vector { vv, .. } => RemoteView::Vector(vv.clone()),
            proto::Message::InSync { .. } => RemoteView::InSync,
            _ => return,
        };
        let Some(topic) = msg.topic() else { return };
        if self.remote.len() >= REMOTE_VIEWS_MAX
            && !self.remote.contains_key(&(topic.clone(), peer))
        {
            return;
        }
        self.remote.insert((topic.clone(), peer), (now, view));
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
                    connected: self.peers.contains(peer),
                    behind,
                    ahead,
                    seen_secs_ago: now.duration_since(*at).as_secs(),
                });
        }
        crate::api::ReplicationJson {
            peers: self.peers.len() as u64,
            sync_sessions: self.sync.sessions() as u64,
            held_out_of_order: self.pending.len as u64,
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
    use murmur_core::{EventId, vv::Entry};

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
}
