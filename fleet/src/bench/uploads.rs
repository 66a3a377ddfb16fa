//! Uploads: `bench/uploads.sh` measures them (one driver, 1 to 1,000
//! devices uploading 4 MB each, beside the network and storage limits and
//! a naive baseline) and its figures are in the section "Uploads" of
//! docs/BENCHMARKS.md. The standard suite does not repeat that run (it
//! writes gigabytes and takes a quarter of an hour); `fleet bench --only
//! uploads` runs the script and puts the table it prints here. HTTP (tus)
//! uploads likewise: `bench/http_uploads.sh`, `fleet bench --only
//! http-uploads`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use super::BenchContext;

/// Where a script of `bench/` lives, from this crate's source directory.
fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench").join(name)
}

/// A paragraph pointing at the upload figures (standard suite).
pub fn reference() -> String {
    "Uploads are measured by `bench/uploads.sh` (see **Uploads** above: MB/s against the network and storage limits and the naive baseline, memory per uploading connection) and HTTP (tus) uploads by `bench/http_uploads.sh` (**Uploads over HTTP (tus)**). The standard suite does not rerun them; `fleet bench --only uploads` and `--only http-uploads` do and put their tables here.\n".to_owned()
}

/// Runs `bench/uploads.sh` (with `DEVICE_COUNTS="1 10"` when quick) and
/// returns its table.
pub fn run(ctx: &BenchContext) -> anyhow::Result<String> {
    let quick: &[(&str, &str)] = if ctx.quick { &[("DEVICE_COUNTS", "1 10")] } else { &[] };
    run_script(ctx, "uploads.sh", "uploads", quick)
}

/// Runs `bench/http_uploads.sh` (issue 20: tus uploads through HAProxy;
/// 10 uploads and 256 MiB when quick) and returns its table.
pub fn run_http(ctx: &BenchContext) -> anyhow::Result<String> {
    let quick: &[(&str, &str)] = if ctx.quick {
        &[("UPLOADS", "10"), ("BIG_BYTES", "268435456")]
    } else {
        &[]
    };
    run_script(ctx, "http_uploads.sh", "http-uploads", quick)
}

/// Runs `bench/{name}` with `BENCH_DIR` in the bench's scratch directory
/// and `env`, and returns the table it wrote to `results.md`.
fn run_script(ctx: &BenchContext, name: &str, dir_name: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let script = script(name);
    if !script.is_file() {
        bail!("{} not found: run from a checkout of the workspace", script.display());
    }
    let dir = ctx.work_dir.join(dir_name);
    let status = Command::new("bash")
        .arg(&script)
        .env("BENCH_DIR", &dir)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running bench/{name}"))?;
    if !status.success() {
        bail!("bench/{name} failed ({status})");
    }
    let table = std::fs::read_to_string(dir.join("results.md")).context("reading the script's results.md")?;
    Ok(format!(
        "`bench/{name}` in the same run (`BENCH_DIR` in the bench's scratch directory):\n\n{table}\n"
    ))
}
