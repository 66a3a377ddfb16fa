//! The variables `drover` reads: where Redis is, for `drover key` and
//! `drover token` the master key, for `drover token` the gateways. The README's table is generated from [`VARIABLES`].

use anyhow::Context as _;
use drover_redis::Target;
use drover_service::env::{EnvReader, Variable};

/// `REDIS_URL`.
const REDIS_URL: Variable = Variable {
    name: "REDIS_URL",
    default: Some("redis://127.0.0.1:6379"),
    help: "the deployment's Redis; redis://USER:PASSWORD@HOST:PORT for an ACL user (README, Security)",
};

/// `CWP_MASTER_KEY`.
pub const MASTER_KEY: Variable = Variable {
    name: "CWP_MASTER_KEY",
    default: None,
    help: "64 hex digits, the drivers' master key: `drover key` and `drover token` derive a device's key from it (and never print it); no other subcommand reads it",
};

/// `CMD_MAX_QUEUED`.
pub const MAX_QUEUED: Variable = Variable {
    name: "CMD_MAX_QUEUED",
    default: Some("100"),
    help: "`drover send --queue`: the most durable commands a device may have pending; beyond it the command is refused (exit code 8), nothing is dropped",
};

/// `FILES_DIR`.
pub const FILES_DIR: Variable = Variable {
    name: "FILES_DIR",
    default: Some("./data/files"),
    help: "`drover files add`, `drover rollout start`: the file store the drivers send rollouts from (the same directory as theirs)",
};

/// `HTTP_GATEWAY_URL`.
pub const GATEWAY_URL: Variable = Variable {
    name: "HTTP_GATEWAY_URL",
    default: Some("http://127.0.0.1:8080"),
    help: "`drover token`: the HTTP gateways (HAProxy's HTTP frontend, docs/HTTP.md), `http://HOST:PORT`",
};

/// Every variable `drover` reads.
pub const VARIABLES: &[Variable] = &[
    REDIS_URL,
    drover_redis::config::CLUSTER_NODES,
    MASTER_KEY,
    MAX_QUEUED,
    FILES_DIR,
    GATEWAY_URL,
];

/// `HTTP_GATEWAY_URL`: the gateways' host and port.
pub fn gateway_address() -> anyhow::Result<String> {
    let env = EnvReader::new(VARIABLES);
    let url = env
        .raw(GATEWAY_URL.name)
        .unwrap_or_else(|| GATEWAY_URL.default.unwrap_or_default().to_owned());
    let address = url.strip_prefix("http://").with_context(|| {
        format!(
            "{}: {url:?} is not http://HOST:PORT (to reach HTTPS, run drover where HAProxy's plain port is reachable)",
            GATEWAY_URL.name
        )
    })?;
    let address = address.trim_end_matches('/');
    anyhow::ensure!(
        !address.is_empty() && !address.contains('/'),
        "{}: {url:?} is not http://HOST:PORT",
        GATEWAY_URL.name
    );
    Ok(address.to_owned())
}

/// `FILES_DIR`.
pub fn files_dir() -> anyhow::Result<std::path::PathBuf> {
    let mut env = EnvReader::new(VARIABLES);
    let dir = env.parse::<std::path::PathBuf>(FILES_DIR.name);
    env.finish()?;
    Ok(dir.unwrap_or_else(|| std::path::PathBuf::from("./data/files")))
}

/// `CMD_MAX_QUEUED`.
pub fn max_queued() -> anyhow::Result<u32> {
    let mut env = EnvReader::new(VARIABLES);
    let max = env.parse::<u32>(MAX_QUEUED.name);
    env.finish()?;
    let max = max.unwrap_or(drover_schema::ledger::DEFAULT_MAX_QUEUED);
    anyhow::ensure!(max >= 1, "{} must be at least 1", MAX_QUEUED.name);
    Ok(max)
}

/// The deployment's Redis: `REDIS_CLUSTER_NODES` if set, else `REDIS_URL`.
pub fn redis_target() -> anyhow::Result<Target> {
    let mut env = EnvReader::new(VARIABLES);
    let target = Target::read(&mut env);
    env.finish()?;
    target.context("REDIS_URL is not set")
}

/// The master key, from `CWP_MASTER_KEY`. A malformed value is described,
/// never shown: an error message ends up in terminals and logs.
pub fn master_key() -> anyhow::Result<cwp::MasterKey> {
    let env = EnvReader::new(VARIABLES);
    let text = env
        .raw(MASTER_KEY.name)
        .with_context(|| format!("{} must be set ({})", MASTER_KEY.name, MASTER_KEY.help))?;
    cwp::MasterKey::from_hex(&text).map_err(|err| anyhow::anyhow!("{}: {err}", MASTER_KEY.name))
}
