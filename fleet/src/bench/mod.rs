//! The benchmark runner behind `fleet bench`: brings up real components,
//! drives them with `controller-sim` (and the peers' own tools), measures
//! the peer or the physical limit in the same run, and writes the figures
//! into `docs/BENCHMARKS.md`, each section with the command that reproduces
//! it, the machine, the date and the commit.
//!
//! - [`machine`]: what the figures were measured on.
//! - [`report`]: the Markdown sections and the file they live in.
//! - [`probe`]: process CPU and memory read from `/proc`, and the
//!   simulator's JSON summary.
//! - [`events`]: one benchmark each.

pub mod events;
pub mod machine;
pub mod probe;
pub mod report;

use std::path::PathBuf;

/// What every benchmark gets.
#[derive(Debug, Clone)]
pub struct BenchContext {
    /// Scratch space for Redis data and logs.
    pub work_dir: PathBuf,
    /// Shorter runs (for a smoke test of the runner itself).
    pub quick: bool,
    /// The command line that started the run, recorded with every section.
    pub command: String,
}

impl BenchContext {
    /// How long one measured phase runs.
    pub fn phase_seconds(&self) -> u64 {
        if self.quick { 5 } else { 20 }
    }
}
