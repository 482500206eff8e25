//! Named consumers: cursors the daemon keeps for applications, so a reader that stops
//! (or crashes) resumes after the last event it acknowledged, and is sent again what it
//! had received but not acknowledged.
//!
//! A consumer is a name, a topic pattern fixed when it is created, and `next`: the first
//! offset not acknowledged. `GET /v1/follow?consumer=NAME` creates it (from the newest
//! event, or `from`) or resumes it from `next`; acknowledgements are cumulative
//! (`POST /v1/consumers/NAME/ack {"offset": N}` acknowledges N and everything before it)
//! or automatic per page (`ack=auto`). One stream per consumer: a new follow of the same
//! name ends the earlier stream, so a client that crashed and reconnects is not refused
//! because its dead connection has not been noticed yet.
//!
//! Cursors live in the store ([`murmur_store::ConsumerRecord`]), and this registry
//! holds them in memory too (they are few: [`crate::config::ApiConfig::max_consumers`]).
//! Changes are serialised by one async lock held across the store write, so the store
//! and the memory never disagree about an acknowledged cursor.

use std::collections::HashMap;
use std::sync::Arc;

use murmur_core::{Offset, Pattern};
use murmur_store::{ConsumerRecord, RocksStore};
use tokio_util::sync::CancellationToken;

/// Longest consumer name, bytes.
pub const MAX_NAME: usize = 64;

/// Why a consumer operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The name is empty, too long or has characters other than `A-Z a-z 0-9 . _ -`.
    #[error("bad consumer name {0:?}: use 1 to 64 of the characters A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// No consumer of this name.
    #[error("no consumer named {0:?}")]
    NotFound(String),
    /// The consumer exists with another pattern.
    #[error(
        "consumer {name:?} reads {has}, not {asked}: a consumer's pattern is fixed when it is created (delete it, or use another name)"
    )]
    OtherPattern {
        /// The consumer.
        name: String,
        /// Its pattern.
        has: String,
        /// The pattern asked for.
        asked: String,
    },
    /// As many consumers as allowed exist.
    #[error("{0} consumers exist, the most allowed (api.max_consumers): delete one first")]
    TooMany(usize),
    /// An acknowledgement past the newest event.
    #[error("offset {offset} is past the newest event here (next offset {next})")]
    PastEnd {
        /// The offset acknowledged.
        offset: u64,
        /// The store's next offset.
        next: u64,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// A consumer as the API shows it.
#[derive(Debug, Clone)]
pub struct ConsumerView {
    /// Its name.
    pub name: String,
    /// What it stores.
    pub record: ConsumerRecord,
    /// Whether a follow stream reads it now.
    pub streaming: bool,
}

struct Entry {
    record: ConsumerRecord,
    /// The stream reading it now, if any: (its number, what ends it).
    stream: Option<(u64, CancellationToken)>,
}

/// The registry of named consumers.
pub struct Consumers {
    store: Arc<RocksStore>,
    max: usize,
    inner: Arc<tokio::sync::Mutex<Inner>>,
}

struct Inner {
    entries: HashMap<String, Entry>,
    streams: u64,
    /// Consumers a configured bridge owns.
    owned: std::collections::HashSet<String>,
}

/// The prefix of the consumers bridges own (`bridge.NAME`): the API neither follows
/// nor acknowledges them, deletes them only once their bridge is gone from the config,
/// and they do not count toward `api.max_consumers`.
pub const BRIDGE_PREFIX: &str = "bridge.";

/// Whether `name` is a bridge's consumer.
pub fn is_bridge(name: &str) -> bool {
    name.starts_with(BRIDGE_PREFIX)
}

/// A follow stream's hold on its consumer: it ends when a newer stream of the same
/// consumer opens, or the consumer is deleted.
pub struct Lease {
    /// The consumer.
    pub name: String,
    /// Its stream number.
    pub stream: u64,
    /// Fired when the stream must end.
    pub ended: CancellationToken,
    /// Where the stream starts: the consumer's first unacknowledged offset.
    pub from: Offset,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks a consumer name.
pub fn check_name(name: &str) -> Result<(), ConsumerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConsumerError::BadName(name.to_owned()))
    }
}

fn pattern_text(p: Option<&str>) -> String {
    p.unwrap_or("(every topic)").to_owned()
}

fn write(
    store: &Arc<RocksStore>,
    name: &str,
    record: &ConsumerRecord,
    sync: bool,
) -> Result<(), ConsumerError> {
    // A short blocking write (no fsync unless asked) under the registry's lock: the
    // lock's holders are API requests and streams of this node only.
    blocking_here(|| store.put_consumer(name, record, sync))
        .map_err(|e| ConsumerError::Store(e.to_string()))
}

/// Runs a short blocking call on this worker thread, telling a multi-threaded runtime
/// so (its other tasks move to other threads meanwhile).
fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Consumers {
    /// Loads the consumers the store holds.
    pub fn load(store: Arc<RocksStore>, max: usize) -> Result<Self, ConsumerError> {
        let (records, skipped) = store
            .consumers()
            .map_err(|e| ConsumerError::Store(e.to_string()))?;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "named consumers with unreadable records were dropped"
            );
        }
        let entries = records
            .into_iter()
            .map(|(name, record)| {
                (
                    name,
                    Entry {
                        record,
                        stream: None,
                    },
                )
            })
            .collect();
        Ok(Self {
            store,
            max,
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                entries,
                streams: 0,
                owned: std::collections::HashSet::new(),
            })),
        })
    }

    /// Runs `f` on the registry in a task of its own, holding the lock: a caller that
    /// goes away mid-way (a client that hung up) cannot leave the store and the memory
    /// disagreeing.
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner, &Arc<RocksStore>) -> Result<T, ConsumerError> + Send + 'static,
    ) -> Result<T, ConsumerError> {
        let guard = self.inner.clone().lock_owned().await;
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut guard = guard;
            f(&mut guard, &store)
        })
        .await
        .map_err(|e| ConsumerError::Store(e.to_string()))?
    }

    /// Where a follow of consumer `name` would start, and its pattern, without
    /// changing anything: `from` if given, else its cursor, else `end` (new).
    pub async fn preview(
        &self,
        name: &str,
        from: Option<Offset>,
        end: Offset,
    ) -> Result<(Offset, Option<String>, bool), ConsumerError> {
        check_name(name)?;
        let inner = self.inner.lock().await;
        Ok(match inner.entries.get(name) {
            Some(e) => (
                from.unwrap_or(Offset(e.record.next)),
                e.record.pattern.clone(),
                true,
            ),
            None => (from.unwrap_or(end), None, false),
        })
    }

    /// Opens a stream of consumer `name`: creates it with `pattern` if it does not exist
    /// (starting at `from`, else at `end`, the store's next offset), or checks the
    /// pattern of the one that does (a `from` then moves its cursor: a replay or a
    /// skip). Any earlier stream of it ends. Bridges' consumers do not count toward
    /// the bound.
    pub async fn open(
        &self,
        name: &str,
        pattern: Option<&Pattern>,
        from: Option<Offset>,
        end: Offset,
    ) -> Result<Lease, ConsumerError> {
        check_name(name)?;
        let asked = pattern.map(|p| p.as_str().to_owned());
        let (name, max) = (name.to_owned(), self.max);
        self.locked(move |inner, store| {
            let now = now_ms();
            let record = match inner.entries.get(&name) {
                Some(e) => {
                    if asked.is_some() && asked != e.record.pattern {
                        return Err(ConsumerError::OtherPattern {
                            name: name.clone(),
                            has: pattern_text(e.record.pattern.as_deref()),
                            asked: pattern_text(asked.as_deref()),
                        });
                    }
                    match from {
                        Some(f) if f.0 != e.record.next => {
                            let moved = ConsumerRecord {
                                next: f.0,
                                acked_ms: now,
                                ..e.record.clone()
                            };
                            write(store, &name, &moved, true)?;
                            moved
                        }
                        _ => e.record.clone(),
                    }
                }
                None => {
                    let counted = inner.entries.keys().filter(|n| !is_bridge(n)).count();
                    if !is_bridge(&name) && counted >= max {
                        return Err(ConsumerError::TooMany(counted));
                    }
                    let created = ConsumerRecord {
                        pattern: asked,
                        next: from.unwrap_or(end).0,
                        created_ms: now,
                        acked_ms: now,
                    };
                    write(store, &name, &created, true)?;
                    tracing::info!(consumer = name, next = created.next, "created a consumer");
                    created
                }
            };
            inner.streams += 1;
            let stream = inner.streams;
            let ended = CancellationToken::new();
            let entry = inner.entries.entry(name.clone()).or_insert(Entry {
                record: record.clone(),
                stream: None,
            });
            entry.record = record.clone();
            if let Some((_, old)) = entry.stream.replace((stream, ended.clone())) {
                old.cancel();
            }
            Ok(Lease {
                name,
                stream,
                ended,
                from: Offset(record.next),
            })
        })
        .await
    }

    /// A stream ended: the consumer has no reader until the next one opens.
    pub async fn close(&self, lease: &Lease) {
        let mut inner = self.inner.lock().await;
        if let Some(e) = inner.entries.get_mut(&lease.name)
            && e.stream.as_ref().is_some_and(|(s, _)| *s == lease.stream)
        {
            e.stream = None;
        }
    }

    /// Acknowledges everything up to `upto`. The cursor never moves back this way.
    /// `stream`: the ack of a stream (auto-ack, a bridge), which counts only while
    /// that stream still holds the consumer (a stale one could undo a newer stream's
    /// replay); `None`: an ack through the API, from whoever holds the name.
    pub async fn ack(
        &self,
        name: &str,
        upto: Ack,
        end: Offset,
        stream: Option<u64>,
    ) -> Result<ConsumerView, ConsumerError> {
        check_name(name)?;
        let next = match upto {
            Ack::Through(o) => {
                if o.0 >= end.0 {
                    return Err(ConsumerError::PastEnd {
                        offset: o.0,
                        next: end.0,
                    });
                }
                o.0 + 1
            }
            Ack::Before(o) => o.0.min(end.0),
        };
        let name = name.to_owned();
        self.locked(move |inner, store| {
            let e = inner
                .entries
                .get_mut(&name)
                .ok_or_else(|| ConsumerError::NotFound(name.clone()))?;
            let current = stream.is_none_or(|s| e.stream.as_ref().is_some_and(|(h, _)| *h == s));
            if current && next > e.record.next {
                let moved = ConsumerRecord {
                    next,
                    acked_ms: now_ms(),
                    ..e.record.clone()
                };
                write(store, &name, &moved, false)?;
                e.record = moved;
            }
            Ok(ConsumerView {
                name: name.clone(),
                record: e.record.clone(),
                streaming: e.stream.is_some(),
            })
        })
        .await
    }

    /// Deletes a consumer, ending its stream.
    pub async fn delete(&self, name: &str) -> Result<(), ConsumerError> {
        check_name(name)?;
        let name = name.to_owned();
        self.locked(move |inner, store| {
            if !inner.entries.contains_key(&name) {
                return Err(ConsumerError::NotFound(name));
            }
            blocking_here(|| store.delete_consumer(&name))
                .map_err(|e| ConsumerError::Store(e.to_string()))?;
            if let Some(e) = inner.entries.remove(&name)
                && let Some((_, s)) = e.stream
            {
                s.cancel();
            }
            tracing::info!(consumer = name, "deleted a consumer");
            Ok(())
        })
        .await
    }

    /// Every consumer, by name.
    pub async fn list(&self) -> Vec<ConsumerView> {
        let inner = self.inner.lock().await;
        let mut v: Vec<ConsumerView> = inner
            .entries
            .iter()
            .map(|(name, e)| ConsumerView {
                name: name.clone(),
                record: e.record.clone(),
                streaming: e.stream.is_some(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Marks `name` as a configured bridge's: the API may not delete it.
    pub async fn own(&self, name: &str) {
        self.inner.lock().await.owned.insert(name.to_owned());
    }

    /// Whether a configured bridge owns `name`.
    pub async fn is_owned(&self, name: &str) -> bool {
        self.inner.lock().await.owned.contains(name)
    }

    /// Whether consumer `name` exists.
    pub async fn exists(&self, name: &str) -> bool {
        self.inner.lock().await.entries.contains_key(name)
    }

    /// Events a consumer has not acknowledged: `(count, exact)`, counted on the arrival
    /// index (no event read), at most `scan` entries (else `exact` is false and the
    /// count is a lower bound). Blocking: call from the blocking pool.
    pub fn pending(store: &RocksStore, record: &ConsumerRecord, scan: usize) -> (u64, bool) {
        let pattern = record.pattern.as_deref().and_then(|p| Pattern::new(p).ok());
        store
            .count_arrivals(Offset(record.next), pattern.as_ref(), scan)
            .unwrap_or((0, false))
    }
}

/// How far an acknowledgement reaches.
#[derive(Debug, Clone, Copy)]
pub enum Ack {
    /// This offset and everything before it.
    Through(Offset),
    /// Everything before this offset.
    Before(Offset),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize) -> (tempfile::TempDir, Arc<RocksStore>, Consumers) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RocksStore::open(dir.path(), &Default::default()).unwrap());
        let c = Consumers::load(store.clone(), max).unwrap();
        (dir, store, c)
    }

    #[tokio::test]
    async fn a_consumer_is_created_resumed_acked_and_bounded() {
        let (_d, store, c) = registry(2);
        let p = Pattern::new("a/#").unwrap();
        let l = c.open("billing", Some(&p), None, Offset(10)).await.unwrap();
        assert_eq!(l.from, Offset(10));
        // A second stream ends the first.
        let l2 = c.open("billing", None, None, Offset(20)).await.unwrap();
        assert!(l.ended.is_cancelled());
        assert!(!l2.ended.is_cancelled());
        assert_eq!(l2.from, Offset(10));
        // Another pattern is refused.
        let other = Pattern::new("b/#").unwrap();
        assert!(matches!(
            c.open("billing", Some(&other), None, Offset(20)).await,
            Err(ConsumerError::OtherPattern { .. })
        ));
        // An ack of a stream that no longer holds the consumer does not move it.
        let v = c
            .ack(
                "billing",
                Ack::Through(Offset(16)),
                Offset(20),
                Some(l.stream),
            )
            .await
            .unwrap();
        assert_eq!(v.record.next, 10);
        // Acks are cumulative and never move back; past the end is refused.
        let v = c
            .ack("billing", Ack::Through(Offset(14)), Offset(20), None)
            .await
            .unwrap();
        assert_eq!(v.record.next, 15);
        let v = c
            .ack("billing", Ack::Through(Offset(12)), Offset(20), None)
            .await
            .unwrap();
        assert_eq!(v.record.next, 15);
        assert!(matches!(
            c.ack("billing", Ack::Through(Offset(20)), Offset(20), None)
                .await,
            Err(ConsumerError::PastEnd { .. })
        ));
        // Bounded in number; names checked.
        c.open("two", None, Some(Offset(0)), Offset(20))
            .await
            .unwrap();
        assert!(matches!(
            c.open("three", None, None, Offset(20)).await,
            Err(ConsumerError::TooMany(2))
        ));
        // A bridge's consumer does not count toward the bound.
        c.open("bridge.up", None, Some(Offset(0)), Offset(20))
            .await
            .unwrap();
        assert!(matches!(
            c.open("bad name", None, None, Offset(20)).await,
            Err(ConsumerError::BadName(_))
        ));
        // What was acknowledged is in the store: a new registry resumes there.
        let again = Consumers::load(store.clone(), 2).unwrap();
        let l3 = again.open("billing", None, None, Offset(30)).await.unwrap();
        assert_eq!(l3.from, Offset(15));
        // Deleting ends the stream and frees the slot.
        again.delete("billing").await.unwrap();
        assert!(l3.ended.is_cancelled());
        assert!(matches!(
            again.delete("billing").await,
            Err(ConsumerError::NotFound(_))
        ));
        assert_eq!(again.list().await.len(), 2);
    }
}
