//! Finding Drover's own binaries (`driver`, `vendor-bridge`,
//! `controller-sim`, `fleet`, the operator CLI `drover` and the benchmark
//! tools): they sit next to the running executable (`target/release/fleet`
//! beside
//! `target/release/driver`), or one level up for a test executable in
//! `target/debug/deps/`. `DROVER_BIN_DIR` overrides both: every binary
//! then comes from that directory (e.g. another commit's release build,
//! measured by this commit's `fleet bench`; docs/BENCHMARKS.md, "Before and
//! after the restructuring").
//!
//! Nothing here builds them: `cargo test --workspace` does (Cargo builds
//! the binaries of every package whose integration tests it runs), and so
//! does `cargo build --workspace` before running one test file alone.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// The directory holding Drover's binaries.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DROVER_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("executable has no directory")?.to_owned();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Whether the vendor-bridge serves `/metrics` on `BRIDGE_METRICS_LISTEN`
/// (and so whether to wait for that port before calling it ready): yes,
/// unless `DROVER_BRIDGE_METRICS=off`, for a vendor-bridge built before
/// that variable existed (commit `5cd4280` and earlier), started from
/// `DROVER_BIN_DIR`.
pub fn bridge_serves_metrics() -> bool {
    std::env::var_os("DROVER_BRIDGE_METRICS").is_none_or(|value| value != "off")
}

/// The path of one of Drover's binaries, which must exist.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace first (`cargo build --workspace`, or `--release` for the release profile)",
            path.display()
        );
    }
    Ok(path)
}
