//! What runs murmur's own code: publishing signed events, storing them with the real
//! acceptance rules, the sans-IO sync machine's timers and outputs, anti-entropy
//! rounds, and the end-state checks.

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
        *head = Some(ev.clone());
        self.event_bytes += ev.bytes().len() as u64;
        self.published.insert(ev.id(), (self.now, Vec::new()));
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
        let to = match self.sc.push {
            Push::Gossipsub => self.nodes[p].neighbors.clone(),
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

    /// Stores events at node `i`, recording first arrivals.
    pub(crate) fn store(&mut self, i: usize, events: &[Event]) -> Vec<Outcome> {
        let outcomes = match self.nodes[i].store.insert(events, Durability::Buffered) {
            Ok(o) => o,
            Err(e) => match e {},
        };
        for (ev, o) in events.iter().zip(&outcomes) {
            if matches!(o, Outcome::Appended(_)) {
                self.arrived(i, ev.id());
            }
        }
        outcomes
    }

    pub(crate) fn arrived(&mut self, i: usize, id: EventId) {
        if let Some((_, times)) = self.published.get_mut(&id)
            && self.nodes[i].interested
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
                    for (_, ev) in events {
                        self.arrived(i, ev.id());
                    }
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
        let reachable: Vec<usize> = self.nodes[i]
            .neighbors
            .iter()
            .copied()
            .filter(|&p| self.connected(i, p))
            .collect();
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
        self.published
            .values()
            .all(|(_, t)| t.len() == self.interested_count())
            && want > 0
    }

    pub(crate) fn interested_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.interested).count()
    }
}
