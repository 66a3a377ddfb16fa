//! `drover`, the operators' command line. It reads and writes the
//! deployment's Redis (one Redis or a Redis Cluster) exactly where the
//! components and `redis-cli` users do, never a driver directly:
//!
//! - [`devices`]: the registry (`drover devices`, `drover device`);
//! - [`send`]: commands and their results (`drover send`);
//! - [`ledger`]: durable commands (`drover send --queue`, `drover queue`,
//!   `drover cancel`);
//! - [`events`], [`uploads`] over [`streams`]: what was stored;
//! - [`key`]: a device's key from the master key; [`token`]: a bearer
//!   token for its HTTP requests, from the gateways;
//! - [`rollouts`]: the file store and rollouts (`drover files add`,
//!   `drover rollout start|status|pause|resume|cancel`).
//!
//! [`args`] is the command line, [`output`] how it prints (tables,
//! colour on a terminal, JSON), [`exit`] its exit codes, [`config`] its
//! variables and [`deployment`] its connection.

pub mod args;
pub mod config;
pub mod deployment;
pub mod devices;
pub mod events;
pub mod exit;
pub mod key;
pub mod ledger;
pub mod output;
pub mod rollouts;
pub mod send;
pub mod streams;
pub mod token;
pub mod uploads;

use cwp::Serial;

use crate::args::{Cli, Command};
use crate::deployment::Deployment;
use crate::exit::{Exit, usage};

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    if let Command::Key(args) = &cli.command {
        return key::run(args, cli.json);
    }
    if let Command::Token(args) = &cli.command {
        return token::run(args, cli.json).await;
    }
    if let Command::Files(args::FilesCommand::Add(args)) = &cli.command {
        return rollouts::add_file(args, cli.json);
    }
    let deployment = Deployment::open(config::redis_target()?).await?;
    match &cli.command {
        Command::Devices(args) => devices::list(deployment, args, cli.json).await,
        Command::Device(args) => devices::show(deployment, args, cli.json).await,
        Command::Send(args) if args.queue => ledger::enqueue(deployment, args, cli.json).await,
        Command::Send(args) => send::run(deployment, args, cli.json).await,
        Command::Queue(args) => ledger::list(deployment, args, cli.json).await,
        Command::Cancel(args) => ledger::cancel(deployment, args, cli.json).await,
        Command::Events(args) => events::run(deployment, args, cli.json).await,
        Command::Uploads(args) => uploads::run(deployment, args, cli.json).await,
        Command::Key(args) => key::run(args, cli.json),
        Command::Token(args) => token::run(args, cli.json).await,
        Command::Files(args::FilesCommand::Add(args)) => rollouts::add_file(args, cli.json),
        Command::Rollout(command) => rollouts::run(deployment, command, cli.json).await,
    }
}

/// A serial from the command line; a malformed one is a usage error.
pub fn parse_serial(text: &str) -> anyhow::Result<Serial> {
    text.parse().map_err(|err| usage(format!("{text:?}: {err}")))
}
