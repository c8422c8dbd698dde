//! The `outbox-relay` binary as a library, so that tests run the very program that ships.

use std::process::ExitCode;

use clap::Parser;

mod admin;
pub mod cli;
mod commands;
mod connect;
mod dead_letters;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod observe;
pub mod settings;
mod wal;

/// What is logged when `OUTBOX_LOG` is not set: info and above. The replication client's own line
/// for a stream that ended in an error is left out: the relay logs every such error itself, with
/// the slot and what it does next (and its start-up probe of the replication connection ends in
/// an error on purpose).
const DEFAULT_LOG: &str = "info,pgwire_replication::client::tokio_client=off";

/// Runs the relay with the process's arguments and environment; returns the exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Migrate(args) => commands::migrate(args).await,
            cli::Command::Run(args) => commands::run(args).await,
            cli::Command::Status(args) => admin::status(args).await,
            cli::Command::DeadLetters(command) => match command {
                cli::DeadLettersCommand::List(args) => dead_letters::list(args).await,
                cli::DeadLettersCommand::Show(args) => dead_letters::show(args).await,
                cli::DeadLettersCommand::Replay(args) => dead_letters::replay(args).await,
                cli::DeadLettersCommand::Purge(args) => dead_letters::purge(args).await,
            },
            cli::Command::Wal(command) => match command {
                cli::WalCommand::CreateSlot(args) => wal::create_slot(args).await,
                cli::WalCommand::DropSlot(args) => wal::drop_slot(args).await,
                cli::WalCommand::Status(args) => wal::status(args).await,
            },
            cli::Command::Config(cli::ConfigCommand::Check(args)) => commands::config_check(args),
            cli::Command::Config(cli::ConfigCommand::Table) => commands::config_table(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
