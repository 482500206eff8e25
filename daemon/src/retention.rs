//! The retention task: every `store.prune_interval`, plans the cuts the policy asks for
//! (`murmur_core::retention`, reading the store on the blocking pool) and has the
//! store's writer carry them out, in queue order with everything else it writes.

use std::sync::Arc;
use std::time::Duration;

use murmur_core::ReadStore;
use murmur_core::retention::Policy;
use murmur_store::RocksStore;
use tokio_util::sync::CancellationToken;

use crate::clock::NodeClock;
use crate::ingest;
use crate::metrics::{Metrics, RuleLabel};

/// Runs passes until `shutdown`.
pub async fn run(
    policy: Policy,
    every: Duration,
    store: Arc<RocksStore>,
    writer: ingest::Handle,
    clock: Arc<NodeClock>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    if policy.keeps_everything() {
        return;
    }
    let policy = Arc::new(policy);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bytes pruned since the last compaction.
    let mut uncompacted = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match pass(&policy, &store, &writer, &clock, &metrics).await {
            Ok(pruned) => uncompacted += pruned.bytes,
            Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one retries"),
        }
        if uncompacted > 0 && uncompacted >= compact_after(store.disk_bytes()) {
            uncompacted = 0;
            let s = store.clone();
            let t0 = std::time::Instant::now();
            let before = s.disk_bytes();
            match tokio::task::spawn_blocking(move || s.compact_pruned()).await {
                Ok(Ok(())) => tracing::info!(
                    before,
                    after = store.disk_bytes(),
                    secs = t0.elapsed().as_secs_f64(),
                    "compacted after pruning"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "compaction after pruning failed"),
                Err(e) => tracing::warn!(error = %e, "compaction after pruning failed"),
            }
        }
    }
}

/// Pruned bytes after which the store is compacted: a quarter of its size on disk (so
/// a compaction, which rewrites what remains, costs at most about four times what was
/// pruned), and at least 1 MiB.
fn compact_after(disk: u64) -> u64 {
    (disk / 4).max(1 << 20)
}

/// One pass: plan, prune, count.
pub async fn pass(
    policy: &Arc<Policy>,
    store: &Arc<RocksStore>,
    writer: &ingest::Handle,
    clock: &NodeClock,
    metrics: &Metrics,
) -> Result<murmur_core::Pruned, String> {
    let now = clock.wall_ms();
    let plan = {
        let (policy, store) = (policy.clone(), store.clone());
        tokio::task::spawn_blocking(move || {
            let logs = store.logs().map_err(|e| e.to_string())?;
            policy.plan(&logs, now, &*store).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??
    };
    if plan.is_empty() {
        return Ok(murmur_core::Pruned::default());
    }
    // Counted by rule: prune each rule's cuts together.
    let rules = policy.rules();
    let mut total = murmur_core::Pruned::default();
    for (i, rule) in rules.iter().enumerate() {
        let cuts: Vec<_> = plan
            .iter()
            .filter(|p| p.rule == i)
            .map(|p| p.cut.clone())
            .collect();
        if cuts.is_empty() {
            continue;
        }
        let done = writer.prune(cuts).await?;
        let label = RuleLabel {
            rule: rule.pattern.as_str().to_owned(),
        };
        metrics
            .pruned_events
            .get_or_create(&label)
            .inc_by(done.events);
        metrics
            .pruned_bytes
            .get_or_create(&label)
            .inc_by(done.bytes);
        total.events += done.events;
        total.bytes += done.bytes;
    }
    metrics.prune_passes.inc();
    tracing::info!(
        logs = plan.len(),
        events = total.events,
        bytes = total.bytes,
        "retention pruned"
    );
    Ok(total)
}
