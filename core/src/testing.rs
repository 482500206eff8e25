//! Helpers that build valid signed chains, for tests, benchmarks and the simulator.

use bytes::Bytes;

use crate::event::{Draft, Event, Payload};
use crate::hlc::Timestamp;
use crate::id::Seq;
use crate::keys::Keypair;
use crate::topic::Topic;

/// The key with seed `[n; 32]`: deterministic, for tests only.
pub fn key(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32])
}

/// A valid chain of `len` data events by `key` in `topic`, seq 0.., with payloads
/// `"{tag}{seq}"` (different tags give different, conflicting chains: forks).
///
/// Panics on an invalid topic: test input only.
pub fn chain(key: &Keypair, topic: &str, len: usize, tag: &str) -> Vec<Event> {
    chain_with(key, topic, len, |seq| Bytes::from(format!("{tag}{seq}")))
}

/// A valid chain whose payload at each seq is `payload(seq)`.
pub fn chain_with(
    key: &Keypair,
    topic: &str,
    len: usize,
    payload: impl Fn(u64) -> Bytes,
) -> Vec<Event> {
    #[allow(clippy::expect_used)]
    let topic = Topic::new(topic).expect("test topic");
    let mut out: Vec<Event> = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let draft = Draft {
            topic: topic.clone(),
            seq: Seq(i),
            prev: out.last().map(Event::id),
            time: Timestamp::from_ms(1_700_000_000_000 + i),
            body: Payload::data(payload(i)),
        };
        #[allow(clippy::expect_used)]
        out.push(Event::sign(&draft, key).expect("test event"));
    }
    out
}

/// A driver that writes at once: carries out every `Persist` among `outs` on `store`
/// and feeds the result back to the machine (and so on, for the writes that follow),
/// returning every other output in order. For tests and benchmarks of the sync machine.
pub fn settle_sync<P, S>(
    machine: &mut crate::sync::Sync<P>,
    outs: Vec<crate::sync::Output<P>>,
    now: std::time::Instant,
    store: &S,
) -> Vec<crate::sync::Output<P>>
where
    P: Clone + Ord + std::fmt::Debug,
    S: crate::storage::Store,
{
    use crate::sync::Output;
    settle_with(
        outs,
        store,
        |o| match o {
            Output::Persist {
                ticket,
                events,
                durability,
                restart,
            } => Ok((ticket, events, durability, restart)),
            other => Err(Box::new(other)),
        },
        |t, written| machine.persisted(t, written, now, store),
    )
}

/// [`settle_sync`] for the replication machine.
pub fn settle<P, M, S>(
    machine: &mut crate::replicate::Replicator<P, M>,
    outs: Vec<crate::replicate::Output<P, M>>,
    now: std::time::Instant,
    store: &S,
) -> Vec<crate::replicate::Output<P, M>>
where
    P: Clone + Ord + std::fmt::Debug,
    M: Clone + std::fmt::Debug,
    S: crate::storage::Store,
{
    use crate::replicate::Output;
    settle_with(
        outs,
        store,
        |o| match o {
            Output::Persist {
                ticket,
                events,
                durability,
                restart,
            } => Ok((ticket, events, durability, restart)),
            other => Err(Box::new(other)),
        },
        |t, written| machine.persisted(t, written, now, store),
    )
}

type Write<T> = (T, Vec<Event>, crate::storage::Durability, bool);
type Written = Result<Vec<crate::storage::Outcome>, String>;

fn settle_with<O, T, S: crate::storage::Store>(
    outs: Vec<O>,
    store: &S,
    as_write: impl Fn(O) -> Result<Write<T>, Box<O>>,
    mut persisted: impl FnMut(T, Written) -> Vec<O>,
) -> Vec<O> {
    let mut queue: std::collections::VecDeque<O> = outs.into();
    let mut done = Vec::new();
    while let Some(o) = queue.pop_front() {
        match as_write(o) {
            Ok((ticket, events, durability, restart)) => {
                let written = if restart {
                    store.restart_log(&events, durability)
                } else {
                    store.insert(&events, durability)
                }
                .map_err(|e| e.to_string());
                for m in persisted(ticket, written).into_iter().rev() {
                    queue.push_front(m);
                }
            }
            Err(other) => done.push(*other),
        }
    }
    done
}

/// A member certificate of `root`'s fleet for `subject` with `roles`, signed by the
/// root itself, valid from `issued_ms` to `expires_ms`.
pub fn member_cert(
    root: &Keypair,
    subject: crate::AuthorId,
    roles: &[&str],
    issued_ms: u64,
    expires_ms: u64,
) -> crate::fleet::Cert {
    crate::fleet::Cert::issue(
        crate::fleet::CertBody {
            fleet: root.author(),
            kind: crate::fleet::Kind::Member,
            subject,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            topics: Vec::new(),
            issued_ms,
            expires_ms,
            issuer: root.author(),
        },
        root,
        None,
    )
}

/// `rule`, signed by the fleet's `root` itself at `issued_ms`.
pub fn root_rule(root: &Keypair, rule: crate::fleet::Rule, issued_ms: u64) -> crate::fleet::Entry {
    crate::fleet::Entry::Rule(crate::fleet::SignedRule::issue(
        root.author(),
        rule,
        issued_ms,
        root,
        None,
    ))
}

/// A grant to `role` of publishing in `topics` (and writing documents if `docs`).
pub fn grant(role: &str, topics: &[&str], docs: bool) -> crate::fleet::Rule {
    crate::fleet::Rule::Grant {
        role: role.to_owned(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        publish: true,
        docs,
    }
}
