//! Serving connections so that no sender can lock others out.
//!
//! `axum::serve` keeps a connection for as long as the peer holds it open, and runs no timer of
//! its own, so a flood of connections that never send a byte (or send a header a byte at a
//! time) held every slot of the connection cap forever. Here every connection is tracked from
//! accept to close:
//!
//! - a connection is *idle* while no request of it is being handled: before its first request
//!   header is complete, and between keep-alive requests;
//! - an idle connection is closed once it has been idle for `http.idle_timeout_ms`, and hyper's
//!   header-read timer (`http.header_read_timeout_ms`) closes one whose header trickles in;
//! - at `http.max_connections` (or `http.max_connections_per_ip` for one address), a new
//!   connection takes the slot of the connection idle the longest (of that address first), so
//!   an idle flood only ever evicts itself; only when every connection is busy does accept wait
//!   (globally) or refuse (per address).
//!
//! The decisions live in [`Admission`] (pure, unit-tested); [`serve`] is the accept loop.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tower::ServiceExt;

/// What the accept loop enforces.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A request header must be complete this long after the connection went idle.
    pub header_read_timeout: Duration,
    /// An idle connection (no request being handled) is closed after this long.
    pub idle_timeout: Duration,
    /// How long a clean stop waits for requests being handled.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 1_024,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The address a connection came from, as `ConnectInfo<Peer>` in every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

type ConnId = u64;

#[derive(Debug)]
struct Conn {
    ip: IpAddr,
    /// Requests being handled (HTTP/2 may have several).
    busy: usize,
    /// When the connection last became idle; meaningful while `busy == 0`.
    idle_since: Instant,
    /// When its first byte arrived: a connection that has sent nothing is the first to go.
    first_byte: Option<Instant>,
    /// Whether a request of it was answered (an idle keep-alive connection, not a header
    /// still arriving).
    answered: bool,
}

/// How long a request header may be arriving before its connection can lose its slot: real
/// clients send a header at once, so one still incomplete after this is trickling.
const HEADER_GRACE: Duration = Duration::from_secs(1);

impl Conn {
    /// Eviction order when idle: lower goes first; `None` is not evicted.
    fn eviction_class(&self, now: Instant) -> Option<u8> {
        if self.busy > 0 {
            return None;
        }
        match self.first_byte {
            None => Some(0),
            Some(_) if self.answered => Some(1),
            Some(first) if now.duration_since(first) >= HEADER_GRACE => Some(1),
            Some(_) => None,
        }
    }
}

/// Why a connection was let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Its slot went to a newer connection.
    Evicted,
    /// Idle past `http.idle_timeout_ms`.
    IdleTimeout,
}

/// What to do with a connection just accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Serve it; close the listed connections (idle ones whose slots it takes).
    Yes { id: ConnId, evict: Vec<ConnId> },
    /// Its address holds `max_connections_per_ip` busy connections already.
    PerIpFull,
}

/// The table of open connections and the rules for taking and freeing their slots. Pure: the
/// caller passes the time, and closes what it is told to close.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            next_id: 0,
            conns: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Whether a new connection could be taken now (a free slot, or an idle one to evict).
    pub fn has_room(&self, now: Instant) -> bool {
        self.conns.len() < self.max_total
            || self.conns.values().any(|c| c.eviction_class(now).is_some())
    }

    /// Takes a slot for a connection from `ip`, evicting the longest-idle connections needed.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admit {
        let mut evict = Vec::new();
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            match self.oldest_idle(Some(ip), now) {
                Some(id) => {
                    self.remove(id);
                    evict.push(id);
                }
                None => return Admit::PerIpFull,
            }
        }
        if self.conns.len() >= self.max_total {
            // None idle: the caller waits for `has_room` before accepting; a race lets one
            // through.
            if let Some(id) = self.oldest_idle(None, now) {
                self.remove(id);
                evict.push(id);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            Conn {
                ip,
                busy: 0,
                idle_since: now,
                first_byte: None,
                answered: false,
            },
        );
        *self.per_ip.entry(ip).or_default() += 1;
        Admit::Yes { id, evict }
    }

    /// A request of `id` started.
    pub fn busy(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.busy += 1;
        }
    }

    /// The first byte of `id` arrived.
    pub fn received(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.first_byte.get_or_insert(now);
        }
    }

    /// A request of `id` was answered.
    pub fn idle(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.answered = true;
            c.busy = c.busy.saturating_sub(1);
            if c.busy == 0 {
                c.idle_since = now;
            }
        }
    }

    /// The connection closed; false when it had been evicted already.
    pub fn remove(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conns.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
        true
    }

    /// Connections idle for at least `timeout`, taken out of the table.
    pub fn expired(&mut self, timeout: Duration, now: Instant) -> Vec<ConnId> {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.busy == 0 && now.duration_since(c.idle_since) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.remove(*id);
        }
        ids
    }

    /// The connection to give up first: one that never sent a byte, then an idle keep-alive
    /// one or a header trickling past [`HEADER_GRACE`], each the longest idle first.
    fn oldest_idle(&self, ip: Option<IpAddr>, now: Instant) -> Option<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| ip.is_none_or(|ip| c.ip == ip))
            .filter_map(|(id, c)| Some(((c.eviction_class(now)?, c.idle_since, *id), *id)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, id)| id)
    }
}

/// The admission table shared by the accept loop, the connections and the reaper, with the
/// close signal of every open connection.
struct Tracker {
    state: Mutex<(Admission, HashMap<ConnId, oneshot::Sender<Close>>)>,
    /// Woken when a slot frees or a connection goes idle, for an accept loop waiting for room.
    room: Notify,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, (Admission, HashMap<ConnId, oneshot::Sender<Close>>)> {
        // A panic while holding this lock cannot leave the table inconsistent in a way that
        // matters more than refusing every connection would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, ids: &[ConnId], why: Close) {
        let mut guard = self.lock();
        for id in ids {
            if let Some(tx) = guard.1.remove(id) {
                let _ = tx.send(why);
            }
        }
        drop(guard);
        let reason = match why {
            Close::Evicted => "evicted",
            Close::IdleTimeout => "idle_timeout",
        };
        if !ids.is_empty() {
            metrics::counter!("audit_producer_connections_closed_total", "reason" => reason)
                .increment(ids.len() as u64);
        }
    }

    fn busy(self: &Arc<Self>, id: ConnId) -> BusyGuard {
        self.lock().0.busy(id);
        BusyGuard {
            tracker: self.clone(),
            id,
        }
    }

    fn closed(&self, id: ConnId) {
        let mut guard = self.lock();
        guard.0.remove(id);
        guard.1.remove(&id);
        let open = guard.0.open();
        drop(guard);
        metrics::gauge!("audit_producer_connections_open").set(open as f64);
        self.room.notify_waiters();
    }
}

/// Marks a request as being handled until the response is ready.
struct BusyGuard {
    tracker: Arc<Tracker>,
    id: ConnId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.tracker.lock().0.idle(self.id, Instant::now());
        self.tracker.room.notify_waiters();
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets requests being handled finish
/// (for at most `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) {
    let tracker = Arc::new(Tracker {
        state: Mutex::new((
            Admission::new(options.max_connections, options.max_connections_per_ip),
            HashMap::new(),
        )),
        room: Notify::new(),
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64);
    let builder = Arc::new(builder);
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(reap(tracker.clone(), options.idle_timeout));
    tokio::pin!(stop);
    loop {
        // Wait for room before taking a connection off the kernel's queue.
        loop {
            let notified = tracker.room.notified();
            if tracker.lock().0.has_room(Instant::now()) {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = &mut stop => return drain(tracker, drain_tx, options.drain_timeout, reaper).await,
            }
        }
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return drain(tracker, drain_tx, options.drain_timeout, reaper).await,
        };
        let (id, evict, close_rx) = {
            let mut guard = tracker.lock();
            match guard.0.admit(addr.ip(), Instant::now()) {
                Admit::Yes { id, evict } => {
                    let (tx, rx) = oneshot::channel();
                    guard.1.insert(id, tx);
                    let open = guard.0.open();
                    drop(guard);
                    metrics::gauge!("audit_producer_connections_open").set(open as f64);
                    (id, evict, rx)
                }
                Admit::PerIpFull => {
                    drop(guard);
                    metrics::counter!("audit_producer_connections_refused_total", "reason" => "per_ip").increment(1);
                    drop(stream);
                    continue;
                }
            }
        };
        tracker.close(&evict, Close::Evicted);
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            addr,
            id,
            app.clone(),
            tracker.clone(),
            builder.clone(),
            close_rx,
            drain_rx.clone(),
        ));
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    id: ConnId,
    app: Router,
    tracker: Arc<Tracker>,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    mut close_rx: oneshot::Receiver<Close>,
    mut drain_rx: tokio::sync::watch::Receiver<bool>,
) {
    let service_tracker = tracker.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let busy = service_tracker.busy(id);
            request.extensions_mut().insert(ConnectInfo(Peer(addr)));
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(busy);
                response
            }
        });
    let io = Watched {
        stream,
        tracker: tracker.clone(),
        id,
        seen: false,
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
                break;
            }
            why = &mut close_rx, if !closing => {
                closing = true;
                if why.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            changed = drain_rx.changed(), if !closing => {
                if changed.is_err() || *drain_rx.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    tracker.closed(id);
}

/// A connection's stream that tells the tracker when its first byte arrives.
struct Watched {
    stream: tokio::net::TcpStream,
    tracker: Arc<Tracker>,
    id: ConnId,
    seen: bool,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if !self.seen && buf.filled().len() > before {
            self.seen = true;
            self.tracker.lock().0.received(self.id, Instant::now());
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Closes connections idle past the timeout, checking a few times per timeout.
async fn reap(tracker: Arc<Tracker>, timeout: Duration) {
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let expired = tracker.lock().0.expired(timeout, Instant::now());
        tracker.close(&expired, Close::IdleTimeout);
    }
}

async fn drain(
    tracker: Arc<Tracker>,
    drain_tx: tokio::sync::watch::Sender<bool>,
    timeout: Duration,
    reaper: tokio::task::JoinHandle<()>,
) {
    reaper.abort();
    let _ = drain_tx.send(true);
    let deadline = Instant::now() + timeout;
    while tracker.lock().0.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn id(a: Admit) -> (ConnId, Vec<ConnId>) {
        match a {
            Admit::Yes { id, evict } => (id, evict),
            Admit::PerIpFull => panic!("refused"),
        }
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_and_never_a_busy_one() {
        let t0 = Instant::now();
        let mut a = Admission::new(3, 10);
        let (busy, _) = id(a.admit(ip(1), t0));
        a.busy(busy);
        let (old, _) = id(a.admit(ip(2), t0 + Duration::from_secs(1)));
        let (_newer, _) = id(a.admit(ip(3), t0 + Duration::from_secs(2)));
        assert!(a.has_room(t0));
        let (_, evicted) = id(a.admit(ip(4), t0 + Duration::from_secs(3)));
        assert_eq!(evicted, vec![old]);
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn when_every_connection_is_busy_there_is_no_room() {
        let t0 = Instant::now();
        let mut a = Admission::new(2, 10);
        for n in 0..2 {
            let (c, _) = id(a.admit(ip(n), t0));
            a.busy(c);
        }
        assert!(!a.has_room(t0));
    }

    #[test]
    fn a_connection_that_sent_nothing_goes_before_one_whose_header_is_arriving() {
        let t0 = Instant::now();
        let mut a = Admission::new(2, 10);
        let (sender, _) = id(a.admit(ip(1), t0));
        let (silent, _) = id(a.admit(ip(2), t0 + Duration::from_millis(10)));
        a.received(sender, t0 + Duration::from_millis(20));
        let (_, evicted) = id(a.admit(ip(3), t0 + Duration::from_millis(30)));
        assert_eq!(
            evicted,
            vec![silent],
            "the older connection was sending its header"
        );
        // A header still incomplete past the grace is fair game, like an idle keep-alive.
        let later = t0 + HEADER_GRACE + Duration::from_millis(30);
        let newest = a.conns.keys().copied().max().unwrap_or_default();
        a.received(newest, later);
        let (_, evicted) = id(a.admit(ip(4), later + Duration::from_millis(1)));
        assert_eq!(evicted, vec![sender]);
    }

    #[test]
    fn one_address_only_evicts_its_own_idle_connections() {
        let t0 = Instant::now();
        let mut a = Admission::new(100, 2);
        let (other, _) = id(a.admit(ip(9), t0));
        let (first, _) = id(a.admit(ip(1), t0 + Duration::from_secs(1)));
        let (second, _) = id(a.admit(ip(1), t0 + Duration::from_secs(2)));
        let (third, evicted) = id(a.admit(ip(1), t0 + Duration::from_secs(3)));
        assert_eq!(evicted, vec![first]);
        assert!(a.conns.contains_key(&other));
        // Both of its remaining connections busy: the next one from it is refused.
        a.busy(second);
        a.busy(third);
        assert_eq!(
            a.admit(ip(1), t0 + Duration::from_secs(4)),
            Admit::PerIpFull
        );
    }

    #[test]
    fn idle_time_counts_from_the_last_answer() {
        let t0 = Instant::now();
        let mut a = Admission::new(10, 10);
        let (c, _) = id(a.admit(ip(1), t0));
        a.busy(c);
        assert!(a
            .expired(Duration::from_secs(5), t0 + Duration::from_secs(60))
            .is_empty());
        a.idle(c, t0 + Duration::from_secs(60));
        assert!(a
            .expired(Duration::from_secs(5), t0 + Duration::from_secs(62))
            .is_empty());
        assert_eq!(
            a.expired(Duration::from_secs(5), t0 + Duration::from_secs(65)),
            vec![c]
        );
        assert_eq!(a.open(), 0);
        assert!(!a.remove(c), "an expired connection is gone from the table");
    }
}
