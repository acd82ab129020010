//! Tables for people (`brokk ctl` without `--json`).

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, ColumnConstraint, Table};

use crate::admin::json::{ClosePage, Session, SessionDetailDoc, SessionPage, Users};

/// `text` safe to print on a terminal: control characters (a client id may hold escape
/// sequences) are shown escaped.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn or_dash(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_string(), printable)
}

/// An RFC 3339 time to the second (the API gives milliseconds).
fn short_time(at: &str) -> String {
    match at.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => at.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header.to_vec());
    table
}

/// The table as text: no border, columns two spaces apart, no trailing blanks.
fn render(mut table: Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Numbers line up on the right.
fn right_align(table: &mut Table, columns: &[usize]) {
    for &index in columns {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

pub fn sessions(page: &SessionPage) -> String {
    let mut table = table(&[
        "CLIENT ID",
        "STATE",
        "USER",
        "PEER",
        "PROTOCOL",
        "SINCE",
        "SUBS",
        "QUEUED",
        "INFLIGHT",
    ]);
    for s in &page.sessions {
        let since = s
            .disconnected_since
            .as_deref()
            .unwrap_or(&s.connected_since);
        table.add_row(vec![
            printable(&s.client_id),
            s.state.clone(),
            or_dash(s.user.as_deref()),
            s.peer.clone(),
            s.protocol.clone(),
            short_time(since),
            s.subscriptions.to_string(),
            s.queued.to_string(),
            s.inflight.to_string(),
        ]);
    }
    right_align(&mut table, &[6, 7, 8]);
    let mut out = format!("{}\n", render(table));
    let n = page.sessions.len();
    out.push_str(&format!("{n} session{}", if n == 1 { "" } else { "s" }));
    if page.next.is_some() {
        out.push_str(" (more with a larger --limit)");
    }
    out
}

fn fields(session: &Session) -> Vec<(&'static str, String)> {
    vec![
        ("client id", printable(&session.client_id)),
        ("state", session.state.clone()),
        ("user", or_dash(session.user.as_deref())),
        ("peer", session.peer.clone()),
        ("protocol", session.protocol.clone()),
        ("listener", printable(&session.listener)),
        ("connected since", session.connected_since.clone()),
        (
            "disconnected since",
            or_dash(session.disconnected_since.as_deref()),
        ),
        ("expires at", or_dash(session.expires_at.as_deref())),
        ("session expiry", format!("{} s", session.expiry_s)),
        ("queued", session.queued.to_string()),
        ("in flight", session.inflight.to_string()),
        ("subscriptions", session.subscriptions.to_string()),
    ]
}

pub fn session(detail: &SessionDetailDoc) -> String {
    let mut out = String::new();
    for (name, value) in fields(&detail.session) {
        out.push_str(&format!("{:<20}{value}\n", format!("{name}:")));
    }
    if !detail.subscription_list.is_empty() {
        let mut table = table(&["FILTER", "QOS", "NO LOCAL", "RETAIN AS PUBLISHED", "ID"]);
        for s in &detail.subscription_list {
            table.add_row(vec![
                printable(&s.filter),
                s.qos.to_string(),
                s.no_local.to_string(),
                s.retain_as_published.to_string(),
                s.subscription_identifier
                    .map_or_else(|| "-".to_string(), |id| id.to_string()),
            ]);
        }
        out.push('\n');
        out.push_str(&render(table));
    }
    out
}

pub fn closes(page: &ClosePage) -> String {
    let mut table = table(&["AT", "CLIENT ID", "USER", "PEER", "REASON", "DETAIL"]);
    // A long detail (an error's text) should not stretch the table past the terminal.
    for c in &page.closes {
        table.add_row(vec![
            short_time(&c.at),
            or_dash(c.client_id.as_deref()),
            or_dash(c.user.as_deref()),
            c.peer.clone(),
            c.reason.clone(),
            or_dash(c.detail.as_deref()),
        ]);
    }
    if let Some(column) = table.column_mut(5) {
        column.set_constraint(ColumnConstraint::UpperBoundary(comfy_table::Width::Fixed(
            60,
        )));
    }
    if page.closes.is_empty() {
        return "no closes recorded".to_string();
    }
    render(table)
}

pub fn users(users: &Users) -> String {
    if users.users.is_empty() {
        return "no revoked users".to_string();
    }
    users
        .users
        .iter()
        .map(|u| printable(u))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("ø/x y"), "ø/x y");
    }

    #[test]
    fn times_are_cut_to_the_second() {
        assert_eq!(
            short_time("2026-12-01T10:54:29.123Z"),
            "2026-12-01T10:54:29Z"
        );
    }
}
