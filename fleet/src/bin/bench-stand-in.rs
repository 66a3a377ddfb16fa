//! `bench-stand-in`: the control of the slowloris benchmark (`fleet bench
//! --only hostile`). A minimal TCP server that accepts every connection,
//! waits out a deadline, writes a few bytes and closes it, as the driver
//! does with a connection that never completes its handshake, but with no
//! protocol and no bookkeeping. The same attack aimed at it instead of the
//! driver shows what the attack costs the machine by itself.
//!
//! Prints the address it listens on, on a line of its own, then serves
//! until its standard input closes (the benchmark holds the other end).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// As many bytes as the driver's `ERROR TIMEOUT` frame header.
const REPLY: [u8; 8] = [0; 8];

/// Accepts connections and closes each after a deadline.
#[derive(Debug, Parser)]
#[command(name = "bench-stand-in", version)]
struct Args {
    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How long each connection is held before the reply and the close
    /// (the driver's default handshake deadline).
    #[arg(long, default_value = "10s", value_parser = drover_service::duration::parse_duration)]
    deadline: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread, as the driver's handshakes have.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let socket = match args.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("creating the socket")?;
    socket
        .bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    // As deep as the driver's backlog, so that the attack's connects queue
    // rather than fail.
    let listener = socket.listen(4096).context("listening")?;
    println!("{}", listener.local_addr().context("reading the bound address")?);

    let deadline = args.deadline;
    let accept = async {
        loop {
            // Out of file descriptors and the like: the attacker retries.
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                let _ = stream.write_all(&REPLY).await;
            });
        }
    };
    let mut stdin = tokio::io::stdin();
    let mut scratch = [0_u8; 64];
    let parent_gone = async { while !matches!(stdin.read(&mut scratch).await, Ok(0) | Err(_)) {} };
    tokio::select! {
        () = accept => {}
        () = parent_gone => {}
    }
    Ok(())
}
