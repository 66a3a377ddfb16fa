//! `drover`: see the crate's documentation and `drover --help`.

use std::process::ExitCode;

use clap::Parser as _;
use drover_cli::args::Cli;
use drover_cli::exit::{Exit, UsageError};

fn main() -> ExitCode {
    drover_service::env::load_dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("drover: starting the runtime: {err}");
            return Exit::Error.into();
        }
    };
    match runtime.block_on(drover_cli::run(cli)) {
        Ok(exit) => exit.into(),
        // `drover events | head`: the reader has all it wanted.
        Err(err) if is_broken_pipe(&err) => Exit::Success.into(),
        Err(err) if err.downcast_ref::<UsageError>().is_some() => {
            eprintln!("drover: {err}");
            Exit::Usage.into()
        }
        Err(err) if is_refused_by_redis(&err) => {
            eprintln!(
                "drover: {err:#}\n(check the user and password in REDIS_URL or REDIS_CLUSTER_NODES, and that \
                 the user's ACL grants what drover needs: README, Security, Redis ACL users)"
            );
            Exit::Error.into()
        }
        Err(err) => {
            eprintln!("drover: {err:#}");
            Exit::Error.into()
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn is_refused_by_redis(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<redis::RedisError>()
            .is_some_and(drover_redis::is_refused_by_acl)
    })
}
