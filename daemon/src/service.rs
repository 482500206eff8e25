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

/// Sends `WATCHDOG=1` every third of `timeout` for as long as the store writer answers
/// a ping within that third (a writer stuck on a hung disk stops the pings, and the
/// service manager restarts the node). Ends at `shutdown`.
pub async fn keep_alive(
    timeout: Duration,
    writer: crate::ingest::Handle,
    shutdown: CancellationToken,
) {
    let period = (timeout / 3).max(Duration::from_millis(100));
    let mut silent = false;
    loop {
        match tokio::time::timeout(period, writer.ping()).await {
            Ok(Ok(())) => {
                if silent {
                    tracing::info!("the store writer answers again: watchdog pings resume");
                    silent = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Ok(Err(_)) => return,
            Err(_) => {
                if !silent {
                    tracing::warn!(
                        waited = ?period,
                        "the store writer did not answer: no watchdog ping (the service manager restarts the node if this lasts)"
                    );
                }
                silent = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
