//! The accept loop: connection limits, timeouts and graceful shutdown.
//!
//! The listener and the shutdown signal are inputs, so tests bind port 0 and
//! stop the server themselves. Each connection is served by hyper-util's auto
//! builder (HTTP/1.1 and HTTP/2) and holds one of `max_connections` slots
//! while it is open, so no connection may hold one for nothing:
//!
//! * one that has not delivered a whole request head within
//!   `header_read_timeout_ms` of opening is closed, whatever protocol it
//!   speaks or has yet to announce (hyper times out HTTP/1 heads on its own,
//!   but neither the protocol sniff nor HTTP/2 has a deadline);
//! * one with no request in flight for `idle_timeout_ms` (at most a minute)
//!   is shut down gracefully (HTTP/2 gets a GOAWAY); HTTP/2 peers that stop
//!   answering pings are dropped sooner.
//!
//! A request must be answered within `request_timeout_ms` (see `http`). On
//! shutdown the listener closes at once and connections get up to
//! `shutdown_grace_ms` to finish their requests.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_actors::clock::monotonic;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::http::App;

pub struct ServerLimits {
    /// A new connection must deliver a whole request head within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is shut down.
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
}

/// How long an HTTP/2 peer has to answer a keep-alive ping.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout.min(Duration::from_secs(30)))
        .keep_alive_timeout(PING_TIMEOUT);
    let builder = Arc::new(builder);
    let limits = Arc::new(limits);
    let (stop, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, limits, mut stopping) = (
            app.clone(),
            Arc::clone(&builder),
            Arc::clone(&limits),
            stopping.clone(),
        );
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |req| {
                    let app = app.clone();
                    let busy = activity.begin();
                    async move {
                        let response = app.handle(req, peer).await;
                        drop(busy);
                        Ok::<_, Infallible>(response)
                    }
                })
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::pin!(connection);
            // Once shutting down, the connection gets until then to finish.
            let mut cut_off: Option<Instant> = None;
            loop {
                let watchdog = async {
                    match cut_off {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => activity.expired(&limits).await,
                    }
                };
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    () = watchdog => match cut_off {
                        Some(_) => break,
                        None if !activity.served() => {
                            tracing::debug!(%peer, "closing a connection that sent no request in time");
                            break;
                        }
                        None => {
                            connection.as_mut().graceful_shutdown();
                            cut_off = Some(monotonic() + limits.header_read_timeout);
                        }
                    },
                    changed = stopping.changed(), if cut_off.is_none() => {
                        if changed.is_err() || *stopping.borrow() {
                            connection.as_mut().graceful_shutdown();
                            cut_off = Some(monotonic() + limits.shutdown_grace);
                        }
                    }
                }
            }
            drop(slot);
        });
    }

    drop(listener);
    let _ = stop.send(true);
    tracing::info!(target: crate::telemetry::LIFECYCLE, "stopped accepting; draining in-flight requests");
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(target: crate::telemetry::LIFECYCLE, "shutdown grace period over; closing remaining connections");
    }
}

/// What the watchdog knows of one connection. Requests only update
/// atomics; the watchdog reads them when a deadline it slept until comes,
/// so a busy connection costs it one timer per `idle_timeout`, not a wake-up
/// per request.
struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `opened` when the last request finished.
    idle_since_ms: AtomicU64,
    served: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: monotonic(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn begin(self: &Arc<Self>) -> BusyGuard {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        BusyGuard(Arc::clone(self))
    }

    fn served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Resolves once the connection has been without a request for too long:
    /// `header_read_timeout` before its first, `idle_timeout` after one.
    /// No sleep is longer than `idle_timeout`: an idle spell that begins
    /// while it sleeps (a first request served, one in flight ending) can
    /// then not expire before it wakes, and is measured from its start.
    async fn expired(&self, limits: &ServerLimits) {
        loop {
            let now = monotonic();
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Requests have their own deadline.
                None
            } else if self.served() {
                let idle = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                Some(self.opened + idle + limits.idle_timeout)
            } else {
                Some(self.opened + limits.header_read_timeout)
            };
            match deadline {
                Some(at) if at <= now => return,
                Some(at) => tokio::time::sleep_until(at.min(now + limits.idle_timeout)).await,
                None => tokio::time::sleep_until(now + limits.idle_timeout).await,
            }
        }
    }
}

/// A request in flight; finishing it (dropping this) starts the idle clock.
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(since, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
