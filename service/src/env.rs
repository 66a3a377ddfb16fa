//! Configuration as a value: each binary declares its variables once, in a
//! table of [`Variable`]s; [`EnvReader`] parses them all, collecting every
//! error instead of stopping at the first; [`help`] prints the same table.

use std::fmt::{self, Display, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// One environment variable a binary reads.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// Its name, e.g. `DRIVER_LISTEN`.
    pub name: &'static str,
    /// Its default as text, `None` when unset means "not configured".
    pub default: Option<&'static str>,
    /// One line for `--help` and the README.
    pub help: &'static str,
}

/// Every problem found in the environment, reported together.
#[derive(Debug)]
pub struct ConfigError {
    /// One line per bad variable.
    pub problems: Vec<String>,
}

impl Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads `.env` from the working directory (or a parent) into the process
/// environment, without overriding variables already set. Call it first
/// thing in `main`, before any thread starts.
pub fn load_dotenv() {
    // A missing .env is the normal case in production.
    let _ = dotenvy::dotenv();
}

/// `url` with its password, if any, replaced by `***`: what a log line may
/// show of a `REDIS_URL` such as `redis://drover-bridge:secret@redis:6379`.
/// Text that is not a URL is shown as `(unparsable URL)`.
pub fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have a password at all.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Reads a binary's variables from the process environment.
#[derive(Debug)]
pub struct EnvReader {
    table: &'static [Variable],
    problems: Vec<String>,
}

impl EnvReader {
    /// A reader for the variables in `table`.
    pub fn new(table: &'static [Variable]) -> Self {
        Self {
            table,
            problems: Vec::new(),
        }
    }

    fn variable(&self, name: &str) -> &'static Variable {
        self.table
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} is read but missing from the variable table"))
    }

    /// The raw value: the environment's if set and not empty, else the default.
    pub fn raw(&self, name: &str) -> Option<String> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Some(value),
            _ => self.variable(name).default.map(str::to_owned),
        }
    }

    /// Parses a variable that has a default (or must be set). On a bad value
    /// the problem is recorded and `None` returned; [`EnvReader::finish`]
    /// then fails.
    pub fn parse<T>(&mut self, name: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(name) {
            Some(value) => self.convert(name, &value),
            None => {
                self.problems
                    .push(format!("{name} must be set ({})", self.variable(name).help));
                None
            }
        }
    }

    /// Parses an optional variable: `Ok(None)` when it is unset and has no
    /// default.
    pub fn parse_optional<T>(&mut self, name: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let value = self.raw(name)?;
        self.convert(name, &value)
    }

    /// Parses with a custom conversion (e.g. a key, a duration in a unit).
    pub fn parse_with<T, E: Display>(&mut self, name: &str, convert: impl FnOnce(&str) -> Result<T, E>) -> Option<T> {
        let value = self.raw(name)?;
        match convert(value.trim()) {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                self.problems.push(format!("{name}={value:?}: {err}"));
                None
            }
        }
    }

    /// A secret given either inline (`name`) or as a file (`file_name`, the
    /// way container orchestrators mount secrets); setting both is a
    /// problem. The file's content is the secret, surrounding whitespace
    /// removed. `None` when neither is set.
    pub fn secret(&mut self, name: &str, file_name: &str) -> Option<String> {
        match (self.raw(name), self.raw(file_name)) {
            (Some(_), Some(_)) => {
                self.problems.push(format!("set {name} or {file_name}, not both"));
                None
            }
            (Some(value), None) => Some(value.trim().to_owned()),
            (None, Some(path)) => match std::fs::read_to_string(path.trim()) {
                Ok(value) => Some(value.trim().to_owned()),
                Err(err) => {
                    self.problems.push(format!("{file_name}={path:?}: {err}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// Records a problem found while checking values against each other.
    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    fn convert<T>(&mut self, name: &str, value: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        match value.trim().parse() {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                self.problems.push(format!("{name}={value:?}: {err}"));
                None
            }
        }
    }

    /// Succeeds when every variable parsed.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// `--help` text: a summary, the options, then every variable with its
/// default.
pub fn help(binary: &str, summary: &str, table: &[Variable]) -> String {
    let mut text = format!(
        "{binary} {}\n{summary}\n\nUsage: {binary} [--help | --version | --health | --sentry-test]\n\n",
        env!("CARGO_PKG_VERSION")
    );
    text.push_str("Options:\n\n");
    text.push_str("  --health       ask the server running with this configuration, on its own listen\n");
    text.push_str("                 address, whether it is healthy; exit 0 if it is (a container's health check)\n");
    text.push_str("  --sentry-test  with this configuration, send one test error and one test panic to\n");
    text.push_str("                 SENTRY_DSN (tagged and with a breadcrumb, like real ones), print their\n");
    text.push_str("                 event ids and exit; fails if SENTRY_DSN is unset\n");
    text.push_str("  --help         this text\n");
    text.push_str("  --version      the version\n\n");
    text.push_str("Configured by environment variables (a .env file in the working directory is read too):\n\n");
    let width = table.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in table {
        let default = v
            .default
            .map_or_else(|| "unset".to_owned(), |d| format!("default {d:?}"));
        let _ = writeln!(text, "  {:width$}  {} [{default}]", v.name, v.help);
    }
    text
}

/// This host's name (a default for the servers' ids), or `fallback`.
pub fn hostname_or(fallback: &str) -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| fallback.to_owned())
}

/// A boolean variable's value: `true`, `yes`, `on` or `1`, and `false`,
/// `no`, `off` or `0`, in any case (for [`EnvReader::parse_with`]).
pub fn parse_bool(text: &str) -> Result<bool, NotABool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(NotABool),
    }
}

/// A value [`parse_bool`] does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected true or false")]
pub struct NotABool;

/// Where a health probe on this machine reaches a server that listens on
/// `listen`: the same port on loopback when `listen` is a wildcard
/// (`0.0.0.0`, `::`), else `listen` itself.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, listen.port())),
        _ => listen,
    }
}

/// What the command line asks a server binary to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CliAction {
    /// No argument: serve.
    Run,
    /// `--sentry-test`: send test events to Sentry and exit (see
    /// [`crate::telemetry::self_test`]).
    SentryTest,
    /// `--health`: ask the server already running with this configuration
    /// whether it is healthy, and exit 0 only if it is (what a container's
    /// health check runs).
    Health,
    /// `--help`, `--version` (already answered) or a bad argument: exit
    /// with this code.
    Exit(i32),
}

/// Handles the command line of a binary configured by its environment:
/// answers `--help` and `--version` itself, and tells the caller what else
/// to do.
pub fn handle_cli(binary: &str, summary: &str, table: &[Variable]) -> CliAction {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => CliAction::Run,
        ["--sentry-test"] => CliAction::SentryTest,
        ["--health"] => CliAction::Health,
        ["--help" | "-h"] => {
            print!("{}", help(binary, summary, table));
            CliAction::Exit(0)
        }
        ["--version" | "-V"] => {
            println!("{binary} {}", env!("CARGO_PKG_VERSION"));
            CliAction::Exit(0)
        }
        _ => {
            eprintln!("{binary}: unexpected arguments {args:?}; configuration is by environment, see --help");
            CliAction::Exit(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_redis_url_never_shows_its_password() {
        assert_eq!(
            redact_password("redis://drover-bridge:s3cret@redis:6379"),
            "redis://drover-bridge:***@redis:6379"
        );
        assert_eq!(redact_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_password("not a url"), "(unparsable URL)");
    }

    #[test]
    fn a_probe_reaches_a_wildcard_listener_on_loopback() {
        let probe = |listen: &str| probe_address(listen.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:9101"), "127.0.0.1:9101");
        assert_eq!(probe("[::]:50051"), "[::1]:50051");
        assert_eq!(probe("10.1.2.3:9101"), "10.1.2.3:9101");
    }

    #[test]
    fn every_problem_is_reported_together() {
        static TABLE: &[Variable] = &[
            Variable {
                name: "DROVER_TEST_A",
                default: Some("x"),
                help: "a number",
            },
            Variable {
                name: "DROVER_TEST_B",
                default: None,
                help: "required",
            },
        ];
        let mut env = EnvReader::new(TABLE);
        assert_eq!(env.parse::<u32>("DROVER_TEST_A"), None);
        assert_eq!(env.parse::<u32>("DROVER_TEST_B"), None);
        let err = env.finish().unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(help("t", "s", TABLE).contains("DROVER_TEST_A"));
    }
}
