//! The `gatehouse` binary: command line → configuration → tracing → [`gatehouse::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::commands::{self, AdminKeysCommand, Failed, KeysCommand};
use gatehouse::{config, telemetry};

/// Gatehouse, an authentication service.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(
        long,
        env = "GATEHOUSE_CONFIG",
        default_value = "config.toml",
        global = true
    )]
    config: PathBuf,
    /// Load and validate the configuration, report, and exit (0 valid, 2 invalid).
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The signing keys of the configured database (EdDSA or ES256).
    #[command(subcommand)]
    Keys(Keys),
    /// Keys for the admin API (`Authorization: Bearer ghk_…`).
    #[command(subcommand)]
    AdminKeys(AdminKeys),
}

#[derive(Subcommand)]
enum AdminKeys {
    /// A new key with these scopes; printed this once (only a digest is kept).
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: users:read, users:write, audit:read, keys:write, introspect.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// One JSON line per key that is not revoked (never the key).
    List,
    /// Refuse the key from now on, on every instance.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum Keys {
    /// One JSON line per key.
    List,
    /// Publish a new next key; with --now, make a key sign at once.
    Rotate {
        #[arg(long)]
        now: bool,
    },
    /// Remove a key: every token it signed is refused, on every instance, within a second.
    Revoke { kid: String },
}

/// Exit code for an invalid configuration.
const INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = match config::load(&args.config) {
        Ok(loaded) => loaded,
        Err(problems) => {
            for problem in problems {
                eprintln!("invalid configuration: {problem}");
            }
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    if args.check_config {
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
        println!("configuration {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    match args.command {
        Some(Command::Keys(keys)) => {
            let command = match keys {
                Keys::List => KeysCommand::List,
                Keys::Rotate { now } => KeysCommand::Rotate { now },
                Keys::Revoke { kid } => KeysCommand::Revoke { kid },
            };
            return run_command(&loaded, commands::keys(&loaded, command));
        }
        Some(Command::AdminKeys(keys)) => {
            let command = match keys {
                AdminKeys::Create { name, scopes } => AdminKeysCommand::Create { name, scopes },
                AdminKeys::List => AdminKeysCommand::List,
                AdminKeys::Revoke { id } => AdminKeysCommand::Revoke { id },
            };
            return run_command(&loaded, commands::admin_keys(&loaded, command));
        }
        None => {}
    }
    let _log_writer = match telemetry::init_tracing(&loaded.config.logging) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("cannot start logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let prometheus = telemetry::init_metrics().map_err(|e| format!("metrics: {e}"))?;
        gatehouse::run(loaded, prometheus, shutdown_signal()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: telemetry::LIFECYCLE, "{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command to its end: its lines on stdout, a failure on stderr.
fn run_command(
    loaded: &config::Loaded,
    command: impl Future<Output = Result<Vec<String>, Failed>>,
) -> ExitCode {
    let _log_writer = telemetry::init_tracing(&loaded.config.logging).ok();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(failed) => {
            eprintln!("{}", failed.message);
            ExitCode::from(failed.code)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = terminate.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!(target: telemetry::LIFECYCLE, "shutdown signal received");
}
