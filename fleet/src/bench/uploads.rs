//! Uploads: `bench/uploads.sh` measures them (one driver, 1 to 1,000
//! devices uploading 4 MB each, beside the network and storage limits and
//! a naive baseline) and its figures are in the section "Uploads" of
//! docs/BENCHMARKS.md. The standard suite does not repeat that run (it
//! writes gigabytes and takes a quarter of an hour); `fleet bench --only
//! uploads` runs the script and puts the table it prints here.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use super::BenchContext;

/// Where the script lives, from this crate's source directory.
fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/uploads.sh")
}

/// A paragraph pointing at the upload figures (standard suite).
pub fn reference() -> String {
    "Uploads are measured by `bench/uploads.sh` (see **Uploads** above: MB/s against the network and storage limits and the naive baseline, memory per uploading connection). The standard suite does not rerun it; `fleet bench --only uploads` does and puts its table here.\n".to_owned()
}

/// Runs `bench/uploads.sh` (with `DEVICE_COUNTS="1 10"` when quick) and
/// returns its table.
pub fn run(ctx: &BenchContext) -> anyhow::Result<String> {
    let script = script();
    if !script.is_file() {
        bail!("{} not found: run from a checkout of the workspace", script.display());
    }
    let dir = ctx.work_dir.join("uploads");
    let mut command = Command::new("bash");
    command.arg(&script).env("BENCH_DIR", &dir);
    if ctx.quick {
        command.env("DEVICE_COUNTS", "1 10");
    }
    let status = command.status().context("running bench/uploads.sh")?;
    if !status.success() {
        bail!("bench/uploads.sh failed ({status})");
    }
    let table = std::fs::read_to_string(dir.join("results.md")).context("reading the script's results.md")?;
    Ok(format!(
        "`bench/uploads.sh` in the same run (`BENCH_DIR` in the bench's scratch directory):\n\n{table}\n"
    ))
}
