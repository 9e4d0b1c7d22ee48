//! [`SimServer`]: a simulator bound to a port and serving in the background, with the
//! library's view of its stats and config.

use super::{router, SimState};
use crate::config::SimConfig;
use crate::stats::{Stats, Timeline};
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Listen backlog: large enough that 10,000 clients connecting at once are not dropped.
const LISTEN_BACKLOG: u32 = 16_384;
/// How long `shutdown` waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running simulator. Dropping it stops the server too (without waiting).
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimServer {
    /// Binds `bind` (port 0 picks a free port) and serves in the background on the current
    /// tokio runtime.
    pub async fn start(config: SimConfig, bind: SocketAddr) -> anyhow::Result<SimServer> {
        config.validate().map_err(anyhow::Error::msg)?;
        let socket = if bind.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(bind)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(config));
        let app = router(Arc::clone(&state));
        let (stop, stopped) = oneshot::channel::<()>();
        // No Nagle: SSE chunks and small JSON answers must leave at once.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(SimServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` without a trailing slash; API paths (`/v1beta/models/...`) go after it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same data as `GET /stats`.
    pub fn stats(&self) -> Stats {
        self.state.stats.snapshot()
    }

    /// The same data as `GET /stats/timeline`.
    pub fn timeline(&self) -> Timeline {
        self.state.stats.timeline()
    }

    /// Zeroes the stats (as `POST /stats/reset`); quota windows are kept.
    pub fn reset_stats(&self) {
        self.state.stats.reset();
    }

    /// Clears the quota windows of every key (as `POST /quota/reset`).
    pub fn reset_quota(&self) {
        self.state.reset_quota();
    }

    /// The current config.
    pub fn config(&self) -> SimConfig {
        (*self.state.config()).clone()
    }

    /// Changes the config in place; requests that already started keep the config they read.
    pub fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut current = self.state.config.write();
        let mut next = (**current).clone();
        f(&mut next);
        *current = Arc::new(next);
    }

    /// The shared state, e.g. to mount [`router`] elsewhere.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Logs one line every `every` with the request rate and outcome counts of that interval.
    pub fn spawn_rate_logger(&self, every: Duration) -> JoinHandle<()> {
        let stats = Arc::clone(&self.state.stats);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            let mut last = stats.snapshot();
            loop {
                ticker.tick().await;
                let now = stats.snapshot();
                // A reset in between makes counters go backwards; count from zero then.
                let delta = |a: u64, b: u64| if a >= b { a - b } else { a };
                let requests = delta(now.requests, last.requests);
                tracing::info!(
                    requests,
                    rate_per_s = requests as f64 / every.as_secs_f64(),
                    ok = delta(now.ok, last.ok),
                    rate_limited = delta(now.rate_limited, last.rate_limited),
                    errors = delta(now.errors, last.errors),
                    in_flight = now.in_flight,
                    "gemini-sim request rate"
                );
                last = now;
            }
        })
    }

    /// Stops accepting, wakes sleeping requests (they get 503) and waits up to 5 s for open
    /// connections before dropping them.
    pub async fn shutdown(mut self) {
        self.state.begin_shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.state.begin_shutdown();
            let _ = stop.send(());
        }
    }
}
