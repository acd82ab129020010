//! `brokk passwd`: adds, updates and removes users in a password file, replacing the file
//! atomically. New entries are argon2id with brokk's parameters (see
//! [`super::passwords::ARGON2_M_COST_KIB`]); other lines, comments and Mosquitto entries are
//! kept as they are.

use std::io::Write;
use std::path::Path;

use super::AuthError;
use super::passwords::new_hash;

const KEY: &str = "auth.password_file";

/// The user name of a line, if it is a user line (malformed lines count as not).
fn line_user(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

fn check_user_name(file: &Path, user: &str) -> Result<(), AuthError> {
    // Each refusal keeps the line format unambiguous: `:` ends the name, a newline ends the
    // line, and a name that trims to nothing or starts with `#` would read as blank/comment.
    if user.contains(':') {
        return Err(AuthError::file(
            KEY,
            file,
            format!("user name {user:?} must not contain ':'"),
        ));
    }
    if user.contains(['\n', '\r']) {
        return Err(AuthError::file(
            KEY,
            file,
            format!("user name {user:?} must not contain a line break"),
        ));
    }
    let trimmed = user.trim();
    if trimmed.is_empty() {
        return Err(AuthError::file(KEY, file, "user name must not be empty"));
    }
    if trimmed.starts_with('#') {
        return Err(AuthError::file(
            KEY,
            file,
            format!("user name {user:?} must not start with '#'"),
        ));
    }
    Ok(())
}

/// The file's lines, or none if it does not exist yet.
fn read_lines(file: &Path) -> Result<Option<Vec<String>>, AuthError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text.lines().map(str::to_string).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuthError::file(KEY, file, e.to_string())),
    }
}

/// Replaces `file` with `lines` atomically: a reader (or a crash) sees the old file or the new
/// one, never half of one. The temporary file sits next to the target so rename stays within
/// one filesystem.
fn write_atomically(file: &Path, lines: &[String], existing: bool) -> Result<(), AuthError> {
    let io = |e: std::io::Error| AuthError::file(KEY, file, e.to_string());
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| AuthError::file(KEY, file, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        // Created private: the hashes are slow to crack, not impossible.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut out = options.open(&tmp)?;
        if existing {
            // Keep whatever permissions the operator gave the existing file.
            let permissions = std::fs::metadata(file)?.permissions();
            out.set_permissions(permissions)?;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

/// `brokk passwd FILE USER`: adds or updates USER with `password`.
pub fn passwd_set(file: &Path, user: &str, password: &str) -> Result<(), AuthError> {
    check_user_name(file, user)?;
    if password.is_empty() {
        return Err(AuthError::file(KEY, file, "password must not be empty"));
    }
    let hash = new_hash(password.as_bytes())
        .map_err(|e| AuthError::file(KEY, file, format!("cannot hash the password: {e}")))?;
    let entry = format!("{user}:{hash}");

    let existing = read_lines(file)?;
    let is_existing = existing.is_some();
    let mut lines = existing.unwrap_or_default();
    let mut replaced = false;
    // Replace in place (keeping the file's order and comments); drop any duplicate entries of
    // the same user so the new password is the only one.
    lines.retain_mut(|line| {
        if line_user(line) != Some(user) {
            return true;
        }
        if replaced {
            return false;
        }
        replaced = true;
        *line = entry.clone();
        true
    });
    if !replaced {
        lines.push(entry);
    }
    write_atomically(file, &lines, is_existing)
}

/// `brokk passwd --delete FILE USER`: removes USER; returns whether it was there.
pub fn passwd_delete(file: &Path, user: &str) -> Result<bool, AuthError> {
    let Some(mut lines) = read_lines(file)? else {
        return Ok(false);
    };
    let before = lines.len();
    lines.retain(|line| line_user(line) != Some(user));
    if lines.len() == before {
        return Ok(false);
    }
    write_atomically(file, &lines, true)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::passwords::{PasswordFile, Verdict};

    fn load(file: &Path) -> PasswordFile {
        PasswordFile::load(file).unwrap()
    }

    fn ok(file: &PasswordFile, user: &str, password: &str) -> bool {
        matches!(
            file.verify(user, password.as_bytes()),
            Verdict::Verified { .. }
        )
    }

    #[test]
    fn password_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        passwd_set(&file, "alice", "s3cret").unwrap();
        passwd_set(&file, "bob", "hunter2").unwrap();

        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("alice:$argon2id$"), "{text}");
        assert!(!text.contains("s3cret"));

        let passwords = load(&file);
        assert!(ok(&passwords, "alice", "s3cret"));
        assert!(!ok(&passwords, "alice", "hunter2"));
        assert!(ok(&passwords, "bob", "hunter2"));
        assert!(!ok(&passwords, "carol", "s3cret"));
        assert!(!ok(&passwords, "alice", ""));
    }

    #[test]
    fn salts_are_random() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        passwd_set(&a, "u", "same").unwrap();
        passwd_set(&b, "u", "same").unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn update_and_delete_preserve_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        passwd_set(&file, "alice", "one").unwrap();
        let alice_line = std::fs::read_to_string(&file).unwrap();
        let original = format!("# operators\n\n{}", alice_line);
        std::fs::write(&file, &original).unwrap();
        passwd_set(&file, "bob", "two").unwrap();
        passwd_set(&file, "bob", "three").unwrap();

        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(&lines[..3], &["# operators", "", alice_line.trim_end()]);
        assert!(lines[3].starts_with("bob:$argon2id$"));
        let passwords = load(&file);
        assert!(ok(&passwords, "bob", "three"));
        assert!(!ok(&passwords, "bob", "two"));

        assert!(passwd_delete(&file, "bob").unwrap());
        assert!(!passwd_delete(&file, "bob").unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
        assert!(!passwd_delete(&dir.path().join("missing"), "bob").unwrap());
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn mosquitto_entries_are_kept_and_can_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let bob = "bob:$6$QU38drAMxAcl35sq$x2IYtSr5mVp8n0YImxoKucuYkoMBJiweNDv6Jd7gJHkR8zF6bPdVMBSIjCTrCalUOl/E48I8gHS5/HAmHR1Z5w==";
        std::fs::write(&file, format!("{bob}\n")).unwrap();
        passwd_set(&file, "alice", "one").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with(&format!("{bob}\nalice:$argon2id$")),
            "{text}"
        );
        assert!(ok(&load(&file), "bob", "builder"));
        passwd_set(&file, "bob", "new").unwrap();
        let passwords = load(&file);
        assert!(ok(&passwords, "bob", "new") && !ok(&passwords, "bob", "builder"));
    }

    #[cfg(unix)]
    #[test]
    fn new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        passwd_set(&file, "alice", "one").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_user_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        for user in ["a:b", "a\nb", "a\rb", "", "  ", "#admin", " #x"] {
            let e = passwd_set(&file, user, "pw").unwrap_err();
            assert!(e.to_string().starts_with("auth.password_file "), "{e}");
        }
        assert!(passwd_set(&file, "alice", "").is_err());
        assert!(!file.exists());
    }

    #[test]
    fn load_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        std::fs::write(&file, "# comment\n\nalice-without-hash\n").unwrap();
        let e = PasswordFile::load(&file).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("line 3"), "{e}");

        let e = PasswordFile::load(Path::new("/nonexistent/passwd"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("auth.password_file /nonexistent/passwd:"),
            "{e}"
        );
    }
}
