//! The benchmark runner behind `fleet bench`: brings up real components,
//! drives them with `controller-sim` (and the peers' own tools), measures
//! the peer or the physical limit in the same run, and writes the figures
//! into `docs/BENCHMARKS.md`, each section with the command that reproduces
//! it, the machine, the date and the commit.
//!
//! - [`machine`]: what the figures were measured on.
//! - [`report`]: the Markdown sections and the file they live in.
//! - [`charts`]: the figures drawn as SVG charts, and the series they are
//!   drawn from (kept as JSON, to draw them again).
//! - [`probe`]: process CPU and memory read from `/proc`, the kernel's
//!   socket memory, and the simulator run in the background.
//! - [`rig`]: the whole local fleet sized for a number of devices (the
//!   processes themselves, and the idle benchmark's peer Mosquitto, come
//!   from `drover-testkit`).
//! - [`events`], [`idle`], [`storm`], [`commands`], [`uploads`],
//!   [`hostile`], [`files`], [`http_events`]: one benchmark each; each returns its figures and renders
//!   its section.
//! - [`http_load`]: the HTTP events benchmark's load generator (`bench-http`).

pub mod charts;
pub mod cluster;
pub mod commands;
pub mod events;
pub mod files;
pub mod hostile;
pub mod http_events;
pub mod http_load;
pub mod idle;
pub mod machine;
pub mod probe;
pub mod report;
pub mod rig;
pub mod storm;
pub mod uploads;

use std::path::PathBuf;

/// What every benchmark gets.
#[derive(Debug, Clone)]
pub struct BenchContext {
    /// Scratch space for Redis data and the like (removed after the run).
    pub work_dir: PathBuf,
    /// Where the processes' logs go (kept after the run, for a look at
    /// what happened when a figure surprises).
    pub log_dir: PathBuf,
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
