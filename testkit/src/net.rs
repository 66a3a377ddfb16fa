//! Loopback addresses and ports for the processes a test starts.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;

/// The lowest port [`free_port`] hands out.
const FIRST_TEST_PORT: u16 = 10_000;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process the
/// test starts next to bind.
///
/// It is taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port the kernel picked for us and we
/// released could be given to any outgoing connection (a driver's to Redis,
/// the bridge's, …) before that process binds it, and HAProxy's master
/// then exits on "cannot bind socket". Successive calls in one process walk
/// the range from a start drawn from the process id, so two calls never
/// return the same port and two test processes seldom meet.
pub fn free_port() -> anyhow::Result<u16> {
    let ephemeral_start = ephemeral_range_start();
    if ephemeral_start <= FIRST_TEST_PORT + 1_000 {
        // No room below the ephemeral range: the kernel's pick it is.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding an ephemeral port")?;
        return Ok(listener.local_addr()?.port());
    }
    let span = u32::from(ephemeral_start - FIRST_TEST_PORT);
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7_919)));
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = FIRST_TEST_PORT + u16::try_from(offset).expect("the span fits in a port");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 between {FIRST_TEST_PORT} and {ephemeral_start}")
}

/// The first port of the kernel's ephemeral range (Linux's default where
/// it cannot be read).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// `127.0.0.1:{port}`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Bytes that arrived on the established TCP connections accepted on local
/// `port` and that the owning process has not read yet (the kernel's
/// receive queues, from `/proc/net/tcp{,6}`). A frozen (`SIGSTOP`) server
/// still receives: this is how a test knows that a request reached it.
pub fn unread_bytes(port: u16) -> anyhow::Result<u64> {
    const ESTABLISHED: &str = "01";
    let mut unread = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(queues)) = (fields.get(1), fields.get(3), fields.get(4)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port != Some(port) || *state != ESTABLISHED {
                continue;
            }
            let rx = queues.split(':').nth(1).context("tx_queue:rx_queue")?;
            unread += u64::from_str_radix(rx, 16).with_context(|| format!("rx_queue {rx:?}"))?;
        }
    }
    Ok(unread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_never_repeat() {
        let ephemeral_start = ephemeral_range_start();
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        if ephemeral_start > FIRST_TEST_PORT + 1_000 {
            assert!(
                ports
                    .iter()
                    .all(|&port| (FIRST_TEST_PORT..ephemeral_start).contains(&port)),
                "{ports:?}"
            );
        }
        // Each was free: it binds.
        for port in ports.iter().take(20) {
            TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).unwrap();
        }
    }
}
