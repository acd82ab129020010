//! The `brokk` binary: CLI, configuration, logging, and running until SIGINT or SIGTERM;
//! SIGHUP reloads the password file, the ACL file and the JWT key.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use brokk::config::Config;
use brokk::server::{Server, StartError};

/// Exit code for a configuration that cannot be used (also from `--check-config`).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "brokk",
    version,
    about = "An MQTT 3.1.1 and 5.0 broker that always says why a session ended"
)]
struct Cli {
    /// Configuration file (default: the built-in broker.toml). Every key is optional.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Load everything the broker would (files, keys, certificates, addresses) without
    /// listening, then exit: 0 when usable, 2 (naming the key) when not.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Add or update USER in a password file (typed twice at a terminal; otherwise one line
    /// of stdin).
    Passwd {
        /// Remove USER instead.
        #[arg(long)]
        delete: bool,
        file: PathBuf,
        user: String,
    },
    /// The admin API from a shell: sessions, kicks, revokes, the close history.
    Ctl(brokk::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Passwd { delete, file, user }) => return passwd(delete, &file, &user),
        Some(Command::Ctl(args)) => return brokk::ctl::main(args),
        None => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("brokk: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        return check_config(&config);
    }
    brokk::logging::init(&config.log);
    let source = match &cli.config {
        Some(path) => path.display().to_string(),
        None => "built-in".to_string(),
    };
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        config = %source,
        "brokk starting"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("brokk: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

/// `--check-config`: the same loading as a start, warnings on stderr, no socket bound.
fn check_config(config: &Config) -> ExitCode {
    match brokk::server::preflight(config) {
        Ok(prepared) => {
            for warning in &prepared.warnings {
                eprintln!("brokk: warning: {warning}");
            }
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("brokk: invalid configuration: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn run(config: Config) -> ExitCode {
    // Signal handlers first: a SIGTERM that arrives while the listeners open still means a
    // graceful stop, not the default kill; a SIGHUP, a reload rather than an exit.
    let signal = shutdown_signal();
    let hangups = hangup_signal();
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(error) => return start_failed(&error),
    };
    let reloader = tokio::spawn(reload_on_hangup(hangups, server.broker().clone()));
    signal.await;
    reloader.abort();
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// One line on stderr (not a log line as well): exit 2 for what `--check-config` would have
/// said, 1 for a valid configuration the machine refused (a port in use).
fn start_failed(error: &StartError) -> ExitCode {
    if error.is_configuration() {
        eprintln!("brokk: invalid configuration: {error}");
        ExitCode::from(EXIT_CONFIG)
    } else {
        eprintln!("brokk: cannot start: {error}");
        ExitCode::FAILURE
    }
}

/// Registers SIGTERM and SIGINT now (not at first poll); the returned future resolves on
/// the first of them.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Registers SIGHUP now, so that from here on it reloads instead of ending the process.
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP; reloads need a restart");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

/// Each SIGHUP reloads `[auth]`'s files. The reload logs what changed, or why it failed (the
/// rules in force then stay).
#[cfg(unix)]
async fn reload_on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    broker: std::sync::Arc<brokk::broker::Broker>,
) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the password file, the ACL file and the JWT key");
        let broker = broker.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || broker.reload_auth()).await {
            tracing::error!(%error, "the reload did not finish");
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: Option<()>, _: std::sync::Arc<brokk::broker::Broker>) {}

fn passwd(delete: bool, file: &Path, user: &str) -> ExitCode {
    if delete {
        return match brokk::auth::passwd_delete(file, user) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("brokk passwd: no user {user} in {}", file.display());
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("brokk passwd: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let password = match read_password(user) {
        Ok(password) => password,
        Err(why) => {
            eprintln!("brokk passwd: {why}");
            return ExitCode::FAILURE;
        }
    };
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("brokk passwd: empty password");
        return ExitCode::FAILURE;
    }
    match brokk::auth::passwd_set(file, user, password) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("brokk passwd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// At a terminal the password is typed twice without echo (a typo would otherwise lock the
/// user out); otherwise it is one line of stdin.
fn read_password(user: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    let cannot = |error: std::io::Error| format!("cannot read the password: {error}");
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(cannot)?;
        return Ok(line);
    }
    let first = rpassword::prompt_password(format!("Password for {user}: ")).map_err(cannot)?;
    let second = rpassword::prompt_password("Repeat the password: ").map_err(cannot)?;
    if first != second {
        return Err("the passwords do not match; nothing changed".to_string());
    }
    Ok(first)
}
