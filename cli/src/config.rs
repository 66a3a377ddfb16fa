//! The variables `drover` reads: where Redis is, and for `drover key` the
//! master key. The README's table is generated from [`VARIABLES`].

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
    help: "64 hex digits, the drivers' master key: `drover key` derives a device's key from it (and never prints it); no other subcommand reads it",
};

/// Every variable `drover` reads.
pub const VARIABLES: &[Variable] = &[REDIS_URL, drover_redis::config::CLUSTER_NODES, MASTER_KEY];

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
