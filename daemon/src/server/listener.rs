//! The control socket's listener: a bounded number of open connections, and a deadline
//! on clients that stop reading.
//!
//! Every accepted connection holds a slot until it closes. When all slots are taken the
//! listener stops accepting: further clients wait in the kernel's backlog and take no
//! descriptor of ours, so idle or abandoned local clients can never use up the
//! descriptors RocksDB needs to write (1,100 idle connections under the common limit of
//! 1,024 open files used to make every publish fail until a restart).
//!
//! A connection whose client stops reading (a follower that stalled, a dead peer whose
//! socket buffer is full) is closed once a write has waited `stall` without progress,
//! so it gives its slot, and its follower slot, back. A connection with no follow
//! stream open that sends and receives nothing for `idle` (an idle keep-alive, a
//! client that connected and went away) is closed too: hyper has no such deadline
//! unless given a timer, and axum's `serve` gives it none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A socket listener [`Capped`] can wrap: the control socket (Unix) or the dashboard's
/// TCP address.
pub trait RawListener: Send + 'static {
    /// An accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A peer's address.
    type Addr: Send;
    /// Accepts the next connection.
    fn accept_raw(&mut self)
    -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send;
    /// The bound address.
    fn local(&self) -> io::Result<Self::Addr>;
}

/// The one way every listener type here accepts: tokio's own `accept`.
macro_rules! raw_listener {
    ($listener:ty, $stream:ty, $addr:ty) => {
        impl RawListener for $listener {
            type Stream = $stream;
            type Addr = $addr;
            fn accept_raw(
                &mut self,
            ) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
                self.accept()
            }
            fn local(&self) -> io::Result<Self::Addr> {
                self.local_addr()
            }
        }
    };
}
raw_listener!(UnixListener, UnixStream, tokio::net::unix::SocketAddr);
raw_listener!(TcpListener, tokio::net::TcpStream, std::net::SocketAddr);

/// A listener that holds at most `slots` connections open.
pub struct Capped<L = UnixListener> {
    inner: L,
    slots: Arc<Semaphore>,
    stall: Duration,
    idle: Duration,
}

impl<L: RawListener> Capped<L> {
    /// Holds `inner`'s connections to `slots` (shared with another listener: the
    /// control socket and the TCP address together hold at most the slots the
    /// descriptor budget allows); a write that waits `stall` for the client fails and
    /// closes its connection, and so does `idle` without any traffic and no follow
    /// stream.
    pub fn sharing(inner: L, slots: Arc<Semaphore>, stall: Duration, idle: Duration) -> Self {
        Capped {
            inner,
            slots,
            stall,
            idle,
        }
    }
}

/// Per-connection facts a handler can reach (axum's `ConnectInfo<ConnMeta>`): a follow
/// stream marks its connection as streaming, which exempts it from the idle deadline
/// (a quiet topic may send nothing for a long time; the write deadline still holds).
#[derive(Debug, Clone, Default)]
pub struct ConnMeta {
    streams: Arc<AtomicUsize>,
}

impl ConnMeta {
    /// Marks the connection as streaming until the guard is dropped.
    pub fn streaming(&self) -> Streaming {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Streaming(self.streams.clone())
    }

    fn is_streaming(&self) -> bool {
        self.streams.load(Ordering::Acquire) > 0
    }
}

/// See [`ConnMeta::streaming`].
#[derive(Debug)]
pub struct Streaming(Arc<AtomicUsize>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<L: RawListener>
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Capped<L>>>
    for ConnMeta
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Capped<L>>) -> Self {
        stream.io().meta.clone()
    }
}

/// An accepted connection; its slot is freed when it is dropped.
pub struct Conn<S = UnixStream> {
    stream: S,
    _slot: OwnedSemaphorePermit,
    stall: Duration,
    /// Armed when a write finds the client not reading; cleared by any progress.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    idle: Duration,
    /// Armed when a read finds nothing to read and no stream is open; when it fires
    /// early (traffic since), it is moved to `active + idle`.
    idle_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last read or write that moved bytes.
    active: tokio::time::Instant,
    meta: ConnMeta,
}

impl<S> Conn<S> {
    /// A write could not proceed: wait, unless the client has not read for `stall`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let stall = self.stall;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, p: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match p {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.deadline = None;
                self.active = tokio::time::Instant::now();
                ready
            }
        }
    }

    /// Nothing to read: wait, unless the connection has been idle for `idle` with no
    /// follow stream open.
    fn idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.meta.is_streaming() {
            self.idle_deadline = None;
            return Poll::Pending;
        }
        let until = self.active + self.idle;
        let deadline = self
            .idle_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        loop {
            match deadline.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if tokio::time::Instant::now() < until => {
                    deadline.as_mut().reset(until)
                }
                Poll::Ready(()) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection was idle",
                    )));
                }
            }
        }
    }
}

impl<L: RawListener> axum::serve::Listener for Capped<L> {
    type Io = Conn<L::Stream>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // A slot first: without one, the next client stays in the backlog.
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(s) => s,
            // The semaphore is never closed; if it were, accept nothing more.
            Err(_) => std::future::pending().await,
        };
        let mut failures = 0u64;
        loop {
            match self.inner.accept_raw().await {
                Ok((stream, addr)) => {
                    return (
                        Conn {
                            stream,
                            _slot: slot,
                            stall: self.stall,
                            deadline: None,
                            idle: self.idle,
                            idle_deadline: None,
                            active: tokio::time::Instant::now(),
                            meta: ConnMeta::default(),
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // EMFILE and the like: wait for descriptors to come back, and say so
                    // (once, then rarely).
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot accept an API connection; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => this.idle(cx),
            ready => {
                this.active = tokio::time::Instant::now();
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.progress(p, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.progress(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.stream).poll_flush(cx);
        this.progress(p, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open files to the hard limit (at most 65,536) and returns
/// the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let want = lim.rlim_max.min(65_536);
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return want;
        }
    }
    lim.rlim_cur
}

/// The connection cap that leaves `reserved` descriptors for RocksDB, libp2p and the
/// daemon's own files under a limit of `nofile`: `configured`, or less when the limit
/// is low (at least 8).
pub fn connection_cap(configured: usize, nofile: u64, reserved: u64) -> usize {
    let room = usize::try_from(nofile.saturating_sub(reserved)).unwrap_or(usize::MAX);
    configured.min(room).max(8)
}

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn the_cap_leaves_the_reserve() {
        assert_eq!(connection_cap(256, 65_536, 700), 256);
        assert_eq!(connection_cap(256, 1024, 900), 124);
        assert_eq!(connection_cap(256, 300, 900), 8);
    }
}
