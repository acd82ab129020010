//! `BROKK_<SECTION>__<KEY>` environment overrides: which variables are overrides, and a clear
//! error for a `BROKK_` variable that names no key (a single underscore between levels, say),
//! which would otherwise be ignored without a word.

use super::ConfigError;

pub(super) const PREFIX: &str = "BROKK_";

/// `BROKK_` variables that are not configuration keys: read by `brokk ctl` and by the test and
/// fuzzing scripts. Everything else with the prefix must name a key.
pub const NOT_CONFIGURATION: [&str; 6] = [
    "BROKK_ADMIN_URL",
    "BROKK_ADMIN_TOKEN",
    "BROKK_BIN",
    "BROKK_SOAK_CYCLES",
    "BROKK_FUZZ_WRITE_SEEDS",
    "BROKK_MOSQUITTO_PASSWD",
];

/// The top-level sections of broker.toml (kept equal to `Config`'s fields by a test), for the
/// "did you mean" hint.
pub(super) const SECTIONS: [&str; 9] = [
    "listeners",
    "metrics",
    "limits",
    "session",
    "auth",
    "storage",
    "admin",
    "log",
    "cluster",
];

/// The override variables among `env`, or the first `BROKK_` variable that cannot be one.
pub(super) fn overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, String>, ConfigError> {
    let mut found = config::Map::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| has_prefix(name))
        .collect();
    // The first bad variable in name order, so the message does not depend on the
    // environment's order.
    vars.sort();
    for (name, value) in vars {
        let upper = name.to_ascii_uppercase();
        if NOT_CONFIGURATION.contains(&upper.as_str()) {
            continue;
        }
        if !name[PREFIX.len()..].contains("__") {
            return Err(ConfigError::Env {
                var: name.clone(),
                why: not_a_key(&upper),
            });
        }
        found.insert(name, value);
    }
    Ok(found)
}

fn has_prefix(name: &str) -> bool {
    name.get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// Why a variable without `__` is no key, with the likely intended name when it starts with a
/// section.
fn not_a_key(upper: &str) -> String {
    let rest = &upper[PREFIX.len()..];
    let mut why = "names no configuration key: levels are separated by a double underscore, \
                   BROKK_<SECTION>__<KEY>"
        .to_string();
    let intended = SECTIONS.iter().find_map(|section| {
        let section = section.to_ascii_uppercase();
        let key = rest.strip_prefix(&section)?.strip_prefix('_')?;
        (!key.is_empty()).then(|| format!("{PREFIX}{section}__{key}"))
    });
    if let Some(intended) = intended {
        why.push_str(&format!(" (did you mean {intended}?)"));
    }
    why
}

/// The variable that would set `key` (a dotted path such as `auth.password_file`), if the
/// overrides hold one.
pub(super) fn variable_for<'a>(key: &str, names: &'a [String]) -> Option<&'a String> {
    let var = format!("{PREFIX}{}", key.to_uppercase().replace('.', "__"));
    names.iter().find(|name| name.to_uppercase() == var)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_double_underscore_names_are_overrides() {
        let found = overrides(vars(&[
            ("BROKK_LIMITS__MAX_PACKET_SIZE", "1"),
            ("BROKK_ADMIN_URL", "http://127.0.0.1:9884"),
            ("BROKK_ADMIN_TOKEN", "x"),
            ("BROKK_BIN", "/bin/true"),
            ("PATH", "/bin"),
            ("OTHER_LIMITS__MAX_PACKET_SIZE", "1"),
        ]))
        .unwrap();
        assert_eq!(found.len(), 1);
        assert!(found.contains_key("BROKK_LIMITS__MAX_PACKET_SIZE"));
    }

    #[test]
    fn a_single_underscore_typo_is_an_error_with_a_hint() {
        let e = overrides(vars(&[("BROKK_LIMITS_MAX_PACKET_SIZE", "16")])).unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("environment variable BROKK_LIMITS_MAX_PACKET_SIZE: names no"),
            "{e}"
        );
        assert!(
            e.contains("did you mean BROKK_LIMITS__MAX_PACKET_SIZE?"),
            "{e}"
        );

        let e = overrides(vars(&[("BROKK_CONFIG", "/etc/brokk.toml")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BROKK_CONFIG: names no configuration key"),
            "{e}"
        );
        assert!(!e.contains("did you mean"), "{e}");
        // Lowercase names count too: the prefix is matched without regard to case.
        assert!(overrides(vars(&[("brokk_auth_allow_anonymous", "true")])).is_err());
    }

    #[test]
    fn variable_for_finds_the_override_of_a_key() {
        let names = vec!["BROKK_AUTH__PASSWORD_FILE".to_string()];
        assert!(variable_for("auth.password_file", &names).is_some());
        assert!(variable_for("auth.allow_anonymous", &names).is_none());
    }
}
