//! The fleet's membership and permissions on this node (see `murmur_core::fleet`):
//! the policy as this node knows it, its own certificate, and the checks the rest of
//! the daemon asks.
//!
//! - The replication machine asks [`Guard::permit_check`] of every remote event.
//! - The store writer hands it every event it stores ([`Guard::observe`]): policy
//!   entries are applied as they become durable, whichever way they came (gossip,
//!   sync, a local `murmur fleet grant`), and on start the policy topic is read back.
//! - The replicator asks [`Guard::judge`] of every new peer's credentials, and drops
//!   peers that no longer stand when the policy changes ([`Guard::generation`]).
//! - Local publishing asks [`Guard::may_publish`] (403 naming the missing grant).
//!
//! In an open fleet (`fleet.open = true`) there is no guard: every peer that connects (with
//! the pre-shared key, if one is set) is a member and may write anything.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use murmur_core::fleet::{self, Applied, Cert, Entry, Fleet, Refusal};
use murmur_core::sync::PermitCheck;
use murmur_core::{AuthorId, Event, ReadStore, Seq, Topic};

use crate::metrics::Metrics;

/// The node's certificate, in the data directory.
pub const CERT_FILE: &str = "fleet.cert";
/// Text form of a certificate: this prefix, then base64 (URL-safe, no padding).
pub const CERT_PREFIX: &str = "murmur-cert:";

/// A certificate as text (what `murmur fleet admit` prints).
pub fn cert_to_text(cert: &Cert) -> String {
    use base64::Engine;
    format!(
        "{CERT_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert.encode())
    )
}

/// A certificate from its text form (surrounding whitespace allowed).
pub fn cert_from_text(text: &str) -> Result<Cert, String> {
    use base64::Engine;
    let t = text.trim();
    let b64 = t
        .strip_prefix(CERT_PREFIX)
        .ok_or_else(|| format!("a certificate starts with {CERT_PREFIX}"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| format!("certificate is not valid base64: {e}"))?;
    Cert::decode(&bytes).map_err(|e| e.to_string())
}

struct Inner {
    fleet: RwLock<Fleet>,
    own: RwLock<Option<Cert>>,
    author: AuthorId,
    cert_file: PathBuf,
    clock: Arc<crate::clock::NodeClock>,
    /// Bumped whenever the policy changes.
    generation: AtomicU64,
    /// Events taken back per revoked key since start (see [`Guard::take_back_plan`]).
    taken_back: std::sync::Mutex<std::collections::BTreeMap<AuthorId, u64>>,
    /// Whether this node's certificate is in the policy log (by this node).
    own_published: AtomicBool,
    metrics: Metrics,
}

/// The fleet guard: cheap to clone, shared by the writer, the replicator and the API.
#[derive(Clone)]
pub struct Guard(Arc<Inner>);

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("root", &self.root())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// The guard of fleet `root` for node `author`: its certificate from `data_dir`
    /// (if admitted already) and the policy read back from `store`.
    pub fn open(
        root: AuthorId,
        data_dir: &Path,
        author: AuthorId,
        store: &impl ReadStore,
        clock: Arc<crate::clock::NodeClock>,
        metrics: Metrics,
    ) -> anyhow::Result<Guard> {
        let drift = u64::try_from(clock.max_drift().as_millis()).unwrap_or(u64::MAX);
        let cert_file = data_dir.join(CERT_FILE);
        let own = match std::fs::read_to_string(&cert_file) {
            Ok(text) => {
                let cert = cert_from_text(&text)
                    .and_then(|c| check_own(&c, &root, &author).map(|()| c))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", cert_file.display()))?;
                Some(cert)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", cert_file.display())),
        };
        let guard = Guard(Arc::new(Inner {
            fleet: RwLock::new(Fleet::new(root, drift)),
            own: RwLock::new(own.clone()),
            author,
            cert_file,
            clock,
            generation: AtomicU64::new(0),
            taken_back: Default::default(),
            own_published: AtomicBool::new(false),
            metrics,
        }));
        // The policy log, read back (its entries were checked when stored).
        let topic = policy_topic();
        let vv = store
            .version_vector(&topic)
            .map_err(|e| anyhow::anyhow!("cannot read the fleet policy: {e}"))?;
        let mut entries = 0;
        for (log_author, _) in vv.iter() {
            let mut from = Seq(0);
            loop {
                let evs = store
                    .log_range(log_author, &topic, from, 1024)
                    .map_err(|e| anyhow::anyhow!("cannot read the fleet policy: {e}"))?;
                let Some(last) = evs.last() else { break };
                from = Seq(last.seq().0 + 1);
                entries += evs.len();
                guard.observe(evs.iter());
            }
        }
        if let Some(own) = &own {
            guard.learn_own(own);
        }
        tracing::info!(
            fleet = %root,
            entries,
            admitted = own.is_some(),
            "closed fleet: peers need a certificate from the fleet's root, events a grant"
        );
        if own.is_none() {
            tracing::warn!(
                node = %author,
                "this node has no fleet certificate yet: peers will not admit it. On the admin's machine: `murmur fleet admit {author} --role ROLE`, then here: `murmur fleet join CERT`"
            );
        }
        Ok(guard)
    }

    fn fleet(&self) -> std::sync::RwLockReadGuard<'_, Fleet> {
        self.0.fleet.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn fleet_mut(&self) -> std::sync::RwLockWriteGuard<'_, Fleet> {
        self.0.fleet.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fleet's root key.
    pub fn root(&self) -> AuthorId {
        self.fleet().root()
    }

    /// This node's certificate, if it has one.
    pub fn own(&self) -> Option<Cert> {
        self.0
            .own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bumped whenever the policy changes.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    /// The check the replication machine asks of every remote event.
    pub fn permit_check(&self) -> PermitCheck {
        let g = self.clone();
        PermitCheck(Arc::new(move |evs: &[Event]| g.fleet().first_refused(evs)))
    }

    /// Applies the policy entries among `events` (just stored). Entries were checked
    /// before they were stored; one that does not apply (a void signature) is logged.
    pub fn observe<'a>(&self, events: impl Iterator<Item = &'a Event>) {
        let mut changed = false;
        for ev in events.filter(|e| e.topic().as_str() == fleet::POLICY_TOPIC) {
            if ev.author() == self.0.author
                && let (Ok(Entry::Member(c)), Some(own)) = (Entry::of(ev), self.own())
                && c == own
            {
                self.0.own_published.store(true, Ordering::Release);
            }
            let applied = self.fleet_mut().apply_event(ev);
            match applied {
                Ok(Applied::Nothing) => {}
                Ok(a) => {
                    changed = true;
                    let kind = match a {
                        Applied::Member => "member",
                        Applied::Grant => "grant",
                        _ => "revoke",
                    };
                    Metrics::count(&self.0.metrics.fleet_entries, kind);
                    if a == Applied::Revoke {
                        tracing::warn!(by = %ev.author(), "fleet policy: a revocation arrived");
                    } else {
                        tracing::debug!(kind, by = %ev.author(), "fleet policy entry applied");
                    }
                }
                Err(e) => {
                    tracing::warn!(by = %ev.author(), seq = %ev.seq(), error = %e, "fleet policy entry not applied")
                }
            }
        }
        if changed {
            self.0.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn learn_own(&self, cert: &Cert) {
        if self.fleet_mut().learn(cert.clone()).is_ok() {
            self.0.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// What this node holds that revoked keys wrote after their revocation, stored
    /// before it knew: per log, the first seq to take back ([`fleet::revoked_suffix`]).
    /// Never this node's own logs (a revoked node signing at those seqs again would
    /// fork them), the policy log, or document topics (other authors' changes may
    /// build on the ones taken back).
    pub fn take_back_plan(
        &self,
        store: &impl ReadStore,
    ) -> Result<Vec<(Topic, AuthorId, Seq)>, String> {
        // A copy: the policy's lock is not held while the store is read (the writer
        // applying an entry would wait, and every permit check behind it).
        let revoked: std::collections::BTreeMap<AuthorId, u64> = self
            .fleet()
            .revocations()
            .iter()
            .map(|(k, r)| (*k, r.effective_ms))
            .collect();
        if revoked.is_empty() {
            return Ok(Vec::new());
        }
        let mut plan = Vec::new();
        for log in store.logs().map_err(|e| e.to_string())? {
            let Some(&effective_ms) = revoked.get(&log.author) else {
                continue;
            };
            if log.author == self.0.author {
                continue;
            }
            let from = fleet::revoked_suffix(
                store,
                &log.topic,
                &log.author,
                log.base,
                log.head.seq,
                effective_ms,
            )
            .map_err(|e| e.to_string())?;
            let Some(from) = from else { continue };
            let docs = store.docs_of(&log.topic, 1).map_err(|e| e.to_string())?;
            if !docs.is_empty() {
                tracing::info!(author = %log.author, topic = %log.topic, from = %from, "a revoked key's events after its revocation stay in a topic with documents (other changes may build on them); nothing more of it is accepted");
                continue;
            }
            plan.push((log.topic, log.author, from));
        }
        Ok(plan)
    }

    /// Counts `n` events of `author` taken back.
    pub fn taken_back(&self, author: AuthorId, n: u64) {
        *self
            .0
            .taken_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(author)
            .or_insert(0) += n;
    }

    /// Whether this node may publish in `topic` now (documents if `docs`).
    pub fn may_publish(&self, topic: &Topic, docs: bool) -> Result<(), Refusal> {
        let now = self.0.clock.wall_ms();
        self.fleet().may_author(&self.0.author, topic, docs, now)
    }

    /// This node's credentials for the network's admission protocol (its certificate,
    /// encoded; empty without one).
    pub fn credentials(&self) -> Vec<u8> {
        self.own().map(|c| c.encode()).unwrap_or_default()
    }

    /// Judges a new peer's credentials: `Ok` admits it (and learns its certificate).
    pub fn judge(&self, peer: &murmur_p2p::PeerId, proof: Option<&[u8]>) -> Result<(), Refusal> {
        let key = murmur_p2p::key_of(peer).map(AuthorId).ok_or_else(|| {
            Refusal::BadCert(fleet::FleetError::Invalid(
                "the peer id is not an ed25519 key".into(),
            ))
        })?;
        let proof = match proof {
            Some(p) if !p.is_empty() => p,
            _ => return Err(Refusal::NotAMember(key)),
        };
        let cert = Cert::decode(proof).map_err(Refusal::BadCert)?;
        let now = self.0.clock.wall_ms();
        let mut f = self.fleet_mut();
        let known = f.members().get(&key) == Some(&cert);
        f.admit(cert, &key, now)?;
        drop(f);
        // A certificate learned here is a policy change: events refused for want of it
        // (from this peer, or relayed before it connected) may pass now.
        if !known {
            self.0.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether a connected peer still stands (after a policy change, or as time
    /// passes its certificate's expiry).
    pub fn stands(&self, peer: &murmur_p2p::PeerId) -> Result<(), Refusal> {
        let Some(key) = murmur_p2p::key_of(peer).map(AuthorId) else {
            return Ok(());
        };
        let now = self.0.clock.wall_ms();
        self.fleet().still_admitted(&key, now)
    }

    /// Installs this node's certificate (`murmur fleet join`): checked against the
    /// fleet and the node key, written to the data directory (atomically), and used
    /// from now on. Returns whether it was new.
    pub fn join(&self, cert: Cert) -> Result<bool, String> {
        check_own(&cert, &self.root(), &self.0.author)?;
        let now = self.0.clock.wall_ms();
        if cert.body.expires_ms < now {
            return Err(format!(
                "the certificate expired at {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(cert.body.expires_ms)
                )
            ));
        }
        if self.own().as_ref() == Some(&cert) {
            return Ok(false);
        }
        let tmp = self.0.cert_file.with_extension("cert.tmp");
        let text = format!("{}\n", cert_to_text(&cert));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.0.cert_file))
            .map_err(|e| format!("cannot write {}: {e}", self.0.cert_file.display()))?;
        self.learn_own(&cert);
        *self.0.own.write().unwrap_or_else(PoisonError::into_inner) = Some(cert);
        self.0.own_published.store(false, Ordering::Release);
        Ok(true)
    }

    /// The entry this node should publish on the policy topic: its own certificate,
    /// if it has one that is not in the log yet.
    pub fn own_entry(&self) -> Option<Entry> {
        if self.0.own_published.load(Ordering::Acquire) {
            return None;
        }
        self.own().map(Entry::Member)
    }

    /// Checks a policy entry handed in by `murmur fleet grant|revoke` before it is
    /// published.
    pub fn check_entry(&self, entry: &Entry) -> Result<(), String> {
        entry.verify(&self.root()).map_err(|e| e.to_string())
    }

    /// What `murmur fleet status` shows.
    pub fn status(&self, connected: &[murmur_p2p::PeerId]) -> crate::api::FleetJson {
        let now = self.0.clock.wall_ms();
        let f = self.fleet();
        let connected: std::collections::BTreeSet<AuthorId> = connected
            .iter()
            .filter_map(|p| murmur_p2p::key_of(p).map(AuthorId))
            .collect();
        let soon = now.saturating_add(30 * 86_400_000);
        let time = |ms: u64| crate::api::time_json(murmur_core::Timestamp::from_ms(ms));
        crate::api::FleetJson {
            mode: "closed".into(),
            root: f.root().to_string(),
            node: self.0.author.to_string(),
            admitted: self.own().is_some(),
            own: self.own().map(|c| cert_json(&c, &f, now, soon, &connected)),
            members: f
                .members()
                .values()
                .map(|c| cert_json(c, &f, now, soon, &connected))
                .collect(),
            grants: f
                .grants()
                .iter()
                .map(|(role, g)| crate::api::GrantJson {
                    role: role.clone(),
                    topics: g.topics.iter().map(ToString::to_string).collect(),
                    publish: g.publish,
                    docs: g.docs,
                    issued: time(g.issued_ms),
                })
                .collect(),
            revocations: f
                .revocations()
                .iter()
                .map(|(k, r)| crate::api::RevocationJson {
                    node: k.to_string(),
                    reason: r.reason.clone(),
                    effective: time(r.effective_ms),
                    taken_back: self
                        .0
                        .taken_back
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(k)
                        .copied()
                        .unwrap_or(0),
                })
                .collect(),
        }
    }
}

fn cert_json(
    c: &Cert,
    f: &Fleet,
    now: u64,
    soon: u64,
    connected: &std::collections::BTreeSet<AuthorId>,
) -> crate::api::MemberJson {
    let b = &c.body;
    let state = if f
        .revocations()
        .get(&b.subject)
        .is_some_and(|r| r.effective_ms <= now)
    {
        "revoked"
    } else if b.expires_ms < now {
        "expired"
    } else if b.expires_ms < soon {
        "expires_soon"
    } else {
        "ok"
    };
    crate::api::MemberJson {
        node: b.subject.to_string(),
        roles: b.roles.clone(),
        topics: b.topics.clone(),
        expires: crate::api::time_json(murmur_core::Timestamp::from_ms(b.expires_ms)),
        issuer: b.issuer.to_string(),
        state: state.into(),
        connected: connected.contains(&b.subject),
    }
}

/// Checks that `cert` is a valid member certificate of `root` for this node.
fn check_own(cert: &Cert, root: &AuthorId, author: &AuthorId) -> Result<(), String> {
    if cert.body.subject != *author {
        return Err(format!(
            "the certificate is for node {}, not this node ({author})",
            cert.body.subject
        ));
    }
    if cert.body.kind != fleet::Kind::Member {
        return Err("not a member certificate".into());
    }
    cert.verify(root).map_err(|e| e.to_string())
}

/// The policy topic.
pub fn policy_topic() -> Topic {
    Topic::new(fleet::POLICY_TOPIC)
        .unwrap_or_else(|_| unreachable!("the policy topic is a valid topic"))
}
