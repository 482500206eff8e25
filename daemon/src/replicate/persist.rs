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
    /// Adds or removes an interest pattern (the machine decides what changes) and keeps
    /// the result in the interest file. A read (neither add nor remove) changes
    /// nothing: no file write, no log. The file pins the interest over the config's
    /// p2p.topics, so writing it on a read would silently freeze later config edits.
    pub(super) async fn change_interest(
        &mut self,
        add: Option<Pattern>,
        remove: Option<Pattern>,
        now: Instant,
    ) {
        let (changed, outs) = self.machine.change_interest(add, remove, now, &*self.store);
        self.outputs(outs).await;
        if !changed {
            return;
        }
        let patterns: Vec<String> = self
            .machine
            .interest()
            .iter()
            .map(ToString::to_string)
            .collect();
        let text: String = patterns.iter().map(|p| format!("{p}\n")).collect();
        let tmp = self.config.interest_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.config.interest_file));
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot save the interest list");
        }
        tracing::info!(?patterns, "interest changed");
    }
}

impl Replicator {
    /// The machine found that a round with a peer has finished on every topic the node
    /// held at start (after a repair): its own logs are as complete as its peers can
    /// make them. The hold is lifted (durably), after the clock has moved past the
    /// newest own event fetched back. If that cannot be recorded, publishing stays held
    /// until the next start.
    pub(super) async fn confirm_own(&mut self) {
        let (author, hold) = &self.config.own;
        match crate::ingest::last_own_time(&self.store, author) {
            Ok(t) => self.config.clock.resume_after(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the own logs after catching up; publishing stays held");
                return;
            }
        }
        if let Err(e) = self.writer.confirm_own_logs().await {
            tracing::error!(error = %e, "cannot record that the own logs are confirmed; publishing stays held");
            return;
        }
        hold.release();
        tracing::info!("own logs confirmed by a sync round on every topic: publishing resumes");
    }
}
