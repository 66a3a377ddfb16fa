//! Loopback addresses and ports for the processes a test starts.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context as _;

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick
/// of an ephemeral port, released at once for the process that binds it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
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
