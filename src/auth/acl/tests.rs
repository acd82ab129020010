use std::time::{Duration, Instant};

use super::*;
use crate::auth::acl_file;

fn acl(text: &str) -> Acl {
    Acl::compile(&acl_file::parse(text).unwrap())
}

const FILE: &str = "\
# anonymous clients
topic read public/#
topic write public/anonymous/in

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read shared/+/status
topic write $SYS/broker/connection/alice/state

user bob
topic read #
topic deny +/forbidden
topic deny bob/private

pattern readwrite clients/%c/#
pattern read users/%u/inbox
pattern deny clients/%c/locked
pattern write users/%u/out/%c
";

use Access::{Read, Subscribe, Write};

#[test]
fn allow_deny_table() {
    let acl = acl(FILE);
    let alice = Some("alice");
    let bob = Some("bob");
    let carol = Some("carol"); // in no section: patterns only
    let cases: &[(Option<&str>, &str, &str, Access, bool)] = &[
        // The anonymous section applies to clients without a user name only.
        (None, "c1", "public/news", Read, true),
        (None, "c1", "public/news", Write, false),
        (None, "c1", "public/anonymous/in", Write, true),
        (None, "c1", "alice/x", Read, false),
        (alice, "c1", "public/news", Read, false),
        // A user's own rules.
        (alice, "a1", "alice/notes", Read, true),
        (alice, "a1", "alice/notes", Write, true),
        (alice, "a1", "alice", Write, true), // alice/# matches alice
        (alice, "a1", "shared/x/status", Read, true),
        (alice, "a1", "shared/x/status", Write, false),
        (alice, "a1", "shared/x/y/status", Read, false),
        // Deny comes before any grant, whatever the order in the file.
        (alice, "a1", "alice/secret", Read, false),
        (alice, "a1", "alice/secret/deeper", Write, false),
        (bob, "b1", "anything/at/all", Read, true),
        (bob, "b1", "bob/private", Read, false),
        (bob, "b1", "bob/public", Write, false),
        // `#` rules do not reach `$` topics; `$` rules do.
        (bob, "b1", "$SYS/broker/load", Read, false),
        (
            alice,
            "a1",
            "$SYS/broker/connection/alice/state",
            Write,
            true,
        ),
        // Patterns: %c and %u, for every client, after its own rules.
        (carol, "dev7", "clients/dev7/telemetry", Write, true),
        (carol, "dev7", "clients/dev8/telemetry", Write, false),
        (None, "dev7", "clients/dev7/telemetry", Read, true),
        (carol, "dev7", "users/carol/inbox", Read, true),
        (carol, "dev7", "users/carol/inbox", Write, false),
        (carol, "dev7", "users/carol/out/dev7", Write, true),
        (carol, "dev7", "users/carol/out/dev8", Write, false),
        (None, "dev7", "users//inbox", Read, false), // %u never matches without a user name
        (carol, "dev7", "clients/dev7/locked", Read, false),
        // Own rules decide before patterns: bob reads clients/*/locked through `#`.
        (bob, "b1", "clients/b1/locked", Read, true),
        (alice, "a1", "clients/a1/locked", Read, false),
    ];
    for (user, client, topic, access, expected) in cases {
        assert_eq!(
            acl.allowed(*user, client, topic, *access),
            *expected,
            "{user:?} {client} {topic} {access:?}"
        );
    }
}

#[test]
fn dangerous_names_get_nothing_from_patterns() {
    let acl = acl(FILE);
    assert!(!acl.allowed(Some("carol"), "+", "clients/+/x", Write));
    assert!(!acl.allowed(Some("carol"), "#", "clients/#/x", Write));
    assert!(!acl.allowed(Some("ca+rol"), "dev", "clients/dev/x", Write));
    // Own rules still apply to them.
    assert!(acl.allowed(Some("bob"), "x#", "anything", Read));
}

#[test]
fn empty_file_denies_everything() {
    let acl = acl("# nothing\n");
    assert!(!acl.allowed(None, "c", "a", Read));
    assert!(!acl.allowed(Some("u"), "c", "a", Write));
    assert!(!acl.allowed(Some("u"), "c", "#", Subscribe));
}

#[test]
fn subscribe_decisions() {
    let acl = acl(FILE);
    let alice = acl.view(Some("alice"), "a1");
    let bob = acl.view(Some("bob"), "b1");
    let anon = acl.view(None, "c1");
    let granted = |check_each| SubscribeDecision::Granted { check_each };
    // Covered by a read rule with no deny inside: no per-message check.
    assert_eq!(anon.subscribe("public/#"), granted(false));
    assert_eq!(anon.subscribe("public/+/x"), granted(false));
    // Reaches readable topics and others: granted, each message checked.
    assert_eq!(anon.subscribe("#"), granted(true));
    assert_eq!(alice.subscribe("alice/#"), granted(true)); // alice/secret/# inside
    assert_eq!(alice.subscribe("alice/notes"), granted(false));
    // Entirely denied, or nothing readable: refused.
    assert_eq!(alice.subscribe("alice/secret/#"), SubscribeDecision::Denied);
    assert_eq!(alice.subscribe("alice/secret/x"), SubscribeDecision::Denied);
    assert_eq!(anon.subscribe("public/anonymous/in"), granted(false));
    assert_eq!(anon.subscribe("private/x"), SubscribeDecision::Denied);
    assert_eq!(bob.subscribe("bob/private"), SubscribeDecision::Denied);
    assert_eq!(bob.subscribe("x/forbidden"), SubscribeDecision::Denied);
    assert_eq!(bob.subscribe("#"), granted(true));
    assert_eq!(bob.subscribe("$SYS/#"), SubscribeDecision::Denied);
    // Write-only rules do not grant a subscription.
    assert_eq!(
        acl.view(Some("carol"), "dev7")
            .subscribe("users/carol/out/dev7"),
        SubscribeDecision::Denied
    );
    // Patterns decide after own rules.
    assert_eq!(
        acl.view(Some("carol"), "dev7").subscribe("clients/dev7/#"),
        granted(true)
    );
    assert_eq!(
        acl.view(Some("carol"), "dev7")
            .subscribe("clients/dev7/locked"),
        SubscribeDecision::Denied
    );
    // Shared subscriptions are judged by their filter.
    assert_eq!(anon.subscribe("$share/g/public/#"), granted(false));
    assert_eq!(
        anon.subscribe("$share/g/private/#"),
        SubscribeDecision::Denied
    );
    assert_eq!(anon.subscribe("bad/#/filter"), SubscribeDecision::Denied);
}

#[test]
fn paho_subscribe_failure_acl() {
    // The ACL the interoperability suite uses for Paho's test_subscribe_failure.
    let acl = acl("topic readwrite #\ntopic deny test/nosubscribe\n");
    let view = acl.view(None, "paho");
    assert_eq!(
        view.subscribe("test/nosubscribe"),
        SubscribeDecision::Denied
    );
    assert!(view.subscribe("test/other").is_granted());
    assert!(!view.allowed("test/nosubscribe", Write));
}

#[test]
fn token_grants_narrow() {
    let grants = TopicGrants::new(&["out/#".to_string()], &["in/+".to_string()]);
    assert!(grants.allowed("out/a/b", Write));
    assert!(!grants.allowed("out/a/b", Read));
    assert!(grants.allowed("in/a", Read));
    assert!(!grants.allowed("in/a/b", Read));
    assert_eq!(
        grants.subscribe("in/+"),
        SubscribeDecision::Granted { check_each: false }
    );
    assert_eq!(
        grants.subscribe("#"),
        SubscribeDecision::Granted { check_each: true }
    );
    assert_eq!(grants.subscribe("out/#"), SubscribeDecision::Denied);
    let both = grants
        .subscribe("in/x")
        .and(SubscribeDecision::Granted { check_each: true });
    assert_eq!(both, SubscribeDecision::Granted { check_each: true });
    assert_eq!(
        grants.subscribe("in/x").and(SubscribeDecision::Denied),
        SubscribeDecision::Denied
    );
}

/// 20,000 users with five rules each, 1,000 patterns: a check walks the topic's levels, so
/// it costs microseconds however many rules there are (a linear scan would cost milliseconds).
#[test]
fn thousands_of_rules_stay_fast() {
    let mut text = String::from("topic read public/#\n");
    for u in 0..20_000 {
        text.push_str(&format!(
            "user user{u}\ntopic readwrite home/{u}/#\ntopic read sensors/+/{u}\n\
             topic deny home/{u}/private\ntopic write cmd/{u}\ntopic read shared/#\n"
        ));
    }
    for p in 0..1_000 {
        text.push_str(&format!("pattern readwrite app{p}/%u/%c/#\n"));
    }
    let acl = acl(&text);
    assert_eq!(acl.rule_count(), 1 + 20_000 * 5 + 1_000);

    let checks = 100_000;
    let started = Instant::now();
    let mut allowed = 0;
    for i in 0..checks {
        let u = i % 20_000;
        let user = format!("user{u}");
        let view = acl.view(Some(&user), "dev");
        let topic = match i % 4 {
            0 => format!("home/{u}/kitchen"),
            1 => format!("home/{u}/private"),
            2 => format!("app{}/{user}/dev/x", i % 1_000),
            _ => format!("sensors/t/{u}"),
        };
        if view.allowed(&topic, if i % 4 == 3 { Read } else { Write }) {
            allowed += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(allowed, checks / 4 * 3);
    // About 1 µs per check in a debug build here; the bound leaves room for a slow machine.
    assert!(
        elapsed < Duration::from_secs(5),
        "{checks} checks took {elapsed:?}"
    );
    let per_check = elapsed / checks as u32;
    eprintln!(
        "{checks} checks over {} rules: {per_check:?} each",
        acl.rule_count()
    );
}
