//! The `standby-proxy` command: runs a node, checks configurations.

use anyhow::Context;
use clap::{Parser, Subcommand};
use standby_proxy::config::{Config, LoadError};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Makes a pair of telephony servers behave as one: elects the active node, fails over,
/// and redirects every client to it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node until SIGTERM or Ctrl-C.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "config/standby-proxy.toml")]
        config: PathBuf,
    },
    /// Check a configuration file: exit 0 if valid, else 2 with every error by key.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Exit code for bad usage or configuration (the contract: 0 ok, 1 runtime failure, 2 usage).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => config_failure(&config, &error),
        },
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(error) => return config_failure(&path, &error),
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("standby-proxy: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_failure(path: &std::path::Path, error: &LoadError) -> ExitCode {
    eprintln!("{}: invalid configuration", path.display());
    for line in error.to_string().lines() {
        eprintln!("  {line}");
    }
    ExitCode::from(EXIT_USAGE)
}

fn run(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .context("log filter")?;
    // Logs go to stderr so stdout stays for command output; colour only on a terminal.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Signals need the IO driver, heartbeats the timer.
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let summary = standby_proxy::node::run(config, shutdown_signal()).await;
        tracing::info!(role = %summary.last_role, term = summary.term, "stopped");
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this node");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
