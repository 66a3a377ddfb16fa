//! `powercut BACKING MOUNTPOINT`: mounts the power-cut filesystem by hand.
//! SIGUSR1 cuts the power; SIGINT or SIGTERM unmounts and exits.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use drover_powercut::PowerCutFs;
use tokio::signal::unix::{SignalKind, signal};

/// Mounts MOUNTPOINT over the directory BACKING. Writes stay in memory until
/// the file is fsynced; `kill -USR1 <pid>` cuts the power (discards every
/// unsynced write, makes open files fail with EIO); Ctrl-C or SIGTERM
/// writes what is pending to BACKING and unmounts. Needs root and /dev/fuse.
///
/// Environment: RUST_LOG (default `info,fuser=error`) filters the log on stderr.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The directory that plays the disk.
    backing: PathBuf,
    /// Where to mount the filesystem (an existing directory).
    mountpoint: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first, so that a signal sent as soon as the mount appears
    // is not the default action (SIGUSR1 would kill us).
    let mut cut = signal(SignalKind::user_defined1()).context("handling SIGUSR1")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mount = PowerCutFs::mount(&args.backing, &args.mountpoint)?;
    tracing::info!(
        backing = %args.backing.display(),
        mountpoint = %args.mountpoint.display(),
        pid = std::process::id(),
        "mounted; kill -USR1 {} cuts the power",
        std::process::id()
    );
    loop {
        tokio::select! {
            _ = cut.recv() => {
                let pending = mount.pending_bytes();
                let cut = mount.cut_power();
                tracing::warn!(
                    files = cut.files,
                    bytes = cut.bytes,
                    stale_handles = cut.stale_handles,
                    "power cut: unsynced data discarded (was {pending} bytes)"
                );
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    mount.unmount().context("unmounting")?;
    tracing::info!("unmounted");
    Ok(())
}
