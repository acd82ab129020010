//! `brokk ctl`: the admin API from a shell. A readable table by default, the API's JSON with
//! `--json`; on an error, the API's message on stderr and exit code 1.
//!
//! The URL comes from `--admin` or `BROKK_ADMIN_URL` (default `http://127.0.0.1:9884`, where
//! the broker listens by default, inside its container too), the token from `--token-file` or
//! `BROKK_ADMIN_TOKEN`.

mod client;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use hyper::Method;

use crate::admin::json::{ClosePage, Health, SessionDetailDoc, SessionPage, Users};

pub use client::{Client, CtlError, encode};

/// How long one request may take (a page of sessions on a large broker included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `health` waits: a health check must answer quickly or count as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Sessions asked for per page while `sessions` collects them all.
const PAGE: usize = 1000;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin API's URL.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "BROKK_ADMIN_URL",
        default_value = "http://127.0.0.1:9884"
    )]
    pub admin: String,
    /// A file holding the bearer token (default: the BROKK_ADMIN_TOKEN variable).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateFilter {
    Connected,
    Disconnected,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List sessions, in client-id order.
    Sessions {
        /// Only connected sessions, or only those waiting for their client.
        #[arg(long)]
        state: Option<StateFilter>,
        /// Only sessions of this user.
        #[arg(long)]
        user: Option<String>,
        /// Only client ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One session in detail, with its subscriptions.
    Session { client_id: String },
    /// Close a client's connection (closed_by_controller, v5 0x98) and discard its session.
    Kick {
        client_id: String,
        /// Close the connection only; the session waits for its client.
        #[arg(long)]
        keep_session: bool,
    },
    /// Close every session of USER (revoked, v5 0x87) and refuse its CONNECTs until restored.
    Revoke { user: String },
    /// Lift a revoke.
    Restore { user: String },
    /// The users whose CONNECTs are refused.
    Revoked,
    /// The latest closes, newest first (of CLIENT_ID only, when given).
    Closes {
        client_id: Option<String>,
        /// Only closes with this reason (a close-reason label).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Exit 0 when the admin API answers (for health checks).
    Health,
}

/// Runs one `brokk ctl` command; the process's exit code.
pub fn main(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("brokk ctl: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{}", output.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("brokk ctl: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; what to print.
pub async fn run(args: CtlArgs) -> Result<String, CtlError> {
    let token = token(args.token_file.as_deref())?;
    let timeout = match args.command {
        CtlCommand::Health => HEALTH_TIMEOUT,
        _ => REQUEST_TIMEOUT,
    };
    let client = Client::new(&args.admin, token, timeout)?;
    let json = args.json;
    match args.command {
        CtlCommand::Sessions {
            state,
            user,
            prefix,
            limit,
        } => {
            let filter = Filter {
                state,
                user,
                prefix,
            };
            let page = all_sessions(&client, &filter, limit).await?;
            Ok(if json {
                to_json(&page)
            } else {
                show::sessions(&page)
            })
        }
        CtlCommand::Session { client_id } => {
            let path = format!("/v1/sessions/{}", encode(&client_id));
            let detail: SessionDetailDoc = client.get(&path).await?;
            Ok(if json {
                to_json(&detail)
            } else {
                show::session(&detail)
            })
        }
        CtlCommand::Kick {
            client_id,
            keep_session,
        } => {
            let mut path = format!("/v1/sessions/{}", encode(&client_id));
            if keep_session {
                path.push_str("?keep_session=true");
            }
            client.call(Method::DELETE, &path).await?;
            let kept = if keep_session { "kept" } else { "discarded" };
            Ok(quiet(
                json,
                format!("kicked {} (session {kept})", show::printable(&client_id)),
            ))
        }
        CtlCommand::Revoke { user } => {
            let path = format!("/v1/users/{}/revoke", encode(&user));
            client.call(Method::POST, &path).await?;
            Ok(quiet(json, format!("revoked {}", show::printable(&user))))
        }
        CtlCommand::Restore { user } => {
            let path = format!("/v1/users/{}/restore", encode(&user));
            client.call(Method::POST, &path).await?;
            Ok(quiet(json, format!("restored {}", show::printable(&user))))
        }
        CtlCommand::Revoked => {
            let users: Users = client.get("/v1/users/revoked").await?;
            Ok(if json {
                to_json(&users)
            } else {
                show::users(&users)
            })
        }
        CtlCommand::Closes {
            client_id,
            reason,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(client_id) = &client_id {
                query.push(format!("client_id={}", encode(client_id)));
            }
            if let Some(reason) = &reason {
                query.push(format!("reason={}", encode(reason)));
            }
            let page: ClosePage = client
                .get(&format!("/v1/closes?{}", query.join("&")))
                .await?;
            Ok(if json {
                to_json(&page)
            } else {
                show::closes(&page)
            })
        }
        CtlCommand::Health => {
            let health: Health = client.get("/v1/health").await?;
            Ok(if json {
                to_json(&health)
            } else {
                health.status
            })
        }
    }
}

/// The token from `file` (whitespace trimmed), else from `BROKK_ADMIN_TOKEN`.
fn token(file: Option<&std::path::Path>) -> Result<Option<String>, CtlError> {
    let text = match file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| CtlError::Usage(format!("--token-file {}: {e}", file.display())))?,
        None => match std::env::var("BROKK_ADMIN_TOKEN") {
            Ok(token) => token,
            Err(_) => return Ok(None),
        },
    };
    let token = text.trim();
    Ok((!token.is_empty()).then(|| token.to_string()))
}

struct Filter {
    state: Option<StateFilter>,
    user: Option<String>,
    prefix: Option<String>,
}

/// Every page of `GET /v1/sessions` (up to `limit` sessions), as one page whose `next` says
/// where a further listing would start.
async fn all_sessions(
    client: &Client,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<SessionPage, CtlError> {
    let mut all = SessionPage {
        sessions: Vec::new(),
        next: None,
    };
    let mut after: Option<String> = None;
    loop {
        let wanted = limit.map_or(PAGE, |l| l.saturating_sub(all.sessions.len()).min(PAGE));
        if wanted == 0 {
            return Ok(all);
        }
        let mut query = vec![format!("limit={wanted}")];
        if let Some(state) = filter.state {
            let state = match state {
                StateFilter::Connected => "connected",
                StateFilter::Disconnected => "disconnected",
            };
            query.push(format!("state={state}"));
        }
        for (key, value) in [
            ("user", &filter.user),
            ("prefix", &filter.prefix),
            ("after", &after),
        ] {
            if let Some(value) = value {
                query.push(format!("{key}={}", encode(value)));
            }
        }
        let page: SessionPage = client
            .get(&format!("/v1/sessions?{}", query.join("&")))
            .await?;
        all.sessions.extend(page.sessions);
        all.next = page.next.clone();
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A command that answers 204 prints its line for a person, nothing with `--json`.
fn quiet(json: bool, line: String) -> String {
    if json { String::new() } else { line }
}
