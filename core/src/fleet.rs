//! Fleet membership and permissions: who belongs to a fleet, who may write what, and
//! who was shut out. Pure: time comes in as arguments.
//!
//! **The chain of trust.** A fleet is named by its *root key* (`murmur fleet init`),
//! kept off the devices. The root certifies *admin keys* ([`Kind::Admin`]); the root or
//! an admin certifies *members* ([`Kind::Member`]): a node key with roles, an expiry,
//! and optionally topic patterns of its own. A certificate is ed25519 over a blake3
//! digest (derive-key context [`CERT_CONTEXT`]) of its postcard-encoded body; a member
//! certificate issued by an admin carries the admin's certificate with it, so anyone
//! who knows the root can check it alone.
//!
//! **The policy is a log.** Grants (a role may publish and/or write documents in topic
//! patterns) and revocations (a key, a reason, an effective time) are signed by an
//! admin or the root ([`SignedRule`]) and travel as data events (content type
//! [`CONTENT_TYPE`]) on the reserved topic [`POLICY_TOPIC`], which every node of a
//! fleet replicates and keeps. A member also publishes its own certificate there, so
//! that nodes it never met learn its roles. Any member may carry policy entries: an
//! entry's authority is its own signature, not the event's author.
//!
//! **The state is order-free.** [`Fleet`] folds entries in any order to the same
//! answer: per role, the newest valid grant (by issue time, then hash); per key, the
//! earliest revocation; per member, the newest valid certificate. An entry or
//! certificate issued by an admin at or after that admin's revocation is void.
//!
//! **The one predicate.** [`Fleet::may_write`] decides whether an event may be stored:
//! the replication machine asks it of every gossiped run and synced window (before
//! verifying signatures: it is cheaper), the daemon of every local publish, and the
//! simulator runs the same code.

use std::collections::BTreeMap;

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::event::{Body, Event};
use crate::id::AuthorId;
use crate::keys::Keypair;
use crate::topic::{Pattern, Topic};

/// The reserved topic of the fleet's policy log.
pub const POLICY_TOPIC: &str = "$fleet/policy";
/// Topics starting with this are the fleet's own: no grant reaches them, local
/// publishing refuses them, and retention keeps them.
pub const RESERVED_PREFIX: &str = "$fleet/";
/// Content type of a policy entry event.
pub const CONTENT_TYPE: &str = "application/vnd.murmur.fleet-policy";
/// blake3 derive-key context of a certificate's signing digest.
pub const CERT_CONTEXT: &str = "murmur fleet certificate v1";
/// blake3 derive-key context of a policy rule's signing digest.
pub const RULE_CONTEXT: &str = "murmur fleet policy rule v1";
/// Most roles in a certificate, topic patterns in a certificate or grant.
pub const MAX_LIST: usize = 64;
/// Longest role name or revocation reason, bytes.
pub const MAX_NAME: usize = 128;
/// Most policy entries a node holds (grants, revocations and certificates).
pub const MAX_ENTRIES: usize = 100_000;
/// Most events one node may write on the policy topic (its log there is kept
/// forever on every node).
pub const MAX_POLICY_EVENTS: u64 = 4096;
/// Largest encoded certificate or entry.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// What a certificate makes its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// May sign member certificates and policy rules. Issued by the root only.
    Admin,
    /// A node of the fleet.
    Member,
}

/// The signed part of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBody {
    /// The fleet: its root public key.
    pub fleet: AuthorId,
    /// Admin or member.
    pub kind: Kind,
    /// The key certified.
    pub subject: AuthorId,
    /// Roles (members): each role's grants apply to the subject.
    pub roles: Vec<String>,
    /// Topic patterns the subject may write (publish and documents) besides its roles'.
    pub topics: Vec<String>,
    /// When it was issued, ms since the Unix epoch.
    pub issued_ms: u64,
    /// When it expires, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Who signed it: the root, or an admin.
    pub issuer: AuthorId,
}

/// A certificate: its body, the issuer's signature, and the issuer's own admin
/// certificate unless the issuer is the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    /// What is certified.
    pub body: CertBody,
    /// ed25519 by `body.issuer` over [`CERT_CONTEXT`]'s digest of the body.
    pub signature: Vec<u8>,
    /// The issuer's admin certificate (issued by the root), if the issuer is an admin.
    pub chain: Option<Box<Cert>>,
}

/// A rule of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// What a role may do. Replaces older grants of the same role; a grant with no
    /// patterns takes the role's rights away.
    Grant {
        /// The role.
        role: String,
        /// Topic patterns.
        topics: Vec<String>,
        /// May publish data events.
        publish: bool,
        /// May write documents (changes and snapshots).
        docs: bool,
    },
    /// A key shut out from `effective_ms` on: its events timed from then on are
    /// refused, its connections dropped; a revoked admin's later signatures are void.
    Revoke {
        /// The key.
        subject: AuthorId,
        /// Why, for people.
        reason: String,
        /// From when, ms since the Unix epoch.
        effective_ms: u64,
    },
}

/// The signed part of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleBody {
    /// The fleet.
    pub fleet: AuthorId,
    /// The rule.
    pub rule: Rule,
    /// When it was issued, ms since the Unix epoch.
    pub issued_ms: u64,
    /// Who signed it: the root, or an admin.
    pub issuer: AuthorId,
}

/// A rule signed by the root or an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRule {
    /// The rule.
    pub body: RuleBody,
    /// ed25519 by `body.issuer` over [`RULE_CONTEXT`]'s digest of the body.
    pub signature: Vec<u8>,
    /// The issuer's admin certificate, if the issuer is an admin.
    pub chain: Option<Box<Cert>>,
}

/// The payload of a policy event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A member's certificate (published by the member itself, or by anyone).
    Member(Cert),
    /// A grant or revocation.
    Rule(SignedRule),
}

/// Why a certificate, an entry or a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Bytes that do not decode.
    #[error("does not decode: {0}")]
    Malformed(String),
    /// For another fleet.
    #[error("belongs to fleet {0}, not this one")]
    OtherFleet(AuthorId),
    /// A signature that does not verify, or a chain that does not lead to the root.
    #[error("bad signature or chain: {0}")]
    BadChain(&'static str),
    /// A field out of bounds (a bad pattern, too many roles, ...).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Why an event may not be stored, or a peer may not connect. `reason()` is a stable
/// label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No valid membership certificate is known for the author.
    #[error("{0} is not a member of this fleet (no valid certificate known)")]
    NotAMember(AuthorId),
    /// The author's certificate expired before the event's time (or now, at connect).
    #[error("{author}'s certificate expired at {expires_ms} ms")]
    Expired {
        /// The author.
        author: AuthorId,
        /// When.
        expires_ms: u64,
    },
    /// The author was revoked before the event's time (or now, at connect).
    #[error("{author} was revoked from {effective_ms} ms: {reason}")]
    Revoked {
        /// The author.
        author: AuthorId,
        /// From when.
        effective_ms: u64,
        /// Why.
        reason: String,
    },
    /// None of the author's roles (nor its certificate) grants the right on the topic.
    #[error("{author} has no grant to {right} on {topic}")]
    NoGrant {
        /// The author.
        author: AuthorId,
        /// The topic.
        topic: Topic,
        /// `publish` or `write documents`.
        right: &'static str,
    },
    /// A reserved topic, or a policy event that is not a valid entry.
    #[error("reserved topic {topic}: {why}")]
    Reserved {
        /// The topic.
        topic: Topic,
        /// Why.
        why: String,
    },
    /// A certificate offered at connect that does not hold.
    #[error("certificate refused: {0}")]
    BadCert(FleetError),
}

impl Refusal {
    /// A stable label: `not_a_member`, `expired`, `revoked`, `no_grant`, `reserved`,
    /// `bad_cert`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAMember(_) => "not_a_member",
            Refusal::Expired { .. } => "expired",
            Refusal::Revoked { .. } => "revoked",
            Refusal::NoGrant { .. } => "no_grant",
            Refusal::Reserved { .. } => "reserved",
            Refusal::BadCert(_) => "bad_cert",
        }
    }
}

fn digest(context: &str, bytes: &[u8]) -> [u8; 32] {
    blake3::derive_key(context, bytes)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Owned strings, vectors and fixed arrays always serialise.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FleetError> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(FleetError::Malformed(format!(
            "{} bytes; the limit is {MAX_ENTRY_BYTES}",
            bytes.len()
        )));
    }
    postcard::from_bytes(bytes).map_err(|e| FleetError::Malformed(e.to_string()))
}

fn check_sig(by: &AuthorId, digest: &[u8; 32], sig: &[u8]) -> Result<(), FleetError> {
    let key = by
        .verifying_key()
        .map_err(|_| FleetError::BadChain("issuer is not a public key"))?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| FleetError::BadChain("signature is not 64 bytes"))?;
    key.verify_strict(digest, &Signature::from_bytes(&sig))
        .map_err(|_| FleetError::BadChain("signature does not verify"))
}

fn check_list(what: &str, list: &[String], patterns: bool) -> Result<(), FleetError> {
    if list.len() > MAX_LIST {
        return Err(FleetError::Invalid(format!(
            "{} {what}; the limit is {MAX_LIST}",
            list.len()
        )));
    }
    for s in list {
        if patterns {
            Pattern::new(s).map_err(|e| FleetError::Invalid(format!("{what} {s:?}: {e}")))?;
        } else if s.is_empty() || s.len() > MAX_NAME || s.chars().any(char::is_control) {
            return Err(FleetError::Invalid(format!("{what} {s:?}")));
        }
    }
    Ok(())
}

/// Checks that `chain` (the issuer's admin certificate, if any) makes `issuer` an
/// authority of `fleet` at `issued_ms`.
fn check_issuer(
    fleet: &AuthorId,
    issuer: &AuthorId,
    issued_ms: u64,
    chain: Option<&Cert>,
) -> Result<(), FleetError> {
    match chain {
        None if issuer == fleet => Ok(()),
        None => Err(FleetError::BadChain(
            "issuer is not the root and shows no admin certificate",
        )),
        Some(admin) => {
            if admin.body.kind != Kind::Admin
                || admin.body.subject != *issuer
                || admin.body.issuer != *fleet
                || admin.chain.is_some()
            {
                return Err(FleetError::BadChain(
                    "the chain is not a root-issued admin certificate of the issuer",
                ));
            }
            if admin.body.fleet != *fleet {
                return Err(FleetError::OtherFleet(admin.body.fleet));
            }
            if issued_ms < admin.body.issued_ms || issued_ms > admin.body.expires_ms {
                return Err(FleetError::BadChain(
                    "issued outside its admin certificate's validity",
                ));
            }
            check_sig(
                fleet,
                &digest(CERT_CONTEXT, &encode(&admin.body)),
                &admin.signature,
            )
        }
    }
}

impl Cert {
    /// A certificate for `body`, signed by `issuer` (whose admin certificate is `chain`,
    /// unless it is the root).
    pub fn issue(mut body: CertBody, issuer: &Keypair, chain: Option<Cert>) -> Cert {
        body.issuer = issuer.author();
        let signature = issuer.sign(&digest(CERT_CONTEXT, &encode(&body))).to_vec();
        Cert {
            body,
            signature,
            chain: chain.map(Box::new),
        }
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes (bounded by [`MAX_ENTRY_BYTES`]); does not verify.
    pub fn decode(bytes: &[u8]) -> Result<Cert, FleetError> {
        decode(bytes)
    }

    /// Checks the certificate alone: its fields, and that its signatures lead to the
    /// root `fleet`. Time (expiry, revocations) is [`Fleet`]'s.
    pub fn verify(&self, fleet: &AuthorId) -> Result<(), FleetError> {
        let b = &self.body;
        if b.fleet != *fleet {
            return Err(FleetError::OtherFleet(b.fleet));
        }
        check_list("roles", &b.roles, false)?;
        check_list("topics", &b.topics, true)?;
        if b.expires_ms < b.issued_ms {
            return Err(FleetError::Invalid("expires before it was issued".into()));
        }
        if b.kind == Kind::Admin && (b.issuer != *fleet || self.chain.is_some()) {
            return Err(FleetError::BadChain(
                "an admin certificate is issued by the root",
            ));
        }
        check_issuer(fleet, &b.issuer, b.issued_ms, self.chain.as_deref())?;
        check_sig(
            &b.issuer,
            &digest(CERT_CONTEXT, &encode(b)),
            &self.signature,
        )
    }

    /// The admin that issued it, if not the root.
    fn admin(&self) -> Option<AuthorId> {
        self.chain.as_ref().map(|c| c.body.subject)
    }
}

impl SignedRule {
    /// A rule signed by `issuer` (whose admin certificate is `chain`, unless it is the
    /// root).
    pub fn issue(
        fleet: AuthorId,
        rule: Rule,
        issued_ms: u64,
        issuer: &Keypair,
        chain: Option<Cert>,
    ) -> Self {
        let body = RuleBody {
            fleet,
            rule,
            issued_ms,
            issuer: issuer.author(),
        };
        let signature = issuer.sign(&digest(RULE_CONTEXT, &encode(&body))).to_vec();
        SignedRule {
            body,
            signature,
            chain: chain.map(Box::new),
        }
    }

    /// Checks the rule's fields and that its signatures lead to the root `fleet`.
    pub fn verify(&self, fleet: &AuthorId) -> Result<(), FleetError> {
        let b = &self.body;
        if b.fleet != *fleet {
            return Err(FleetError::OtherFleet(b.fleet));
        }
        match &b.rule {
            Rule::Grant { role, topics, .. } => {
                check_list("roles", std::slice::from_ref(role), false)?;
                check_list("topics", topics, true)?;
            }
            Rule::Revoke {
                subject, reason, ..
            } => {
                if subject == fleet {
                    return Err(FleetError::Invalid(
                        "the root key cannot be revoked (make a new fleet)".into(),
                    ));
                }
                if reason.len() > MAX_NAME {
                    return Err(FleetError::Invalid("reason too long".into()));
                }
            }
        }
        check_issuer(fleet, &b.issuer, b.issued_ms, self.chain.as_deref())?;
        check_sig(
            &b.issuer,
            &digest(RULE_CONTEXT, &encode(b)),
            &self.signature,
        )
    }

    fn admin(&self) -> Option<AuthorId> {
        self.chain.as_ref().map(|c| c.body.subject)
    }
}

impl Entry {
    /// The encoding (a policy event's payload).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes (bounded); does not verify.
    pub fn decode(bytes: &[u8]) -> Result<Entry, FleetError> {
        decode(bytes)
    }

    /// The entry a policy event carries.
    pub fn of(ev: &Event) -> Result<Entry, FleetError> {
        match ev.body() {
            Body::Data {
                content_type: Some(CONTENT_TYPE),
                data,
            } => Entry::decode(data),
            _ => Err(FleetError::Malformed(format!(
                "a policy event has content type {CONTENT_TYPE}"
            ))),
        }
    }

    /// The payload of a policy event carrying it.
    pub fn payload(&self) -> crate::event::Payload {
        crate::event::Payload::Data {
            content_type: Some(CONTENT_TYPE.to_owned()),
            data: self.encode().into(),
        }
    }

    /// Checks it against the root `fleet`.
    pub fn verify(&self, fleet: &AuthorId) -> Result<(), FleetError> {
        match self {
            Entry::Member(c) if c.body.kind == Kind::Member => c.verify(fleet),
            Entry::Member(_) => Err(FleetError::Invalid(
                "only member certificates are published".into(),
            )),
            Entry::Rule(r) => r.verify(fleet),
        }
    }
}

/// Whether `ev` writes a document (a change, or a snapshot): the `docs` right.
fn is_document(ev: &Event) -> bool {
    match ev.body() {
        Body::Doc { .. } => true,
        Body::Data { content_type, .. } => content_type == Some(crate::snapshot::CONTENT_TYPE),
    }
}

/// Whether `author`'s certificate `cert` holds at `at_ms`: not revoked by then
/// (`revoked`, its revocation in force), not expired (with `slack_ms`).
fn holds_at(
    author: &AuthorId,
    cert: &Cert,
    revoked: Option<&Revocation>,
    at_ms: u64,
    slack_ms: u64,
) -> Result<(), Refusal> {
    if let Some(r) = revoked
        && at_ms >= r.effective_ms
    {
        return Err(Refusal::Revoked {
            author: *author,
            effective_ms: r.effective_ms,
            reason: r.reason.clone(),
        });
    }
    if at_ms > cert.body.expires_ms.saturating_add(slack_ms) {
        return Err(Refusal::Expired {
            author: *author,
            expires_ms: cert.body.expires_ms,
        });
    }
    Ok(())
}

fn no_grant(author: AuthorId, topic: &Topic, docs: bool) -> Refusal {
    Refusal::NoGrant {
        author,
        topic: topic.clone(),
        right: if docs { "write documents" } else { "publish" },
    }
}

/// Where a log stops standing because its author was revoked from `effective_ms`: the
/// first seq of the run of events at its end timed at or after then (read back from
/// the head, the head alone first, then 1,024 at a time, so the cost is what would be
/// taken back). `None` when its head was written before, or the topic is reserved
/// (the policy log is kept whole). A node that learns of a revocation late takes these
/// events back ([`crate::storage::Store::truncate`]); [`Fleet::revocations`] says who
/// and from when.
pub fn revoked_suffix<S: crate::storage::ReadStore>(
    store: &S,
    topic: &Topic,
    author: &AuthorId,
    base: crate::id::Seq,
    head: crate::id::Seq,
    effective_ms: u64,
) -> Result<Option<crate::id::Seq>, S::Error> {
    if is_reserved(topic) {
        return Ok(None);
    }
    let mut first = None;
    // Exclusive end of the part not yet read; the head alone first (most logs of a
    // revoked key end before its revocation), then 1,024 at a time.
    let mut end = head.0.saturating_add(1);
    let mut window = 1;
    while end > base.0 {
        let from = end.saturating_sub(window).max(base.0);
        window = 1024;
        let limit = usize::try_from(end - from).unwrap_or(1024);
        let evs = store.log_range(author, topic, crate::id::Seq(from), limit)?;
        let mut run = !evs.is_empty();
        for e in evs.iter().rev() {
            if e.time().ms >= effective_ms {
                first = Some(e.seq());
            } else {
                run = false;
                break;
            }
        }
        if !run {
            break;
        }
        end = from;
    }
    Ok(first)
}

/// Whether `topic` is one of the fleet's own.
pub fn is_reserved(topic: &Topic) -> bool {
    topic.as_str().starts_with(RESERVED_PREFIX)
}

/// What a role may do, in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The patterns.
    pub topics: Vec<Pattern>,
    /// May publish data.
    pub publish: bool,
    /// May write documents.
    pub docs: bool,
    /// When it was issued.
    pub issued_ms: u64,
}

/// A revocation in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// From when.
    pub effective_ms: u64,
    /// Why.
    pub reason: String,
}

/// What changed when an entry was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing new (known already, or void).
    Nothing,
    /// A member's certificate.
    Member,
    /// A grant.
    Grant,
    /// A revocation.
    Revoke,
}

/// The fleet's policy as this node knows it: the root, the entries seen, and what is in
/// force. See the module docs.
#[derive(Debug, Clone)]
pub struct Fleet {
    root: AuthorId,
    drift_ms: u64,
    /// Every valid member certificate, by subject, newest last (at most 4 each).
    certs: BTreeMap<AuthorId, Vec<Cert>>,
    /// Every valid grant rule, by role (at most 16 each).
    grants: BTreeMap<String, Vec<SignedRule>>,
    /// Every valid revocation, by subject.
    revokes: BTreeMap<AuthorId, Vec<SignedRule>>,
    entries: usize,
    /// In force (derived from the above).
    members: BTreeMap<AuthorId, Cert>,
    in_force: BTreeMap<String, Grant>,
    revoked: BTreeMap<AuthorId, Revocation>,
    /// The root's own revocations: what decides whether an admin's signature stands.
    root_revoked: BTreeMap<AuthorId, Revocation>,
}

const CERTS_PER_SUBJECT: usize = 4;
const RULES_PER_KEY: usize = 16;

impl Fleet {
    /// A fleet with root key `root`, nothing known yet. `drift_ms`: the clock drift
    /// tolerated (`clock.max_drift`) at connect: a certificate counts as expired only
    /// that long after its expiry, and as issued that long before.
    pub fn new(root: AuthorId, drift_ms: u64) -> Self {
        Fleet {
            root,
            drift_ms,
            certs: BTreeMap::new(),
            grants: BTreeMap::new(),
            revokes: BTreeMap::new(),
            entries: 0,
            members: BTreeMap::new(),
            in_force: BTreeMap::new(),
            revoked: BTreeMap::new(),
            root_revoked: BTreeMap::new(),
        }
    }

    /// The fleet's root key.
    pub fn root(&self) -> AuthorId {
        self.root
    }

    /// Members with a certificate in force (revoked ones too), by key.
    pub fn members(&self) -> &BTreeMap<AuthorId, Cert> {
        &self.members
    }

    /// Grants in force, by role.
    pub fn grants(&self) -> &BTreeMap<String, Grant> {
        &self.in_force
    }

    /// Revocations in force, by key.
    pub fn revocations(&self) -> &BTreeMap<AuthorId, Revocation> {
        &self.revoked
    }

    /// Learns a member certificate (from a policy entry, or offered at connect).
    /// Verified here. One signed by an admin the root had revoked by then is void and
    /// not kept.
    pub fn learn(&mut self, cert: Cert) -> Result<Applied, FleetError> {
        if cert.body.kind != Kind::Member {
            return Err(FleetError::Invalid("not a member certificate".into()));
        }
        cert.verify(&self.root)?;
        if !self.by_standing_admin(cert.admin(), cert.body.issued_ms) {
            return Ok(Applied::Nothing);
        }
        let list = self.certs.entry(cert.body.subject).or_default();
        if list.contains(&cert) {
            return Ok(Applied::Nothing);
        }
        if self.entries >= MAX_ENTRIES {
            return Err(FleetError::Invalid(format!(
                "more than {MAX_ENTRIES} policy entries"
            )));
        }
        self.entries += 1;
        list.push(cert);
        list.sort_by_key(|c| {
            (
                c.body.issued_ms,
                c.body.expires_ms,
                *blake3::hash(&c.signature).as_bytes(),
            )
        });
        if list.len() > CERTS_PER_SUBJECT {
            // Void ones go first, then the oldest an admin signed; the root's stay.
            let voided = |c: &Cert| !Self::stands(&self.root_revoked, c.admin(), c.body.issued_ms);
            let victim = list
                .iter()
                .position(voided)
                .or_else(|| list.iter().position(|c| c.chain.is_some()));
            if let Some(i) = victim {
                list.remove(i);
                self.entries -= 1;
            }
        }
        self.derive();
        Ok(Applied::Member)
    }

    /// Whether something signed by `admin` (None: the root) at `issued_ms` stands by
    /// the root's revocations known now (they are final: what this voids stays void).
    fn by_standing_admin(&self, admin: Option<AuthorId>, issued_ms: u64) -> bool {
        Self::stands(&self.root_revoked, admin, issued_ms)
    }

    /// Applies a policy entry (verified here). A rule signed by an admin the root had
    /// revoked by then is void and not kept.
    pub fn apply(&mut self, entry: Entry) -> Result<Applied, FleetError> {
        let rule = match entry {
            Entry::Member(c) => return self.learn(c),
            Entry::Rule(r) => r,
        };
        rule.verify(&self.root)?;
        if !self.by_standing_admin(rule.admin(), rule.body.issued_ms) {
            return Ok(Applied::Nothing);
        }
        let (list, applied) = match &rule.body.rule {
            Rule::Grant { role, .. } => {
                (self.grants.entry(role.clone()).or_default(), Applied::Grant)
            }
            Rule::Revoke { subject, .. } => {
                (self.revokes.entry(*subject).or_default(), Applied::Revoke)
            }
        };
        if list.contains(&rule) {
            return Ok(Applied::Nothing);
        }
        if self.entries >= MAX_ENTRIES {
            return Err(FleetError::Invalid(format!(
                "more than {MAX_ENTRIES} policy entries"
            )));
        }
        self.entries += 1;
        list.push(rule);
        list.sort_by_key(|r| (r.body.issued_ms, *blake3::hash(&r.signature).as_bytes()));
        if list.len() > RULES_PER_KEY {
            // Void ones go first; then, of what admins signed, the oldest grant of a
            // role (superseded) or the latest-effective revocation of a key (the
            // earliest is what counts). The root's are never dropped.
            let voided =
                |r: &SignedRule| !Self::stands(&self.root_revoked, r.admin(), r.body.issued_ms);
            let effective = |r: &SignedRule| match &r.body.rule {
                Rule::Revoke { effective_ms, .. } => *effective_ms,
                Rule::Grant { .. } => 0,
            };
            let victim = list.iter().position(voided).or_else(|| match applied {
                Applied::Revoke => list
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.chain.is_some())
                    .max_by_key(|(_, r)| effective(r))
                    .map(|(i, _)| i),
                _ => list.iter().position(|r| r.chain.is_some()),
            });
            if let Some(i) = victim {
                list.remove(i);
                self.entries -= 1;
            }
        }
        self.derive();
        Ok(applied)
    }

    /// Applies the entry a policy event carries.
    pub fn apply_event(&mut self, ev: &Event) -> Result<Applied, FleetError> {
        self.apply(Entry::of(ev)?)
    }

    /// Whether something signed by `admin` (None: the root) at `issued_ms` stands
    /// against `revoked`: a revoked admin's signatures from its revocation on are void.
    fn stands(
        revoked: &BTreeMap<AuthorId, Revocation>,
        admin: Option<AuthorId>,
        issued_ms: u64,
    ) -> bool {
        admin.is_none_or(|a| revoked.get(&a).is_none_or(|r| issued_ms < r.effective_ms))
    }

    /// Recomputes what is in force. Only the root revokes an admin: the root's
    /// revocations decide which admins' signatures stand (no fixed point, nothing an
    /// admin signs can bring an admin back); then every revocation that stands counts
    /// against members (the earliest per key), and the newest standing grant per role
    /// and certificate per member are in force.
    fn derive(&mut self) {
        let mut root_revoked: BTreeMap<AuthorId, Revocation> = BTreeMap::new();
        let mut revoked: BTreeMap<AuthorId, Revocation> = BTreeMap::new();
        let earliest =
            |map: &mut BTreeMap<AuthorId, Revocation>, subject: AuthorId, r: &SignedRule| {
                let Rule::Revoke {
                    reason,
                    effective_ms,
                    ..
                } = &r.body.rule
                else {
                    return;
                };
                let e = map.entry(subject).or_insert(Revocation {
                    effective_ms: *effective_ms,
                    reason: reason.clone(),
                });
                if *effective_ms < e.effective_ms {
                    e.effective_ms = *effective_ms;
                    e.reason = reason.clone();
                }
            };
        for (subject, rules) in &self.revokes {
            for r in rules.iter().filter(|r| r.chain.is_none()) {
                earliest(&mut root_revoked, *subject, r);
            }
        }
        for (subject, rules) in &self.revokes {
            for r in rules {
                if Self::stands(&root_revoked, r.admin(), r.body.issued_ms) {
                    earliest(&mut revoked, *subject, r);
                }
            }
        }
        self.in_force = self
            .grants
            .iter()
            .filter_map(|(role, rules)| {
                let r = rules
                    .iter()
                    .rev()
                    .find(|r| Self::stands(&root_revoked, r.admin(), r.body.issued_ms))?;
                let Rule::Grant {
                    topics,
                    publish,
                    docs,
                    ..
                } = &r.body.rule
                else {
                    return None;
                };
                Some((
                    role.clone(),
                    Grant {
                        topics: topics.iter().filter_map(|t| Pattern::new(t).ok()).collect(),
                        publish: *publish,
                        docs: *docs,
                        issued_ms: r.body.issued_ms,
                    },
                ))
            })
            .collect();
        self.members = self
            .certs
            .iter()
            .filter_map(|(subject, certs)| {
                let c = certs
                    .iter()
                    .rev()
                    .find(|c| Self::stands(&root_revoked, c.admin(), c.body.issued_ms))?;
                Some((*subject, c.clone()))
            })
            .collect();
        self.root_revoked = root_revoked;
        self.revoked = revoked;
    }

    /// Whether `author` may be heard at `at_ms`: a member, certified then, not revoked
    /// by then.
    fn standing(&self, author: &AuthorId, at_ms: u64, slack_ms: u64) -> Result<&Cert, Refusal> {
        let cert = self
            .members
            .get(author)
            .ok_or(Refusal::NotAMember(*author))?;
        holds_at(author, cert, self.revoked.get(author), at_ms, slack_ms)?;
        Ok(cert)
    }

    /// Whether `ev` may be stored: its author is a member whose certificate covers the
    /// event's time, not revoked by then, and granted the right on the topic by one of
    /// its roles or its own certificate. Documents (changes and snapshots) need the
    /// `docs` right, other data `publish`. A policy event must carry a valid entry and
    /// come from a member (or be the author's own certificate).
    pub fn may_write(&self, ev: &Event) -> Result<(), Refusal> {
        let author = ev.author();
        let at = ev.time().ms;
        let topic = ev.topic();
        if is_reserved(topic) {
            let reserved = |why: String| Refusal::Reserved {
                topic: topic.clone(),
                why,
            };
            if topic.as_str() == crate::health::HEALTH_TOPIC {
                // A member's own heartbeat: small data of its content type.
                match ev.body() {
                    Body::Data {
                        content_type: Some(crate::health::CONTENT_TYPE),
                        data,
                    } if data.len() <= crate::health::MAX_BYTES => {}
                    _ => return Err(reserved("not a heartbeat".into())),
                }
                return self.standing(&author, at, 0).map(|_| ());
            }
            if topic.as_str() != POLICY_TOPIC {
                return Err(reserved("no node writes it".into()));
            }
            let entry = Entry::of(ev).map_err(|e| reserved(e.to_string()))?;
            entry
                .verify(&self.root)
                .map_err(|e| reserved(e.to_string()))?;
            if ev.seq().0 >= MAX_POLICY_EVENTS {
                return Err(reserved(format!(
                    "more than {MAX_POLICY_EVENTS} policy events from one node"
                )));
            }
            // A node may publish its own certificate before anyone knows it, but only
            // one that stands at the event's time (a revoked or expired node cannot
            // keep writing here).
            if let Entry::Member(c) = &entry
                && c.body.subject == author
            {
                holds_at(&author, c, self.revoked.get(&author), at, 0)?;
                if !self.by_standing_admin(c.admin(), c.body.issued_ms) {
                    return Err(Refusal::NotAMember(author));
                }
                return Ok(());
            }
            return self.standing(&author, at, 0).map(|_| ());
        }
        self.may_author(&author, topic, is_document(ev), at)
    }

    /// Whether `author` may write in `topic` at `at_ms` (documents if `docs`, else
    /// data): [`Fleet::may_write`] without the event, for a local publish before it is
    /// signed. Reserved topics are refused.
    pub fn may_author(
        &self,
        author: &AuthorId,
        topic: &Topic,
        docs: bool,
        at_ms: u64,
    ) -> Result<(), Refusal> {
        let author = *author;
        if is_reserved(topic) {
            return Err(Refusal::Reserved {
                topic: topic.clone(),
                why: "written by the node itself".into(),
            });
        }
        let cert = self.standing(&author, at_ms, 0)?;
        if self.granted(cert, topic, docs) {
            Ok(())
        } else {
            Err(no_grant(author, topic, docs))
        }
    }

    /// Whether `cert`'s own topics or one of its roles' grants cover `topic` (for
    /// documents if `docs`).
    fn granted(&self, cert: &Cert, topic: &Topic, docs: bool) -> bool {
        cert.body
            .topics
            .iter()
            .any(|p| Pattern::new(p).is_ok_and(|p| p.matches(topic)))
            || cert
                .body
                .roles
                .iter()
                .filter_map(|r| self.in_force.get(r))
                .any(|g| {
                    (if docs { g.docs } else { g.publish })
                        && g.topics.iter().any(|p| p.matches(topic))
                })
    }

    /// The first of `events` that [`Fleet::may_write`] refuses, and why. A gossiped run
    /// and a synced window are one log (one author, one topic): the certificate and
    /// the grant are then looked up once, and each event costs two comparisons of its
    /// time (expiry, revocation) and its kind (data or document). Anything else is
    /// asked event by event.
    pub fn first_refused(&self, events: &[Event]) -> Option<(usize, Refusal)> {
        let first = events.first()?;
        let (author, topic) = (first.author(), first.topic());
        if is_reserved(topic)
            || events
                .iter()
                .any(|e| e.author() != author || e.topic() != topic)
        {
            return events
                .iter()
                .enumerate()
                .find_map(|(i, e)| self.may_write(e).err().map(|r| (i, r)));
        }
        let Some(cert) = self.members.get(&author) else {
            return Some((0, Refusal::NotAMember(author)));
        };
        let revoked = self.revoked.get(&author);
        let mut granted: [Option<bool>; 2] = [None, None];
        for (i, ev) in events.iter().enumerate() {
            if let Err(r) = holds_at(&author, cert, revoked, ev.time().ms, 0) {
                return Some((i, r));
            }
            let docs = is_document(ev);
            if !*granted[usize::from(docs)].get_or_insert_with(|| self.granted(cert, topic, docs)) {
                return Some((i, no_grant(author, topic, docs)));
            }
        }
        None
    }

    /// Whether a peer offering `cert` (as key `peer`) may connect at `now_ms`: the
    /// certificate is a valid member certificate of this fleet for that key, issued
    /// and not expired (within the drift limit), and the key is not revoked. Learns
    /// the certificate if so.
    pub fn admit(&mut self, cert: Cert, peer: &AuthorId, now_ms: u64) -> Result<(), Refusal> {
        if cert.body.subject != *peer {
            return Err(Refusal::BadCert(FleetError::Invalid(format!(
                "certifies {}, not the peer's key {}",
                cert.body.subject.short(),
                peer.short()
            ))));
        }
        if cert.body.kind != Kind::Member {
            return Err(Refusal::BadCert(FleetError::Invalid(
                "not a member certificate".into(),
            )));
        }
        cert.verify(&self.root).map_err(Refusal::BadCert)?;
        if cert.body.issued_ms > now_ms.saturating_add(self.drift_ms) {
            return Err(Refusal::BadCert(FleetError::Invalid(
                "issued in the future".into(),
            )));
        }
        self.learn(cert).map_err(Refusal::BadCert)?;
        self.standing(peer, now_ms, self.drift_ms).map(|_| ())
    }

    /// Whether a connected peer still stands at `now_ms` (not revoked, not expired).
    pub fn still_admitted(&self, peer: &AuthorId, now_ms: u64) -> Result<(), Refusal> {
        self.standing(peer, now_ms, self.drift_ms).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
