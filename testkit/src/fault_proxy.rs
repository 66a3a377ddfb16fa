//! A fault-injecting TCP proxy for tests: it listens on a free loopback
//! port, relays every connection to one target, and misbehaves on demand
//! the way real networks do. The fault is switched at run time
//! ([`FaultProxy::set_fault`]) and applies at once to every connection,
//! open or new:
//!
//! - [`Fault::PassThrough`]: relay both ways, untouched.
//! - [`Fault::Latency`]: hold every chunk, both ways, this long before
//!   relaying it (a slow path; throughput suffers as on a real one).
//! - [`Fault::Stall`]: keep both sockets open and relay nothing either way
//!   until the fault changes (a frozen middlebox; what was read is
//!   delivered afterwards, nothing is lost).
//! - [`Fault::Lie`]: relay the first `after` device→server bytes of each
//!   connection, then keep reading the device's bytes and throw them away,
//!   while still relaying server→device: a store-and-forward network that
//!   acknowledges at the TCP level and never delivers. A device that
//!   forgets data once its socket took it loses it here; one that waits for
//!   the application's acknowledgement does not.
//! - [`Fault::Cut`]: relay the first `at` device→server bytes of each
//!   connection, then close both sides.
//!
//! [`FaultProxy::cut_all`] closes every open connection now, whatever the
//! fault (a link that goes away). Dropping the proxy closes everything.
//!
//! "Device" is the side that connects to the proxy, "server" the target.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Bytes read at a time from either side.
const CHUNK: usize = 16 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors), so that a
/// persistent failure does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// How the proxy treats the bytes it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Relay both ways, untouched.
    #[default]
    PassThrough,
    /// Hold every chunk this long, both ways, before relaying it.
    Latency(Duration),
    /// Relay nothing either way; keep the sockets open.
    Stall,
    /// Relay the first `after` device→server bytes of each connection,
    /// accept and discard the rest; relay server→device untouched.
    Lie {
        /// Device→server bytes delivered per connection.
        after: u64,
    },
    /// Relay the first `at` device→server bytes of each connection, then
    /// close both sides.
    Cut {
        /// Device→server bytes delivered per connection.
        at: u64,
    },
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Device→server bytes delivered to the server.
    pub upstream_delivered: u64,
    /// Device→server bytes accepted and thrown away ([`Fault::Lie`]).
    pub upstream_discarded: u64,
    /// Server→device bytes delivered to the device.
    pub downstream_delivered: u64,
    /// Connections the proxy closed ([`Fault::Cut`], [`FaultProxy::cut_all`]).
    pub cuts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    upstream_delivered: AtomicU64,
    upstream_discarded: AtomicU64,
    downstream_delivered: AtomicU64,
    cuts: AtomicU64,
}

/// A running proxy; dropping it closes its listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Bumped to close every open connection.
    cut: watch::Sender<u64>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and relays to `target`, passing
    /// everything through until told otherwise. Must be called within a
    /// tokio runtime, which runs the proxy.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::PassThrough);
        let (cut, _) = watch::channel(0);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            fault.subscribe(),
            cut.subscribe(),
            Arc::clone(&counters),
        ));
        Ok(Self {
            addr,
            fault,
            cut,
            counters,
            accept,
        })
    }

    /// Where devices connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches every connection, open or new, to `fault`.
    pub fn set_fault(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Closes every open connection now; new ones are accepted as before.
    pub fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Counts so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            upstream_delivered: c.upstream_delivered.load(Ordering::Relaxed),
            upstream_discarded: c.upstream_discarded.load(Ordering::Relaxed),
            downstream_delivered: c.downstream_delivered.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops
        // (and so aborts) every relay, closing their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    cut: watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((device, _)) => {
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    relays.spawn(relay(device, target, fault.clone(), cut.clone(), Arc::clone(&counters)));
                }
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            },
            // Reap finished relays so the set does not grow without bound.
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// Why a relay stopped early.
#[derive(Debug)]
enum Stop {
    /// The proxy closed the connection on purpose.
    Cut,
    /// A socket failed.
    Io,
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

/// One connection: both directions until both ends have closed, a socket
/// fails, or the proxy cuts it. Returning drops both sockets.
async fn relay(
    device: TcpStream,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    mut cut: watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    cut.mark_unchanged();
    // The device sees its connection closed if the target is down.
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = device.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (device_rx, device_tx) = device.into_split();
    let (server_rx, server_tx) = server.into_split();
    let up = forward(device_rx, server_tx, Direction::Up, fault.clone(), &counters);
    let down = forward(server_rx, device_tx, Direction::Down, fault, &counters);
    let cut_now = async {
        // An error means the proxy was dropped: the task is aborted anyway.
        let _ = cut.changed().await;
    };
    tokio::select! {
        ended = async { tokio::try_join!(up, down) } => {
            if matches!(ended, Err(Stop::Cut)) {
                counters.cuts.fetch_add(1, Ordering::Relaxed);
            }
        }
        () = cut_now => {
            counters.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Device → server: the bytes [`Fault::Lie`] and [`Fault::Cut`] count.
    Up,
    /// Server → device.
    Down,
}

/// Relays one direction until end of stream (then half-closes the other
/// side, as TCP would), a failure, or a cut.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    mut fault: watch::Receiver<Fault>,
    counters: &Counters,
) -> Result<(), Stop> {
    let mut buf = vec![0; CHUNK];
    // Bytes read from this direction's source so far.
    let mut read: u64 = 0;
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Stall => {
                if fault.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Fault::Cut { at } if direction == Direction::Up && read >= at => return Err(Stop::Cut),
            _ => {}
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            // Reading is cancel-safe: look at the new fault before reading on.
            changed = fault.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let chunk = &buf[..n];
        let already = read;
        read += n as u64;
        // The fault when the bytes arrived decides their fate.
        let now = *fault.borrow();
        let deliver = match (now, direction) {
            (Fault::Latency(delay), _) => {
                tokio::time::sleep(delay).await;
                chunk
            }
            (Fault::Lie { after }, Direction::Up) => {
                let keep = keep(after, already, n);
                counters
                    .upstream_discarded
                    .fetch_add((n - keep) as u64, Ordering::Relaxed);
                &chunk[..keep]
            }
            (Fault::Cut { at }, Direction::Up) => &chunk[..keep(at, already, n)],
            _ => chunk,
        };
        to.write_all(deliver).await?;
        let delivered = match direction {
            Direction::Up => &counters.upstream_delivered,
            Direction::Down => &counters.downstream_delivered,
        };
        delivered.fetch_add(deliver.len() as u64, Ordering::Relaxed);
    }
}

/// How many of `n` bytes, following `already` bytes, fall within the first
/// `limit`.
fn keep(limit: u64, already: u64, n: usize) -> usize {
    usize::try_from(limit.saturating_sub(already)).map_or(n, |room| room.min(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wait::{eventually, throughout};
    use std::time::Instant;

    /// A plain echo server: every byte it reads it writes back, and it
    /// counts them.
    async fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                count.fetch_add(n as u64, Ordering::Relaxed);
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, received)
    }

    /// Bounds every wait, so that a broken proxy fails the test instead of
    /// hanging it.
    const WAIT: Duration = Duration::from_secs(10);

    async fn read_exactly(socket: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(WAIT, socket.read_exact(&mut buf))
            .await
            .expect("the bytes arrive")
            .unwrap();
        buf
    }

    /// Reads until the peer closes; returns what arrived.
    async fn read_to_close(socket: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, socket.read_to_end(&mut buf))
            .await
            .expect("the connection closes")?;
        Ok(buf)
    }

    #[tokio::test]
    async fn pass_through_relays_both_ways_untouched() {
        let (echo, received) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut device = TcpStream::connect(proxy.addr()).await.unwrap();
        let message: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        device.write_all(&message).await.unwrap();
        assert_eq!(read_exactly(&mut device, message.len()).await, message);
        assert_eq!(received.load(Ordering::Relaxed), message.len() as u64);
        let stats = proxy.stats();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.upstream_delivered, 100_000);
        assert_eq!(stats.downstream_delivered, 100_000);
    }

    #[tokio::test]
    async fn latency_holds_every_chunk_before_relaying_it() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        proxy.set_fault(Fault::Latency(Duration::from_millis(200)));
        let mut device = TcpStream::connect(proxy.addr()).await.unwrap();
        let sent = Instant::now();
        device.write_all(b"ping").await.unwrap();
        assert_eq!(read_exactly(&mut device, 4).await, b"ping");
        // Held once on the way there and once on the way back: a lower
        // bound the proxy guarantees, whatever the machine's load.
        assert!(sent.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_stall_keeps_the_connection_open_and_delivers_nothing_until_lifted() {
        let (echo, received) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut device = TcpStream::connect(proxy.addr()).await.unwrap();
        device.write_all(b"before").await.unwrap();
        assert_eq!(read_exactly(&mut device, 6).await, b"before");

        proxy.set_fault(Fault::Stall);
        device.write_all(b"during").await.unwrap();
        // Relayed, the bytes would reach the echo server on loopback within
        // a millisecond; 300 ms leaves room for a loaded machine.
        throughout("nothing passes a stall", Duration::from_millis(300), || async {
            received.load(Ordering::Relaxed) == 6
        })
        .await;

        // Nothing was lost, only held.
        proxy.set_fault(Fault::PassThrough);
        assert_eq!(read_exactly(&mut device, 6).await, b"during");
        assert_eq!(proxy.stats().cuts, 0);
    }

    #[tokio::test]
    async fn a_lying_proxy_accepts_bytes_after_the_limit_but_delivers_none_and_still_relays_replies() {
        let (echo, received) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        proxy.set_fault(Fault::Lie { after: 10 });
        let mut device = TcpStream::connect(proxy.addr()).await.unwrap();
        // The device's writes all succeed: the proxy takes every byte.
        device.write_all(b"0123456789-and-all-of-this-is-lost").await.unwrap();
        device.write_all(&[7; 50_000]).await.unwrap();
        // The first 10 bytes reached the server, whose reply comes back.
        assert_eq!(read_exactly(&mut device, 10).await, b"0123456789");
        eventually("the proxy to swallow the rest", WAIT, || async {
            proxy.stats().upstream_discarded == 24 + 50_000
        })
        .await;
        assert_eq!(received.load(Ordering::Relaxed), 10);

        // Each connection gets its own first 10 bytes.
        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        second.write_all(b"abcdefghijKLM").await.unwrap();
        assert_eq!(read_exactly(&mut second, 10).await, b"abcdefghij");
        assert_eq!(proxy.stats().upstream_delivered, 20);
    }

    #[tokio::test]
    async fn a_cut_delivers_exactly_the_chosen_bytes_then_closes_both_sides() {
        let (echo, received) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        proxy.set_fault(Fault::Cut { at: 5 });
        let mut device = TcpStream::connect(proxy.addr()).await.unwrap();
        device.write_all(b"12345678").await.unwrap();
        // The echo of the first 5 bytes may or may not make it back before
        // the cut; nothing beyond them can.
        let back = read_to_close(&mut device).await.unwrap_or_default();
        assert!(b"12345".starts_with(&back), "{back:?}");
        eventually("the cut to be counted", WAIT, || async { proxy.stats().cuts == 1 }).await;
        assert_eq!(received.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn cut_all_closes_open_connections_and_new_ones_are_accepted() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        first.write_all(b"hello").await.unwrap();
        assert_eq!(read_exactly(&mut first, 5).await, b"hello");
        proxy.cut_all();
        assert_eq!(read_to_close(&mut first).await.unwrap_or_default(), b"");
        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        second.write_all(b"again").await.unwrap();
        assert_eq!(read_exactly(&mut second, 5).await, b"again");
        assert_eq!(proxy.stats().cuts, 1);
    }

    #[tokio::test]
    async fn a_dropped_proxy_closes_its_connections() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut device = TcpStream::connect(proxy.addr()).await.unwrap();
        device.write_all(b"x").await.unwrap();
        assert_eq!(read_exactly(&mut device, 1).await, b"x");
        drop(proxy);
        assert_eq!(read_to_close(&mut device).await.unwrap_or_default(), b"");
    }
}
