//! `ferry`: the operator's CLI. This file only parses arguments and dispatches; each
//! command is a module of `ferry::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry::commands::{
    backup, keep, keys, list, pitr, restore, retention, sources, status, up, verify, wal,
};
use ferry_runtime::process::{self, EXIT_FAILURE};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Backups of PostgreSQL and MongoDB fleets over NATS"
)]
struct Cli {
    /// The configuration file (also FERRY_CONFIG).
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run every worker in this process.
    Up,
    /// Back up now.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// List backups, newest first.
    List(list::ListArgs),
    /// Per source: last success, last failure, next run, running now.
    Status(status::StatusArgs),
    /// The live sources registry.
    Sources {
        #[command(subcommand)]
        command: sources::SourcesCommand,
    },
    /// Re-read every object of a backup and check its size and SHA-256; exits
    /// non-zero listing every missing or corrupt object.
    Verify(verify::VerifyArgs),
    /// Retention: preview (`plan`) or apply a source's policy now.
    Retention {
        #[command(subcommand)]
        command: retention::RetentionCommand,
    },
    /// Mark a backup so that no retention policy deletes it (or `--remove` the mark).
    Keep(keep::KeepArgs),
    /// Encryption keys: `generate` an identity, `check` one against the store.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Restore a backup into a PostgreSQL or MongoDB server (--to), or fetch it into a
    /// directory in the standard tools' layout (--to-dir); MongoDB with capture on
    /// also to any instant (--at, --at-op).
    Restore(restore::RestoreArgs),
    /// Point-in-time capture: what is restorable (`status`).
    Pitr {
        #[command(subcommand)]
        command: pitr::PitrCommand,
    },
    /// PostgreSQL's archive_command: store one WAL file in the source's archive
    /// (`archive_command = 'ferry --config FILE wal-push --source NAME %p'`).
    WalPush(wal::WalPushArgs),
    /// PostgreSQL's restore_command: fetch one WAL file from the archive (exit 1
    /// when it is not there); `ferry restore --to-datadir` writes it for you.
    WalFetch(wal::WalFetchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match process::load_config(cli.config.as_deref(), ferry::SERVICES) {
        Ok(c) => c,
        // PostgreSQL takes any small exit code of restore_command for "not in the
        // archive" and would end recovery early: a configuration it cannot read
        // must stop the recovery instead.
        Err(_) if matches!(cli.command, Command::WalFetch(_)) => {
            return ExitCode::from(wal::FATAL);
        }
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Up => up::run(config).await,
        Command::Backup { command } => backup::run(&config, command).await,
        Command::List(args) => list::run(&config, args).await,
        Command::Status(args) => status::run(config, args).await,
        Command::Sources { command } => sources::run(config, command).await,
        Command::Verify(args) => verify::run(&config, args).await,
        Command::Retention { command } => retention::run(config, command).await,
        Command::Keep(args) => keep::run(config, args).await,
        Command::Keys { command } => keys::run(&config, command).await,
        Command::Restore(mut args) => {
            args.config_path = cli.config.clone();
            restore::run(&config, args).await
        }
        Command::Pitr { command } => pitr::run(&config, command).await,
        Command::WalPush(args) => wal::push(&config, args).await,
        Command::WalFetch(args) => wal::fetch(&config, args).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("ferry: {e:#}");
        ExitCode::from(EXIT_FAILURE)
    })
}
