//! The machine a run measured: CPU model, cores, memory, kernel, open-file
//! limit, and the source revision.

use std::process::Command;

/// What the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `lscpu`'s model name.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// `uname -r`.
    pub kernel: String,
    /// The hard open-file limit of this process.
    pub open_files: u64,
    /// `git rev-parse --short HEAD` (with `-dirty` if the tree has changes).
    pub commit: String,
    /// UTC date and time of the run.
    pub date: String,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl Machine {
    /// Reads the current machine.
    pub fn current() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("MemTotal:"))
                    .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let dirty = command_output("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        let commit = command_output("git", &["rev-parse", "--short", "HEAD"])
            .map(|c| if dirty { format!("{c}-dirty") } else { c })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib,
            kernel: command_output("uname", &["-r"]).unwrap_or_default(),
            open_files: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(0, |(_, hard)| hard),
            commit,
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        }
    }

    /// The 1-minute load average now (`/proc/loadavg`).
    pub fn load_average() -> Option<f64> {
        std::fs::read_to_string("/proc/loadavg")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} cores), {:.0} GiB, Linux {}, open-file limit {}; commit `{}`, {}",
            self.cpu, self.cores, self.memory_gib, self.kernel, self.open_files, self.commit, self.date
        )
    }
}
