//! Follow streams: a topic pattern, live, from any offset.
//!
//! A follower holds no queue of live events. It keeps a cursor (an offset) and reads
//! pages from the store; when it has caught up it waits for the writer to announce a
//! commit. A slow follower therefore costs one page of memory, never a backlog: the store
//! *is* the buffer. Each page is written only when the client has taken the previous one
//! (HTTP body backpressure).
//!
//! Live path: the writer's announcement carries the events of its newest commit (when
//! small), so a follower that is caught up takes them from there, with no store read and
//! no hop to the blocking pool; one that is behind by more than the newest commit reads
//! the store. Events from every source (local publishes, gossip, sync) reach followers
//! the same way, since the store writer writes them all.

use std::time::Duration;

use axum::body::{Body, Bytes};
use murmur_core::{Offset, Pattern, ReadStore};
use murmur_store::RocksStore;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most events per page read from the store.
const PAGE_EVENTS: usize = 256;
/// Events in a follower's first page, before it knows how large events are.
const FIRST_PAGE_EVENTS: usize = 1;
/// Aim of a page's rendered size. Pages are sized from the events seen so far, so a
/// follower holds about this much (at least one event) whatever the event size: with
/// 1 MiB events, 256 to a page made 350 MiB pages, and 64 followers that did not read
/// took the daemon past 3 GiB.
const PAGE_BYTES: usize = 1 << 20;
/// Offsets examined per page for sparse patterns.
const PAGE_SCAN: usize = 8192;
/// SSE comment interval, so proxies and clients see a live connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One follow stream's state.
pub struct Follow {
    /// The store.
    pub store: Arc<RocksStore>,
    /// Topic filter.
    pub pattern: Option<Pattern>,
    /// Next offset to read.
    pub cursor: Offset,
    /// The writer's commit announcements.
    pub offsets: watch::Receiver<crate::ingest::Committed>,
    /// Ends the stream at shutdown.
    pub shutdown: CancellationToken,
    /// Server-sent events framing instead of NDJSON.
    pub sse: bool,
    /// Metrics.
    pub metrics: Metrics,
    /// Follower slot, released when the stream ends.
    pub permit: OwnedSemaphorePermit,
    /// Marks the connection as streaming (no idle deadline) until the stream ends.
    pub streaming: Option<crate::server::listener::Streaming>,
    /// Read on past events retention pruned (`skip_pruned=true`) instead of ending.
    pub skip_pruned: bool,
    /// The store's `pruned_to` when this follower last found nothing of its pattern
    /// pruned past its cursor: checked again only when it rises.
    pub pruned_checked: Offset,
    /// The named consumer this stream reads for, if any.
    pub consumer: Option<ConsumerFollow>,
}

/// A follow stream's named consumer.
pub struct ConsumerFollow {
    /// The registry.
    pub registry: Arc<crate::consumers::Consumers>,
    /// The stream's hold on the consumer (ended by a newer stream or a delete).
    pub lease: crate::consumers::Lease,
    /// Acknowledge each page once the connection has taken it (written to the socket)
    /// and the next is asked for: what the client's buffers held when it died is not
    /// sent again.
    pub auto_ack: bool,
    /// Where the last page sent ends (its scan position), not yet acknowledged.
    pub sent_to: Option<Offset>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.metrics.followers.dec();
        if let Some(c) = self.consumer.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { c.registry.close(&c.lease).await });
        }
    }
}

/// One past the highest offset of an event matching `pattern` that retention pruned
/// here, if that is above `from`: a reader from `from` would miss events. Cheap when
/// nothing at or above `from` was pruned (one atomic read); else one pass over the logs.
pub fn pruned_since(
    store: &RocksStore,
    pattern: Option<&Pattern>,
    from: Offset,
) -> Result<Option<Offset>, murmur_store::StoreError> {
    if store.pruned_to() <= from {
        return Ok(None);
    }
    Ok(store
        .logs()?
        .iter()
        .filter(|l| l.pruned_to > from && pattern.is_none_or(|p| p.matches(&l.topic)))
        .map(|l| l.pruned_to)
        .max())
}

/// The response body for a follow request.
pub fn stream(f: Follow) -> Body {
    f.metrics.followers.inc();
    let s = futures_util::stream::unfold((f, FIRST_PAGE_EVENTS), |(mut f, mut page)| async move {
        let chunk = next_chunk(&mut f, &mut page).await?;
        Some((Ok::<Bytes, std::io::Error>(chunk), (f, page)))
    });
    Body::from_stream(s)
}

/// The next page for the follower; `page` is how many events to read, adapted after
/// each page so that one is about [`PAGE_BYTES`].
async fn next_chunk(f: &mut Follow, page: &mut usize) -> Option<Bytes> {
    let lease_ended = f.consumer.as_ref().map(|c| c.lease.ended.clone());
    if let Some(c) = &mut f.consumer {
        // Asked for the next page: the client has taken the last one.
        if let Some(to) = c.sent_to.take()
            && c.auto_ack
            && !c.lease.ended.is_cancelled()
        {
            let end = f.store.next_offset();
            if let Err(e) = c
                .registry
                .ack(
                    &c.lease.name,
                    crate::consumers::Ack::Before(to),
                    end,
                    Some(c.lease.stream),
                )
                .await
            {
                tracing::warn!(consumer = %c.lease.name, error = %e, "follow: auto-ack failed; ending the stream");
                return None;
            }
        }
    }
    let chunk = next_page(f, page, lease_ended).await?;
    if let Some(c) = &mut f.consumer {
        c.sent_to = Some(f.cursor);
    }
    Some(chunk)
}

async fn next_page(
    f: &mut Follow,
    page: &mut usize,
    lease_ended: Option<CancellationToken>,
) -> Option<Bytes> {
    loop {
        if f.shutdown.is_cancelled() || lease_ended.as_ref().is_some_and(|l| l.is_cancelled()) {
            return None;
        }
        // Marked seen here, so a commit after this point wakes the wait below.
        let newest = f.offsets.borrow_and_update().events.clone();
        if let Some((first, _)) = newest.first()
            && *first == f.cursor
            && let Some((last, _)) = newest.last()
        {
            // Caught up: the newest commit is what comes next.
            f.cursor = Offset(last.0 + 1);
            let matching: Vec<&(Offset, murmur_core::Event)> = newest
                .iter()
                .filter(|(_, e)| f.pattern.as_ref().is_none_or(|p| p.matches(e.topic())))
                .collect();
            if matching.is_empty() {
                continue;
            }
            return Some(render(matching, f.sse));
        }
        // Behind: the store says what can be read.
        if f.cursor < f.store.next_offset() {
            let (store, pattern, cursor) = (f.store.clone(), f.pattern.clone(), f.cursor);
            let limit = *page;
            let pruned_now = f.store.pruned_to();
            let check = !f.skip_pruned && pruned_now > f.pruned_checked && pruned_now > cursor;
            let read = tokio::task::spawn_blocking(move || {
                // A follower that fell behind past what retention pruned is not moved
                // on silently: the stream ends, and resuming from its offset answers
                // 410 `pruned` (unless it asks to skip).
                if check && pruned_since(&store, pattern.as_ref(), cursor)?.is_some() {
                    return Ok(None);
                }
                store
                    .arrivals(cursor, pattern.as_ref(), limit, PAGE_SCAN)
                    .map(Some)
            })
            .await;
            if check {
                f.pruned_checked = pruned_now;
            }
            let read = match read {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => {
                    tracing::info!(
                        cursor = f.cursor.0,
                        "follow: the next events were pruned by retention; ending the stream"
                    );
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "follow: store read failed; closing stream");
                    return None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "follow: read task failed; closing stream");
                    return None;
                }
            };
            f.cursor = read.next;
            if read.events.is_empty() {
                continue;
            }
            let chunk = render(read.events.iter(), f.sse);
            let per_event = (chunk.len() / read.events.len()).max(1);
            *page = (PAGE_BYTES / per_event).clamp(1, PAGE_EVENTS);
            return Some(chunk);
        }
        tokio::select! {
            changed = f.offsets.changed() => {
                if changed.is_err() {
                    return None; // writer gone: shutting down
                }
            }
            () = f.shutdown.cancelled() => return None,
            () = async {
                match &lease_ended {
                    Some(l) => l.cancelled().await,
                    None => std::future::pending().await,
                }
            } => return None,
            () = tokio::time::sleep(KEEPALIVE) => {
                if f.sse {
                    return Some(Bytes::from_static(b": keepalive\n\n"));
                }
            }
        }
    }
}

fn render<'a>(
    events: impl IntoIterator<Item = &'a (Offset, murmur_core::Event)>,
    sse: bool,
) -> Bytes {
    let events = events.into_iter();
    let mut out = Vec::with_capacity(events.size_hint().0.max(1) * 512);
    for (off, ev) in events {
        if sse {
            out.extend_from_slice(format!("id: {off}\ndata: ").as_bytes());
        }
        // Serialising our own plain struct cannot fail; skip the event rather than panic.
        if serde_json::to_writer(&mut out, &crate::api::event_json(ev, Some(*off))).is_err() {
            continue;
        }
        out.extend_from_slice(if sse { b"\n\n" } else { b"\n" });
    }
    Bytes::from(out)
}
