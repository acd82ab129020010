//! The `brokk` binary: CLI, configuration, logging, and running until SIGINT or SIGTERM;
//! SIGHUP reloads the password file, the ACL file and the JWT key.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use brokk::config::{Config, LogFormat};
use brokk::server::Server;

#[derive(Parser)]
#[command(
    name = "brokk",
    version,
    about = "An MQTT 3.1.1 and 5.0 broker that always says why a session ended"
)]
struct Cli {
    /// Configuration file (default: the built-in broker.toml). Every key is optional.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 when valid, 2 (naming the key) when not.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Add or update USER in a password file (password read from stdin when not a TTY).
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
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        // The files [auth] names are read too: a broken ACL should fail here, not at start.
        if let Err(error) = brokk::auth::AuthState::load(&config.auth, 1) {
            eprintln!("brokk: invalid configuration: {error}");
            return ExitCode::from(2);
        }
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
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

async fn run(config: Config) -> ExitCode {
    // Signal handlers first: a SIGTERM that arrives while the listeners open still means a
    // graceful stop, not the default kill; a SIGHUP, a reload rather than an exit.
    let signal = shutdown_signal();
    let hangups = hangup_signal();
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("brokk: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(%addr, "metrics at /metrics");
    }
    let reloader = tokio::spawn(reload_on_hangup(hangups, server.broker().clone()));
    signal.await;
    reloader.abort();
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
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
        if let Err(error) = tokio::task::spawn_blocking(move || broker.auth.reload()).await {
            tracing::error!(%error, "the reload did not finish");
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: Option<()>, _: std::sync::Arc<brokk::broker::Broker>) {}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only for a person at a terminal; logs collected by Docker or CI stay plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn passwd(delete: bool, file: &std::path::Path, user: &str) -> ExitCode {
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
    let stdin = std::io::stdin();
    // At a terminal the password is typed without echo; otherwise it is one line of stdin.
    let password = if stdin.is_terminal() {
        rpassword::prompt_password(format!("Password for {user}: "))
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map(|_| line)
    };
    let password = match password {
        Ok(password) => password,
        Err(error) => {
            eprintln!("brokk passwd: cannot read the password: {error}");
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
