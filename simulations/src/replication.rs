//! What runs murmur's own code: publishing signed events, storing them with the real
//! acceptance rules, and each node's replication machine (`core::replicate`, the
//! daemon's policy) with its ticks, connections and outputs; the invariant checks at
//! every write, and the end-state checks.

use super::*;

impl Sim {
    pub(crate) fn publish(&mut self, p: usize) -> anyhow::Result<()> {
        let wall_ms = retention::wall_ms(self.now);
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
        } else if !self.fleet_counts(&ev) {
            // An event the fleet does not allow: honest nodes must not hold it.
        } else if past_fork {
            self.past_fork.insert(ev.id());
        } else {
            self.event_bytes += ev.bytes().len() as u64;
            self.published.insert(ev.id(), (self.now, Vec::new()));
        }
        self.store(p, std::slice::from_ref(&ev));
        self.push_own(p, ev);
        Ok(())
    }

    /// Node `p`'s own durable event: its machine makes the gossip message, as the
    /// daemon's does, and it goes out.
    pub(crate) fn push_own(&mut self, p: usize, ev: Event) {
        let Some(bytes) = self.nodes[p]
            .machine
            .published(vec![ev])
            .into_iter()
            .find_map(|o| match o {
                Output::Gossip { data, .. } => Some(data),
                _ => None,
            })
        else {
            return;
        };
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
    }

    /// Stores events at node `i`, recording first arrivals and checking the invariants.
    pub(crate) fn store(&mut self, i: usize, events: &[Event]) -> Vec<Outcome> {
        let outcomes = self.write(i, events);
        // A fork met here must leave its proof in the store.
        for (ev, o) in events.iter().zip(&outcomes) {
            if matches!(o, Outcome::Fork(_)) && !self.nodes[i].byzantine() {
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

    /// Node `i`'s store writer: writes events (the node's own, or what its machine asked
    /// for), recording first arrivals and checking the invariants.
    fn write(&mut self, i: usize, events: &[Event]) -> Vec<Outcome> {
        self.write_as(i, events, false)
    }

    /// Writes `events` (starting the log over at the first when `restart`), and checks
    /// and records what was stored.
    fn write_as(&mut self, i: usize, events: &[Event], restart: bool) -> Vec<Outcome> {
        let store = &self.nodes[i].store;
        let written = if restart {
            store.restart_log(events, Durability::Buffered)
        } else {
            store.insert(events, Durability::Buffered)
        };
        let outcomes = match written {
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
        self.observe_policy(i, &appended);
        self.check_stored(i, &appended);
        self.check_retained(i, &appended);
        outcomes
    }

    /// Invariants at every write of an honest node, by push or by sync: it stores only
    /// events an honest author (or a cloned device) published (anything else got past
    /// verification), and a log's head never goes back.
    pub(crate) fn check_stored(&mut self, i: usize, events: &[&Event]) {
        if self.nodes[i].byzantine() || events.is_empty() {
            return;
        }
        let mut authors: Vec<AuthorId> = Vec::new();
        // The policy log is the fleet's (applied and checked by `observe_policy`).
        let topic = self.topic.clone();
        for ev in events.iter().filter(|e| *e.topic() == topic) {
            let fleet_event = self.fleet.as_ref().is_some_and(|f| {
                f.unprivileged.contains(&ev.author()) || f.after.contains(&ev.id())
            });
            if fleet_event {
                self.check_permitted(i, ev);
            } else if !self.published.contains_key(&ev.id()) && !self.past_fork.contains(&ev.id()) {
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

    pub(crate) fn violation(&mut self, what: String) {
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
            && !self.nodes[i].byzantine()
        {
            times.push(self.now);
        }
    }

    /// Carries out node `i`'s machine outputs: sync messages go on the wire through
    /// the frame codec, verdicts drive gossipsub's forwarding, bans cut the link, and
    /// writes are carried out at once (the daemon's writer takes a fraction of a
    /// millisecond; a simulated write takes none) and checked.
    pub(crate) fn outputs(&mut self, i: usize, outs: Vec<Output<usize, MsgId>>) {
        for o in outs {
            match o {
                Output::Sync(sync::Output::Send { to, msg }) => {
                    if let Ok(frame) = msg.to_frame() {
                        self.send(i, to, Msg::Sync(Arc::new(frame)));
                    }
                }
                Output::Persist {
                    ticket,
                    events,
                    restart,
                    ..
                } => {
                    let outcomes = self.write_as(i, &events, restart);
                    let now = self.instant();
                    let n = &mut self.nodes[i];
                    let more = n.machine.persisted(ticket, Ok(outcomes), now, &n.store);
                    self.outputs(i, more);
                }
                Output::Forked(ev) => self.fork_met(i, ev.author(), ev.seq()),
                Output::Sync(sync::Output::Fork(proof)) => {
                    self.fork_met(i, proof.author(), proof.seq());
                }
                Output::Verdict {
                    id,
                    from,
                    verdict: replicate::Verdict::Accept,
                } => self.accepted(i, from, id),
                Output::Duplicates(n) => self.nodes[i].duplicates += n,
                // The DHT as a registry: who announced each rendezvous key. A lookup
                // answers after `lookup_ms` with the providers known then.
                Output::Provide(key) => {
                    let p = self.providers.entry(key).or_default();
                    if !p.contains(&i) {
                        p.push(i);
                    }
                }
                Output::FindPeers { key, want } => {
                    self.lookups += 1;
                    let at = self.now + (self.sc.lookup_ms * 1000.0) as u64;
                    self.at(at, Ev::Found { node: i, key, want });
                }
                Output::Ban { peer, reason } => {
                    self.link_dropped(i, reason);
                    self.nodes[i].banned.insert(peer);
                }
                Output::Refused { reason, .. }
                | Output::Sync(sync::Output::Refused { reason, .. }) => self.refused(i, &reason),
                _ => {}
            }
        }
    }

    /// A fork met at an honest node must leave its proof in the store.
    fn fork_met(&mut self, i: usize, author: AuthorId, seq: Seq) {
        if self.nodes[i].byzantine() {
            return;
        }
        self.forks_met += 1;
        let proven = match self.nodes[i].store.forks() {
            Ok(f) => f.iter().any(|p| p.author() == author),
            Err(e) => match e {},
        };
        if !proven {
            self.violation(format!(
                "node {i} met a fork at seq {} but holds no proof",
                seq.0
            ));
        }
    }

    /// Node `i`'s timer (every second): its machine learns which neighbours it can
    /// reach now (connect and disconnect, as libp2p reports them; a connect starts a
    /// round), then ticks (deadlines, gap pulls, the periodic round in turn).
    pub(crate) fn tick(&mut self, i: usize) {
        let now = self.instant();
        let reach: BTreeSet<usize> = if self.nodes[i].online {
            self.reachable(i)
                .into_iter()
                .filter(|p| !self.nodes[i].banned.contains(p))
                .collect()
        } else {
            BTreeSet::new()
        };
        let known = self.nodes[i].machine.peers().clone();
        for gone in known.difference(&reach) {
            let n = &mut self.nodes[i];
            let outs = n.machine.disconnected(gone, &n.store);
            self.outputs(i, outs);
        }
        if !self.nodes[i].online {
            return;
        }
        for new in reach.difference(&known) {
            // gossipsub then tells it the channels the peer is on: the peer's interest,
            // the topic or (a node that does not want it) another one.
            let theirs = if self.nodes[*new].interested {
                self.channel.as_str()
            } else {
                "murmur:elsewhere/#"
            };
            let n = &mut self.nodes[i];
            let outs = n.machine.connected(*new, now, &n.store);
            n.machine.peer_subscribed(*new, theirs);
            self.outputs(i, outs);
        }
        let n = &mut self.nodes[i];
        let outs = n.machine.tick(now, &n.store);
        self.outputs(i, outs);
        self.check_converged();
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
        if self.sc.retention.is_some() {
            // Every node ends with its window (see `Sim::finish_retention`).
            return self.ret.converged_on_window;
        }
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
            .filter(|n| n.interested && !n.byzantine())
            .count()
    }
}

/// Every node's replication machine settings: the daemon's defaults, with the
/// scenario's anti-entropy interval, the node's interest (the one topic or nothing),
/// the shared verifier, and its retention's hooks (policy, own author, wall clock).
pub(crate) fn machine_config(
    sc: &Scenario,
    interested: bool,
    topic: &Topic,
    verifier: &Arc<replicate::VerifyFn>,
    retention: Option<(
        &murmur_core::retention::Policy,
        Option<AuthorId>,
        &Arc<std::sync::atomic::AtomicU64>,
    )>,
    fleet: Option<&Arc<std::sync::RwLock<murmur_core::fleet::Fleet>>>,
) -> replicate::Config {
    let mut sync = sync::Config {
        durability: Durability::Buffered,
        ..sync::Config::default()
    };
    if let Some((policy, own, wall)) = retention {
        let window_pulls = sc.retention.as_ref().is_none_or(|r| r.window_pulls);
        retention::hooks(&mut sync, policy, own, wall, window_pulls);
    }
    let mut interest = if interested {
        Pattern::new(topic.as_str())
            .map(|p| vec![p])
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    // A closed fleet: the permission check, and the policy log on every node.
    if let Some(f) = fleet {
        if sc.fleet.as_ref().is_none_or(|f| f.enforce) {
            sync.permit = Some(crate::fleet::permit(f));
        }
        interest.extend(Pattern::new(murmur_core::fleet::POLICY_TOPIC).ok());
    }
    replicate::Config {
        interest,
        round_every: Duration::from_micros((sc.anti_entropy_s * US as f64) as u64),
        retry_first: Duration::from_micros((sc.retry_s * US as f64) as u64),
        topic_links: sc.topic_links,
        gossip_max_bytes: usize::MAX,
        sync,
        verify: Some(verifier.clone()),
        ..replicate::Config::default()
    }
}

/// Verification of gossiped events shared by every node: a signature gives the same
/// answer everywhere, so each distinct event is verified once per run of the
/// simulator. With `verify` false (see `Scenario::verify_push`) nothing is verified.
pub(crate) fn shared_verifier(verify: bool) -> Arc<replicate::VerifyFn> {
    let seen: std::sync::Mutex<HashMap<EventId, Result<(), murmur_core::EventError>>> =
        std::sync::Mutex::new(HashMap::new());
    Arc::new(move |events: &[Event]| {
        events
            .iter()
            .map(|ev| {
                if !verify {
                    return Ok(());
                }
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.entry(ev.id()).or_insert_with(|| ev.verify()).clone()
            })
            .collect()
    })
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
