//! `fleet`'s library: the benchmark runner behind `fleet bench`.
//!
//! - [`bench`](mod@bench): one module per benchmark, the rig they share, and the
//!   report they write into `docs/BENCHMARKS.md`.
//!
//! The binaries: `fleet` (`src/main.rs`: `up`, `lb-config`, `bench`,
//! `bench-charts`) and the benchmarks' own tools in `src/bin/`:
//! `bench-commands` (the operator
//! of the commands benchmark), `bench-stand-in` (the control of the
//! slowloris benchmark) and `bench-limits` (the network and storage limits
//! of `bench/uploads.sh`). The processes they run (Redis, HAProxy, the
//! vendor-bridge, drivers) are started by `drover-testkit`, as in the
//! tests.

pub mod bench;
