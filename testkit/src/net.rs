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
