//! `bench-limits`: the two physical limits an upload server is measured
//! against (`bench/uploads.sh`), on the machine and disk at hand.
//!
//! - `network`: N loopback TCP connections each sending B bytes into a sink
//!   that discards them: the most a server could receive.
//! - `storage`: S sequential streams of C-byte writes, each followed by
//!   `fdatasync`, into D: the most a server that makes every C bytes
//!   durable could store.
//!
//! Each prints one JSON line: `{"limit", ..., "bytes", "seconds", "mb_per_s"}`
//! (MB = 10^6 bytes).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Measures the network and storage limits of an upload benchmark.
#[derive(Debug, Parser)]
#[command(name = "bench-limits", version)]
struct Args {
    #[command(subcommand)]
    limit: Limit,
}

#[derive(Debug, Subcommand)]
enum Limit {
    /// Raw loopback TCP into a sink that discards.
    Network {
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Bytes each connection sends.
        #[arg(long, default_value_t = 4_016_000)]
        bytes: u64,
        /// Bytes per write (and per read in the sink).
        #[arg(long, default_value_t = 64 * 1024)]
        chunk: usize,
    },
    /// Sequential writes, each made durable with fdatasync.
    Storage {
        /// Directory on the disk to measure (files are removed after).
        #[arg(long)]
        dir: PathBuf,
        /// Bytes each stream writes.
        #[arg(long, default_value_t = 256 << 20)]
        bytes: u64,
        /// Bytes per write (each followed by one fdatasync).
        #[arg(long, default_value_t = 256 * 1024)]
        chunk: usize,
        /// Parallel streams, one file each.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().limit {
        Limit::Network {
            connections,
            bytes,
            chunk,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let (total, took) = runtime.block_on(network(connections, bytes, chunk.max(1)))?;
            report(
                "network",
                &[("connections", connections as u64), ("chunk", chunk as u64)],
                total,
                took,
            );
        }
        Limit::Storage {
            dir,
            bytes,
            chunk,
            streams,
        } => {
            let (total, took) = storage(&dir, bytes, chunk.max(1), streams.max(1))?;
            report(
                "storage",
                &[("streams", streams as u64), ("chunk", chunk as u64)],
                total,
                took,
            );
        }
    }
    Ok(())
}

fn report(limit: &str, params: &[(&str, u64)], bytes: u64, took: Duration) {
    let seconds = took.as_secs_f64();
    let mut line = format!("{{\"limit\":\"{limit}\"");
    for (name, value) in params {
        line.push_str(&format!(",\"{name}\":{value}"));
    }
    let mb_per_s = if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    };
    line.push_str(&format!(
        ",\"bytes\":{bytes},\"seconds\":{seconds:.4},\"mb_per_s\":{mb_per_s:.1}}}"
    ));
    println!("{line}");
}

/// Every connection sends `bytes` into a sink; the time is from the first
/// connect to the last byte read.
async fn network(connections: usize, bytes: u64, chunk: usize) -> anyhow::Result<(u64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let sink = tokio::spawn(async move {
        let mut readers = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().await?;
            readers.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; chunk];
                let mut received = 0u64;
                loop {
                    match stream.read(&mut buffer).await? {
                        0 => return Ok::<u64, std::io::Error>(received),
                        n => received += n as u64,
                    }
                }
            }));
        }
        let mut total = 0;
        for reader in readers {
            total += reader.await??;
        }
        Ok::<u64, anyhow::Error>(total)
    });
    let started = Instant::now();
    let payload = bytes::Bytes::from(vec![0x5a; chunk]);
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let payload = payload.clone();
        senders.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left).map_or(payload.len(), |left| left.min(payload.len()));
                stream.write_all(&payload[..n]).await?;
                left -= n as u64;
            }
            stream.shutdown().await?;
            Ok::<(), std::io::Error>(())
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let total = sink.await??;
    anyhow::ensure!(total == bytes * connections as u64, "the sink received {total} bytes");
    Ok((total, started.elapsed()))
}

/// `streams` threads each write `bytes` in `chunk`s, fdatasync after each.
fn storage(dir: &std::path::Path, bytes: u64, chunk: usize, streams: usize) -> anyhow::Result<(u64, Duration)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths: Vec<PathBuf> = (0..streams).map(|i| dir.join(format!("bench-limits-{i}"))).collect();
    let started = Instant::now();
    let written = std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || -> std::io::Result<u64> {
                    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
                    let buffer = vec![0xa5u8; chunk];
                    let mut left = bytes;
                    while left > 0 {
                        let n = usize::try_from(left).map_or(chunk, |left| left.min(chunk));
                        file.write_all(&buffer[..n])?;
                        file.sync_data()?;
                        left -= n as u64;
                    }
                    Ok(bytes)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a writer panicked")))
            })
            .sum::<std::io::Result<u64>>()
    });
    let took = started.elapsed();
    for path in &paths {
        let _ = fs::remove_file(path);
    }
    Ok((written?, took))
}
