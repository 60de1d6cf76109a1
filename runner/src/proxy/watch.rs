//! How long a client connection may sit: the request-head timeout and the idle timeout, kept by
//! one watchdog per connection that sleeps until the next deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use super::Limits;

/// No such moment.
const NEVER: u64 = u64::MAX;

/// Why a connection's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head began and did not end in time: close the connection.
    RequestHeaders,
    /// No request for the idle timeout: close it gently.
    Idle,
}

/// What one connection is doing, as its watchdog sees it. Moments are milliseconds since the
/// connection opened.
pub struct Activity {
    opened: Instant,
    /// Whether the request-head timeout applies: HTTP/1 only. An HTTP/2 client sends frames
    /// (settings, window updates, pings) between requests, which are not request heads; its
    /// stalled heads are bounded by the idle timeout instead.
    watch_heads: bool,
    in_flight: AtomicUsize,
    quiet_since: AtomicU64,
    head_since: AtomicU64,
    changed: Notify,
}

impl Activity {
    pub fn new(watch_heads: bool) -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            watch_heads,
            in_flight: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NEVER),
            changed: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// Bytes arrived: with no request in flight, they begin a request head.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == NEVER {
            self.head_since.store(self.now(), Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// A request's head is complete; the request is in flight until the guard is dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NEVER, Ordering::Relaxed);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Resolves when the connection has sat longer than `limits` allow.
    pub async fn expired(&self, limits: &Limits) -> Expired {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the state, so no change slips past.
            changed.as_mut().enable();
            let head_since = self.head_since.load(Ordering::Relaxed);
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                None
            } else if self.watch_heads && head_since != NEVER {
                Some((head_since, limits.request_headers_timeout, Expired::RequestHeaders))
            } else {
                Some((self.quiet_since.load(Ordering::Relaxed), limits.idle_timeout, Expired::Idle))
            };
            match deadline {
                None => changed.await,
                Some((since, allowed, why)) => {
                    let at = self.opened + Duration::from_millis(since) + allowed;
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => return why,
                    }
                }
            }
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            activity.quiet_since.store(activity.now(), Ordering::Relaxed);
        }
        activity.changed.notify_one();
    }
}

/// A client stream that tells its [`Activity`] when bytes arrive.
pub struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(stream: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { stream, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_expires_after_the_idle_timeout() {
        let activity = Activity::new(true);
        let started = Instant::now();
        assert_eq!(activity.expired(&limits()).await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_head_must_end_within_the_head_timeout() {
        let activity = Activity::new(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.bytes_arrived();
        let started = Instant::now();
        assert_eq!(activity.expired(&limits()).await, Expired::RequestHeaders);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // HTTP/2 frames between requests are no request head.
        let h2 = Activity::new(false);
        h2.bytes_arrived();
        assert_eq!(h2.expired(&limits()).await, Expired::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_is_in_flight_and_idle_counts_from_its_end() {
        let activity = Activity::new(true);
        activity.bytes_arrived();
        let request = activity.request_started();
        let watch = {
            let activity = activity.clone();
            tokio::spawn(async move { (activity.expired(&limits()).await, Instant::now()) })
        };
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watch.is_finished(), "a long request is not idle");
        let ended = Instant::now();
        drop(request);
        let (why, at) = watch.await.unwrap();
        assert_eq!(why, Expired::Idle);
        assert_eq!(at - ended, Duration::from_secs(60));
    }
}
