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
