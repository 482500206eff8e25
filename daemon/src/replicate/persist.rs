//! What a node keeps across restarts: peers it met, and interest set at runtime.

use super::*;

impl Replicator {
    /// Remembers where `peer` listens (bounded: [`KNOWN_PEERS_MAX`] peers, 8 addresses
    /// each); written to the peers file at the next tick.
    pub(super) fn remember(&mut self, peer: PeerId, mut addrs: Vec<murmur_p2p::Multiaddr>) {
        addrs.truncate(8);
        if self.known.get(&peer) == Some(&addrs) {
            return;
        }
        if !self.known.contains_key(&peer) && self.known.len() >= KNOWN_PEERS_MAX {
            return;
        }
        self.known.insert(peer, addrs);
        self.known_dirty = true;
    }
    /// Writes the known peers atomically (temp file + rename), one dialable address per
    /// line.
    pub(super) fn save_known(&mut self) {
        if !self.known_dirty {
            return;
        }
        self.known_dirty = false;
        let mut text =
            String::from("# peers this node has met; dialed at start (murmur writes this file)\n");
        for (peer, addrs) in &self.known {
            for a in addrs {
                text.push_str(&format!("{a}/p2p/{peer}\n"));
            }
        }
        let tmp = self.config.peers_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.config.peers_file));
        if let Err(e) = r {
            tracing::warn!(error = %e, file = %self.config.peers_file.display(), "cannot save known peers");
        }
    }
    pub(super) fn change_interest(
        &mut self,
        add: Option<Pattern>,
        remove: Option<Pattern>,
        now: Instant,
    ) {
        // A read (neither add nor remove) changes nothing: no file write, no log. The
        // file pins the interest over the config's p2p.topics, so writing it on a read
        // would silently freeze later config edits.
        let before = self.config.topics.len();
        let mut added = false;
        if let Some(p) = remove {
            self.config.topics.retain(|t| *t != p);
            let gone: Vec<Topic> = self
                .subscribed
                .iter()
                .filter(|t| !self.interested(t))
                .cloned()
                .collect();
            for t in gone {
                self.subscribed.remove(&t);
                self.net.try_send(Command::Unsubscribe(t.to_string()));
            }
        }
        if let Some(p) = add
            && !self.config.topics.contains(&p)
        {
            self.config.topics.push(p);
            added = true;
            self.subscribe_known();
            // Topics peers announced before we cared about them: hear them again.
            self.net.try_send(Command::ReplaySubscriptions);
            let peers: Vec<PeerId> = self.peers.iter().copied().collect();
            for peer in peers {
                self.round(peer, now);
            }
        }
        if !added && self.config.topics.len() == before {
            return;
        }
        let text: String = self
            .config
            .topics
            .iter()
            .map(|p| format!("{p}\n"))
            .collect();
        let tmp = self.config.interest_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.config.interest_file));
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot save the interest list");
        }
        tracing::info!(patterns = ?self.config.topics.iter().map(ToString::to_string).collect::<Vec<_>>(), "interest changed");
    }
}

impl Replicator {
    /// A round on `topic` finished with a peer. While publishing is held after a
    /// repair, counts it; once every topic the node held at start has had one, the
    /// node's own logs are as complete as its peers can make them: the hold is lifted
    /// (durably), after the clock has moved past the newest own event fetched back.
    pub(super) fn confirm_own(&mut self, topic: &Topic) {
        let Some(waiting) = &mut self.unconfirmed else {
            return;
        };
        waiting.remove(topic);
        if !waiting.is_empty() {
            return;
        }
        let (author, hold) = &self.config.own;
        match crate::ingest::last_own_time(&self.store, author) {
            Ok(t) => self.config.clock.resume_after(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the own logs after catching up; publishing stays held");
                return;
            }
        }
        if let Err(e) = self.store.confirm_own_logs() {
            tracing::error!(error = %e, "cannot record that the own logs are confirmed; publishing stays held");
            return;
        }
        self.unconfirmed = None;
        hold.release();
        tracing::info!("own logs confirmed by a sync round on every topic: publishing resumes");
    }
}
