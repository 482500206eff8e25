//! Running under a service manager: systemd's notify protocol (`Type=notify`).
//!
//! `READY=1` once the store is open and the API answers, `WATCHDOG=1` while the store
//! writer keeps taking work off its queue (every third of `WatchdogSec`), and
//! `STOPPING=1` at shutdown. Outside systemd (`NOTIFY_SOCKET` unset) every call is a
//! no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells the service manager that the node is ready (a status line with it).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the node is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The watchdog interval the service manager asked for (`WATCHDOG_USEC`, for this
/// process), if any.
pub fn watchdog() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every third of `timeout` for as long as the store writer moves:
/// it answers a ping (queued behind its work) within that third, or it committed
/// something since the last look (`commits`: a writer busy with a long queue is alive).
/// A writer stuck on a hung disk does neither; the pings stop and the service manager
/// restarts the node. Ends at `shutdown`.
pub async fn keep_alive(
    timeout: Duration,
    writer: crate::ingest::Handle,
    commits: prometheus_client::metrics::counter::Counter,
    shutdown: CancellationToken,
) {
    let period = (timeout / 3).max(Duration::from_millis(100));
    let mut silent = false;
    let mut seen = commits.get();
    loop {
        let answered = tokio::time::timeout(period, writer.ping()).await;
        let moved = commits.get() != seen;
        seen = commits.get();
        match answered {
            Ok(Err(_)) => return,
            Err(_) if !moved => {
                if !silent {
                    tracing::warn!(
                        waited = ?period,
                        "the store writer neither answered nor committed: no watchdog ping (the service manager restarts the node if this lasts)"
                    );
                }
                silent = true;
            }
            Ok(Ok(())) | Err(_) => {
                if silent {
                    tracing::info!("the store writer answers again: watchdog pings resume");
                    silent = false;
                }
                send(&[NotifyState::Watchdog]);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
