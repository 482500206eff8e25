//! What runs murmur's own code: publishing signed events, storing them with the real
//! acceptance rules, the sans-IO sync machine's timers and outputs, anti-entropy
//! rounds; the invariant checks at every write, and the end-state checks.

use super::*;

impl Sim {
    pub(crate) fn publish(&mut self, p: usize) -> anyhow::Result<()> {
        let wall_ms = 1_700_000_000_000 + self.now / 1000;
        let topic = self.topic.clone();
        let Some((key, clock, head)) = self.nodes[p].author.as_mut() else {
            return Ok(());
        };
        let seq = head.as_ref().map_or(Seq(0), |h| Seq(h.seq().0 + 1));
        let ev = Event::sign(
            &Draft {
                topic,
                seq,
                prev: head.as_ref().map(Event::id),
                time: clock.tick(wall_ms),
                body: Payload::data(Bytes::from(vec![b'x'; 256])),
            },
            key,
        )?;
        let forger = self.nodes[p].forger;
        let ev = if forger { forge(&ev)? } else { ev };
        if let Some((_, _, head)) = self.nodes[p].author.as_mut() {
            *head = Some(ev.clone());
        }
        let past_fork = self
            .fork_at
            .iter()
            .any(|(a, s)| *a == ev.author() && ev.seq().0 >= *s);
        if forger {
            self.forged += 1;
        } else if past_fork {
            self.past_fork.insert(ev.id());
        } else {
            self.event_bytes += ev.bytes().len() as u64;
            self.published.insert(ev.id(), (self.now, Vec::new()));
        }
        self.store(p, std::slice::from_ref(&ev));
        let bytes = run::encode(std::slice::from_ref(&ev))?;
        let id = *blake3::hash(&bytes).as_bytes();
        self.nodes[p].seen.insert(id);
        self.remember(p, id);
        let bytes = Arc::new(bytes);
        self.runs.insert(id, bytes.clone());
        let msg = Msg::Push { id, run: bytes };
        // gossipsub: flood publish, to every neighbour, once the event is durable.
        // Plumtree: to the eager neighbours; the others get the id in the next batch.
        let durable = (self.sc.publish_ms * 1000.0) as u64;
        let to: Vec<usize> = match self.sc.push {
            // To every neighbour subscribed to the topic.
            Push::Gossipsub => self.nodes[p]
                .neighbors
                .iter()
                .copied()
                .filter(|&q| self.nodes[q].interested)
                .collect(),
            Push::Plumtree => {
                self.nodes[p].announce.push(id);
                self.nodes[p].mesh.iter().copied().collect()
            }
        };
        for to in to {
            self.send_after(durable, p, to, msg.clone());
        }
        Ok(())
    }

    /// Stores events at node `i`, recording first arrivals and checking the invariants.
    pub(crate) fn store(&mut self, i: usize, events: &[Event]) -> Vec<Outcome> {
        let outcomes = match self.nodes[i].store.insert(events, Durability::Buffered) {
            Ok(o) => o,
            Err(e) => match e {},
        };
        let appended: Vec<&Event> = events
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Outcome::Appended(_)))
            .map(|(ev, _)| ev)
            .collect();
        for ev in &appended {
            self.arrived(i, ev.id());
        }
        self.check_stored(i, &appended);
        // A fork met here must leave its proof in the store.
        for (ev, o) in events.iter().zip(&outcomes) {
            if matches!(o, Outcome::Fork(_)) && !self.nodes[i].forger {
                self.forks_met += 1;
                let proven = match self.nodes[i].store.forks() {
                    Ok(f) => f.iter().any(|p| p.author() == ev.author()),
                    Err(e) => match e {},
                };
                if !proven {
                    self.violation(format!(
                        "node {i} met a fork at seq {} but holds no proof",
                        ev.seq().0
                    ));
                }
            }
        }
        outcomes
    }

    /// Invariants at every write of an honest node, by push or by sync: it stores only
    /// events an honest author (or a cloned device) published (anything else got past
    /// verification), and a log's head never goes back.
    pub(crate) fn check_stored(&mut self, i: usize, events: &[&Event]) {
        if self.nodes[i].forger || events.is_empty() {
            return;
        }
        let mut authors: Vec<AuthorId> = Vec::new();
        for ev in events {
            if !self.published.contains_key(&ev.id()) && !self.past_fork.contains(&ev.id()) {
                self.violation(format!(
                    "node {i} stored event {:?} (seq {}), which no honest author published",
                    ev.id(),
                    ev.seq().0
                ));
            }
            if !authors.contains(&ev.author()) {
                authors.push(ev.author());
            }
        }
        for author in authors {
            let state = match self.nodes[i].store.log_state(&author, &self.topic) {
                Ok(s) => s,
                Err(e) => match e {},
            };
            let Some(seq) = state.head.map(|h| h.seq.0) else {
                self.violation(format!("node {i} stored events of a log that has no head"));
                continue;
            };
            if let Some(before) = self.nodes[i].heads.insert(author, seq)
                && before > seq
            {
                self.violation(format!(
                    "node {i}: a log's head went back from seq {before} to {seq}"
                ));
            }
        }
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.violation_examples.len() < 5 {
            self.violation_examples.push(what);
        }
    }

    pub(crate) fn arrived(&mut self, i: usize, id: EventId) {
        // Got back an event lost with the store: not a first arrival.
        if self.nodes[i].lost.remove(&id) {
            self.lost_total -= 1;
            self.refetched += 1;
            return;
        }
        if let Some((_, times)) = self.published.get_mut(&id)
            && self.nodes[i].interested
            && !self.nodes[i].forger
        {
            times.push(self.now);
        }
    }

    pub(crate) fn outputs(&mut self, i: usize, outs: Vec<Output<usize>>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    if let Ok(frame) = msg.to_frame() {
                        self.send(i, to, Msg::Sync(Arc::new(frame)));
                    }
                }
                Output::Stored { events, .. } => {
                    for (_, ev) in &events {
                        self.arrived(i, ev.id());
                    }
                    let refs: Vec<&Event> = events.iter().map(|(_, ev)| ev).collect();
                    self.check_stored(i, &refs);
                }
                _ => {}
            }
        }
    }

    pub(crate) fn tick(&mut self, i: usize) {
        if !self.nodes[i].online {
            return;
        }
        let now = self.instant();
        let node = &mut self.nodes[i];
        let outs = node.sync.tick(now);
        self.outputs(i, outs);
        self.check_converged();
    }

    /// The anti-entropy interval, µs.
    pub(crate) fn round_every(&self) -> u64 {
        (self.sc.anti_entropy_s * US as f64) as u64
    }

    /// An anti-entropy round with the next reachable neighbour in turn, as the daemon
    /// rounds with its next connected peer. (The model takes a lost or restored
    /// connection as known at once; the daemon learns it from pings and redials.)
    pub(crate) fn round(&mut self, i: usize) {
        if !self.nodes[i].interested {
            return;
        }
        // Any peer, as the daemon rounds with its next connected peer whatever that peer
        // replicates (a round with one that does not want the topic is empty).
        let reachable = self.reachable(i);
        if reachable.is_empty() {
            return;
        }
        let k = (self.nodes[i].next_peer + 1) % reachable.len();
        self.nodes[i].next_peer = k;
        let peer = reachable[k];
        let now = self.instant();
        let node = &mut self.nodes[i];
        let outs = node.sync.start(peer, self.topic.clone(), now, &node.store);
        self.outputs(i, outs);
    }

    pub(crate) fn check_converged(&mut self) {
        if let (Some(h), None) = (self.heal_at, self.converged_at)
            && self.now >= h
            && self.complete()
        {
            self.converged_at = Some(self.now);
        }
    }

    pub(crate) fn complete(&self) -> bool {
        let want = self.published.len();
        self.lost_total == 0
            && self
                .published
                .values()
                .all(|(_, t)| t.len() == self.interested_count())
            && want > 0
    }

    /// Honest nodes that want the topic (forgers take part but are not counted).
    pub(crate) fn interested_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.interested && !n.forger)
            .count()
    }
}

/// Every node's sync machine settings.
pub(crate) fn sync_config() -> sync::Config {
    sync::Config {
        durability: Durability::Buffered,
        ..sync::Config::default()
    }
}

/// The event with one bit of its signature flipped: well-formed, but it fails
/// verification.
fn forge(ev: &Event) -> anyhow::Result<Event> {
    let sig = ev.signature();
    let mut bytes = ev.bytes().to_vec();
    let at = bytes
        .windows(sig.len())
        .position(|w| w == sig)
        .ok_or_else(|| anyhow::anyhow!("no signature in the event's encoding"))?;
    bytes[at] ^= 1;
    let forged = Event::decode(Bytes::from(bytes), usize::MAX)?;
    anyhow::ensure!(
        forged.verify().is_err(),
        "a forged event must fail verification"
    );
    Ok(forged)
}
