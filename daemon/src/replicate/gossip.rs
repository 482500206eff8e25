//! Gossip in: runs decoded and verified in batches, verdicts, bans, events held past a
//! gap.

use super::*;

impl Replicator {
    /// Decodes and checks gossiped runs, verifies them (one signature per run, the runs'
    /// newest events batch-verified together), stores the valid ones in one write, and
    /// reports a verdict for each message to gossipsub.
    pub(super) fn gossiped(&mut self, batch: Vec<Gossiped>, now: Instant) {
        let mut valid: Vec<(PeerId, MessageId, Vec<Event>)> = Vec::with_capacity(batch.len());
        for (source, id, topic, data) in batch {
            let verdict = match run::decode(&data, GOSSIP_MAX_BYTES) {
                Err(e) => {
                    tracing::debug!(peer = %source, error = %e, "rejected gossip: malformed run");
                    self.metrics.rejected("malformed");
                    Verdict::Reject
                }
                Ok(evs) if evs[0].topic().as_str() != topic => {
                    self.metrics.rejected("wrong_topic");
                    Verdict::Reject
                }
                Ok(evs) if !self.interested(evs[0].topic()) => Verdict::Ignore,
                Ok(evs) if let Some(Err(e)) = self.check_bodies(&evs) => {
                    tracing::debug!(peer = %source, error = %e, "rejected gossip: bad body");
                    self.metrics.rejected("bad_body");
                    Verdict::Reject
                }
                Ok(evs) => {
                    valid.push((source, id, evs));
                    continue;
                }
            };
            self.validate(id, source, verdict);
        }
        // A decoded run is hash-linked by construction: its newest event vouches for it.
        let newest: Vec<Event> = valid
            .iter()
            .filter_map(|(_, _, evs)| evs.last().cloned())
            .collect();
        let checks = verify_batch(&newest);
        let mut good = Vec::with_capacity(valid.len());
        for ((source, id, evs), check) in valid.into_iter().zip(checks) {
            match check {
                Ok(()) => good.push((source, id, evs)),
                Err(e) => {
                    tracing::debug!(peer = %source, error = %e, "rejected gossip: bad signature");
                    self.metrics.rejected("bad_signature");
                    self.validate(id, source, Verdict::Reject);
                }
            }
        }
        if good.is_empty() {
            return;
        }
        let events: Vec<Event> = good.iter().flat_map(|(_, _, evs)| evs.clone()).collect();
        let outcomes = match self.store.insert(&events, self.config.sync.durability) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot store gossiped events");
                for (source, id, _) in good {
                    self.validate(id, source, Verdict::Ignore);
                }
                return;
            }
        };
        let mut outcomes = outcomes.into_iter();
        let mut appended: BTreeSet<(Topic, AuthorId)> = BTreeSet::new();
        let mut times = Vec::new();
        for (source, id, evs) in good {
            // Accept (and so forward) a run that brought anything new; ignore one that
            // brought nothing.
            let mut verdict = Verdict::Ignore;
            let mut round = false;
            for ev in evs {
                match outcomes.next() {
                    Some(Outcome::Appended(_)) => {
                        self.metrics.received("gossip", 1);
                        appended.insert((ev.topic().clone(), ev.author()));
                        times.push((ev.author(), ev.time()));
                        verdict = Verdict::Accept;
                    }
                    Some(Outcome::Gap { .. }) => {
                        let held = self.hold(source, ev, now);
                        if held == Verdict::Accept {
                            verdict = Verdict::Accept;
                        }
                    }
                    // The author forked at our head: a round with the sender proves it.
                    Some(Outcome::PrevMismatch) if !round => {
                        round = true;
                        let outs = self
                            .sync
                            .start(source, ev.topic().clone(), now, &*self.store);
                        self.outputs(outs);
                    }
                    Some(Outcome::Duplicate) => {
                        self.metrics.duplicates.inc();
                    }
                    _ => {}
                }
            }
            self.validate(id, source, verdict);
        }
        self.config.clock.observe(times);
        for (topic, author) in appended {
            self.drain(&topic, author);
        }
        self.notify.send_replace(self.store.next_offset());
    }
    /// The application's check of every event's body (first failure), if configured.
    fn check_bodies(&self, evs: &[Event]) -> Option<Result<(), String>> {
        let check = self.config.sync.check.as_ref()?;
        evs.iter().map(|e| (check.0)(e)).find(Result::is_err)
    }
    /// Reports a verdict to gossipsub; bans a peer that keeps forwarding invalid events.
    pub(super) fn validate(&mut self, id: MessageId, source: PeerId, verdict: Verdict) {
        self.net.try_send(Command::Validate {
            id,
            source,
            verdict,
        });
        if verdict == Verdict::Reject {
            let n = self.rejects.entry(source).or_insert(0);
            *n += 1;
            if *n >= REJECTS_BEFORE_BAN {
                self.rejects.remove(&source);
                self.ban(source, "bad_gossip", "forwarded invalid events");
            }
        }
    }
    /// Disconnects `peer` and refuses it for `BAN`; `reason` is the metric's label
    /// (`bad_gossip`, `sync_violation`), `why` the log's words.
    pub(super) fn ban(&mut self, peer: PeerId, reason: &'static str, why: &str) {
        if self.known.remove(&peer).is_some() {
            self.known_dirty = true;
        }
        tracing::warn!(%peer, why, "disconnecting a misbehaving peer for {BAN:?}");
        self.metrics.refused("peer_banned");
        if self.net.try_send(Command::Ban { peer, for_: BAN }) {
            let until = Instant::now() + BAN;
            self.metrics.banned(reason, &peer.to_string(), until);
        } else {
            // Not banned: the peer stays until it misbehaves again.
            self.metrics.refused("network_queue_full");
        }
        let outs = self.sync.peer_gone(&peer);
        self.outputs(outs);
    }
    /// Holds a valid event that arrived ahead of a gap (gossip took another path for the
    /// events before it) until the gap fills; `tick` pulls gaps that stay open.
    pub(super) fn hold(&mut self, source: PeerId, ev: Event, now: Instant) -> Verdict {
        if self.pending.len >= PENDING_MAX {
            self.metrics.rejected("pending_full");
            let outs = self.sync.pull(
                source,
                ev.topic().clone(),
                ev.author(),
                ev.seq(),
                now,
                &*self.store,
            );
            self.outputs(outs);
            return Verdict::Ignore;
        }
        let key = (ev.topic().clone(), ev.author());
        let entry = self
            .pending
            .logs
            .entry(key)
            .or_insert_with(|| (now, source, BTreeMap::new()));
        if entry.2.insert(ev.seq(), ev).is_none() {
            self.pending.len += 1;
        }
        Verdict::Accept
    }
    /// Inserts the held events of a log that now continue its head, in one batch.
    pub(super) fn drain(&mut self, topic: &Topic, author: AuthorId) {
        let key = (topic.clone(), author);
        loop {
            let head = match self.store.log_state(&author, topic) {
                Ok(st) => st.head.map(|h| h.seq),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a log head");
                    return;
                }
            };
            let Some((_, _, held)) = self.pending.logs.get_mut(&key) else {
                return;
            };
            // Forget what the log already holds.
            let stale: Vec<Seq> = held
                .keys()
                .copied()
                .take_while(|s| head.is_some_and(|h| *s <= h))
                .collect();
            for s in stale {
                held.remove(&s);
                self.pending.len -= 1;
            }
            let mut next = head.map_or(Seq(0), |h| Seq(h.0 + 1));
            let mut run = Vec::new();
            while let Some(ev) = held.remove(&next) {
                self.pending.len -= 1;
                run.push(ev);
                next = Seq(next.0 + 1);
            }
            if held.is_empty() {
                self.pending.logs.remove(&key);
            }
            if run.is_empty() {
                return;
            }
            match self.store.insert(&run, self.config.sync.durability) {
                Ok(outcomes) => {
                    let times: Vec<_> = run
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, o)| matches!(o, Outcome::Appended(_)))
                        .map(|(ev, _)| (ev.author(), ev.time()))
                        .collect();
                    self.metrics.received("gossip", times.len() as u64);
                    self.config.clock.observe(times);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store held events");
                    return;
                }
            }
        }
    }
}
