//! Password files: one `user:hash` per line, `#` comments and blank lines ignored.
//!
//! Three kinds of hash are read, so a Mosquitto installation moves over by pointing
//! `password_file` at its existing file:
//! - `$argon2id$v=19$m=...,t=...,p=...$salt$hash`: a PHC string, written by `brokk passwd`;
//! - `$7$ITERATIONS$SALT$HASH`: `mosquitto_passwd`'s default, PBKDF2-HMAC-SHA512 (base64 salt
//!   and 64-byte hash);
//! - `$6$SALT$HASH`: `mosquitto_passwd -H sha512`, one SHA-512 over the password then the salt.
//!
//! The formats are Mosquitto's (`src/password_mosq.c`, `src/security_default.c`): 12-byte salts
//! from `mosquitto_passwd`, 64-byte hashes, standard base64 with padding. Other salt lengths are
//! accepted so files from other tools that follow the same scheme also load.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash as Phc, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::AuthError;

/// Argon2id parameters for new hashes: 7 MiB, 5 passes, 1 lane. The OWASP Password Storage
/// Cheat Sheet lists five Argon2id settings of equal strength (46 MiB/t=1, 19 MiB/t=2,
/// 12 MiB/t=3, 9 MiB/t=4, 7 MiB/t=5, all p=1); a broker verifies many logins at once, so it
/// takes the one that holds the least memory per check, for about the same CPU time.
pub const ARGON2_M_COST_KIB: u32 = 7 * 1024;
pub const ARGON2_T_COST: u32 = 5;
pub const ARGON2_P_COST: u32 = 1;

/// Mosquitto's hash length (SHA-512 output).
const SHA512_LEN: usize = 64;

/// The hasher `brokk passwd` uses for new entries.
pub fn argon2_for_new_hashes() -> Argon2<'static> {
    // The constants are within argon2's limits, so `new` cannot fail; the fallback keeps this
    // free of unwrap all the same.
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// One stored hash.
#[derive(Clone)]
pub enum PasswordHash {
    /// An argon2 PHC string (brokk's own).
    Argon2(Box<Phc>),
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// Mosquitto `$6$`: SHA-512(password || salt), one round.
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
}

impl std::fmt::Debug for PasswordHash {
    // Hand-written so hashes never end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// Base64 as OpenSSL writes it (standard alphabet), padding optional on input.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl PasswordHash {
    /// Parses the part after `user:`. Errors say what is wrong without echoing the text (it
    /// might be a plaintext password written by mistake).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash is $7$ITERATIONS$SALT$HASH".to_string());
            };
            let iterations = iterations
                .parse::<NonZeroU32>()
                .map_err(|_| "$7$: the iteration count must be a positive integer".to_string())?;
            let (salt, hash) = salt_and_hash("$7$", salt, hash)?;
            return Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("a $6$ hash is $6$SALT$HASH".to_string());
            };
            let (salt, hash) = salt_and_hash("$6$", salt, hash)?;
            return Ok(PasswordHash::Sha512 { salt, hash });
        }
        let phc = Phc::new(text).map_err(|e| format!("not a password hash ({e})"))?;
        // Only argon2 PHC strings can be verified; refusing others here beats failing every login.
        if !phc.algorithm.as_str().starts_with("argon2") {
            return Err(format!(
                "unsupported algorithm {:?} (use brokk passwd, or mosquitto_passwd)",
                phc.algorithm.as_str()
            ));
        }
        Ok(PasswordHash::Argon2(Box::new(phc)))
    }

    /// Whether `password` matches. The final comparison is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(phc) => verify_argon2(phc, password),
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            PasswordHash::Sha512 { salt, hash } => {
                let mut context = ring::digest::Context::new(&ring::digest::SHA512);
                context.update(password);
                context.update(salt);
                let computed = context.finish();
                computed.as_ref().ct_eq(hash).into()
            }
        }
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            PasswordHash::Argon2(_) => "argon2",
            PasswordHash::Pbkdf2Sha512 { .. } => "mosquitto $7$ (PBKDF2-SHA512)",
            PasswordHash::Sha512 { .. } => "mosquitto $6$ (SHA-512)",
        }
    }

    /// A hash of the same kind and cost that no password matches: what an unknown user is
    /// checked against, so that the time to refuse does not tell which users exist. Nothing is
    /// hashed to make it: a random salt and an all-zero digest do.
    fn decoy(&self) -> Result<PasswordHash, String> {
        let salt = random_salt()?;
        Ok(match self {
            PasswordHash::Argon2(phc) => {
                let length = phc.hash.as_ref().map_or(32, |h| h.len());
                let mut decoy = (**phc).clone();
                decoy.salt = Some(Salt::new(&salt).map_err(|e| e.to_string())?);
                decoy.hash = Some(Output::new(&vec![0; length]).map_err(|e| e.to_string())?);
                PasswordHash::Argon2(Box::new(decoy))
            }
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => PasswordHash::Pbkdf2Sha512 {
                iterations: *iterations,
                salt: salt.to_vec(),
                hash: [0; SHA512_LEN],
            },
            PasswordHash::Sha512 { .. } => PasswordHash::Sha512 {
                salt: salt.to_vec(),
                hash: [0; SHA512_LEN],
            },
        })
    }

    /// The decoy of a file with no entries: argon2id with brokk's parameters.
    fn argon2_decoy() -> Result<PasswordHash, String> {
        let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
            .map_err(|e| e.to_string())?;
        let template = Phc {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
            salt: None,
            hash: None,
        };
        PasswordHash::Argon2(Box::new(template)).decoy()
    }
}

thread_local! {
    /// Argon2's working memory, kept by each thread that checks passwords and reused by its
    /// next check. Allocated per check (as the argon2 crate's own verifier does), two threads
    /// doing 19 MiB checks grew RSS to 420 MiB: glibc reuses freed 64-byte-aligned blocks of
    /// that size poorly. Kept, a thread holds its largest check's memory and no more (19 MiB
    /// for argon2's default parameters, 7 MiB for brokk's), and the login gate runs checks on
    /// one thread per core.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// An argon2 PHC hash checked with this thread's reusable memory; the comparison is
/// constant-time.
fn verify_argon2(phc: &Phc, password: &[u8]) -> bool {
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let version = match phc.version {
        Some(version) => Version::try_from(version),
        None => Ok(Version::default()),
    };
    let (Ok(version), Ok(params)) = (version, Params::try_from(phc)) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut output = [0u8; 64];
    let Some(out) = output.get_mut(..expected.len()) else {
        return false;
    };
    let computed = ARGON2_MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::new());
        }
        argon2
            .hash_password_into_with_memory(password, salt, &mut *out, &mut memory[..blocks])
            .is_ok()
    });
    computed && bool::from(out.ct_eq(expected.as_bytes()))
}

fn random_salt() -> Result<[u8; 16], String> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(salt)
}

fn salt_and_hash(
    kind: &str,
    salt: &str,
    hash: &str,
) -> Result<(Vec<u8>, [u8; SHA512_LEN]), String> {
    let salt = BASE64
        .decode(salt)
        .map_err(|_| format!("{kind}: the salt is not base64"))?;
    if salt.is_empty() {
        return Err(format!("{kind}: empty salt"));
    }
    let hash = BASE64
        .decode(hash)
        .map_err(|_| format!("{kind}: the hash is not base64"))?;
    let hash: [u8; SHA512_LEN] = hash
        .try_into()
        .map_err(|_| format!("{kind}: the hash must be {SHA512_LEN} bytes"))?;
    Ok((salt, hash))
}

/// One user's entry: the hash and the text it came from (to tell, on reload, whether a user's
/// credentials changed).
#[derive(Clone, Debug)]
struct Entry {
    hash: PasswordHash,
    fingerprint: u64,
}

/// A loaded password file.
pub struct PasswordFile {
    users: HashMap<String, Entry>,
    decoy: PasswordHash,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish()
    }
}

/// What a password check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The user exists and the password matches; `fingerprint` identifies the entry checked.
    Verified { fingerprint: u64 },
    /// Unknown user or wrong password (the two are not told apart, on purpose).
    Rejected,
}

impl PasswordFile {
    /// Reads and parses `path`; errors name the file and the line.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::file("auth.password_file", path, e.to_string()))?;
        PasswordFile::parse(&text).map_err(|why| AuthError::file("auth.password_file", path, why))
    }

    /// Parses a file's text; the error names the line.
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = HashMap::new();
        let mut first: Option<PasswordHash> = None;
        for (number, line) in text.lines().enumerate() {
            let Some((user, hash)) =
                parse_line(line).map_err(|why| format!("line {}: {why}", number + 1))?
            else {
                continue;
            };
            first.get_or_insert_with(|| hash.clone());
            let fingerprint = fingerprint(line.trim());
            users.insert(user.to_string(), Entry { hash, fingerprint });
        }
        let decoy = match first {
            Some(hash) => hash.decoy()?,
            None => PasswordHash::argon2_decoy()?,
        };
        Ok(PasswordFile { users, decoy })
    }

    /// Checks `password` for `user`. An unknown user costs one check against a decoy of the
    /// file's first hash, so the time taken does not reveal which users exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> Verdict {
        match self.users.get(user) {
            Some(entry) if entry.hash.verify(password) => Verdict::Verified {
                fingerprint: entry.fingerprint,
            },
            Some(_) => Verdict::Rejected,
            None => {
                let _ = self.decoy.verify(password);
                Verdict::Rejected
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The entry's fingerprint, if `user` is in the file.
    pub fn fingerprint(&self, user: &str) -> Option<u64> {
        self.users.get(user).map(|e| e.fingerprint)
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }
}

/// A stable digest of one line, so a reload can tell a changed password from an unchanged one
/// without keeping any password. Not secret: the line is already in the file.
fn fingerprint(line: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, line.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(bytes)
}

/// Hashes a new password with brokk's parameters and a random salt.
pub fn new_hash(password: &[u8]) -> Result<Phc, argon2::password_hash::Error> {
    argon2_for_new_hashes().hash_password(password)
}

/// One line: `Ok(None)` for blanks and comments.
fn parse_line(line: &str) -> Result<Option<(&str, PasswordHash)>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let Some((user, hash)) = line.split_once(':') else {
        return Err("expected user:hash".to_string());
    };
    if user.is_empty() {
        return Err("empty user name".to_string());
    }
    let hash = PasswordHash::parse(hash).map_err(|why| format!("user {user:?}: {why}"))?;
    Ok(Some((user, hash)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by Debian's mosquitto_passwd 2.0.11: `mosquitto_passwd -c -b f alice wonderland`,
    /// `mosquitto_passwd -H sha512 -b f bob builder`, `mosquitto_passwd -b f carol 'pa:ss w0rd'`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$Edl1QlddWy3xOJdz$VmiugcUd/WqPJX1+JNhsIdKRPzBxgUN6wyO1S+7QBfKAdY/11EuLVk3tdZyzh7FCNqWpUkNIEYaN5D51OTqwGA==
bob:$6$QU38drAMxAcl35sq$x2IYtSr5mVp8n0YImxoKucuYkoMBJiweNDv6Jd7gJHkR8zF6bPdVMBSIjCTrCalUOl/E48I8gHS5/HAmHR1Z5w==
carol:$7$101$rwKl5kwNqRQ5WLZd$j0SdyIgx6rgQ41QOksHsA92XZLAXu35U7jBYeSdU7NKF9oqMNlXirZmp1RtHxb7Oadmi7wlfiYlN/ESGce3xuA==
";

    fn verified(file: &PasswordFile, user: &str, password: &str) -> bool {
        matches!(
            file.verify(user, password.as_bytes()),
            Verdict::Verified { .. }
        )
    }

    #[test]
    fn mosquitto_passwd_lines_verify() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert_eq!(file.len(), 3);
        assert!(verified(&file, "alice", "wonderland"));
        assert!(!verified(&file, "alice", "Wonderland"));
        assert!(!verified(&file, "alice", ""));
        assert!(verified(&file, "bob", "builder"));
        assert!(!verified(&file, "bob", "builder "));
        assert!(verified(&file, "carol", "pa:ss w0rd"));
        assert!(!verified(&file, "dave", "wonderland"));
    }

    #[test]
    fn hash_kinds_are_recognised() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert!(matches!(
            file.users["alice"].hash,
            PasswordHash::Pbkdf2Sha512 { iterations, ref salt, .. } if iterations.get() == 101 && salt.len() == 12
        ));
        assert!(matches!(
            file.users["bob"].hash,
            PasswordHash::Sha512 { .. }
        ));
        // The decoy for unknown users follows the first entry's kind and cost.
        assert!(
            matches!(file.decoy, PasswordHash::Pbkdf2Sha512 { iterations, .. } if iterations.get() == 101)
        );
        let argon2 = PasswordFile::parse(&format!("u:{}\n", new_hash(b"x").unwrap())).unwrap();
        let PasswordHash::Argon2(decoy) = &argon2.decoy else {
            panic!("an argon2 decoy");
        };
        assert!(
            decoy
                .to_string()
                .starts_with("$argon2id$v=19$m=7168,t=5,p=1$"),
            "{decoy}"
        );
        assert!(!argon2.decoy.verify(b"x"), "the decoy matches no password");
    }

    #[test]
    fn argon2_and_mosquitto_lines_mix() {
        let phc = new_hash(b"s3cret").unwrap();
        let text = format!("# brokk\ndave:{phc}\n\n{MOSQUITTO_FILE}");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 4);
        assert!(verified(&file, "dave", "s3cret"));
        assert!(verified(&file, "alice", "wonderland"));
        assert!(matches!(file.decoy, PasswordHash::Argon2(_)));
    }

    #[test]
    fn new_hashes_use_the_low_memory_owasp_setting() {
        let phc = new_hash(b"x").unwrap().to_string();
        assert!(phc.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{phc}");
        // Older brokk hashes (argon2 defaults: 19 MiB, t=2) still verify.
        let old = Argon2::default().hash_password(b"old").unwrap().to_string();
        assert!(old.contains("m=19456,t=2,p=1"), "{old}");
        let file = PasswordFile::parse(&format!("u:{old}\n")).unwrap();
        assert!(verified(&file, "u", "old"));
    }

    #[test]
    fn fingerprints_change_with_the_line() {
        let a = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        let b = PasswordFile::parse(&MOSQUITTO_FILE.replace("Edl1", "Edl2")).unwrap();
        assert_ne!(a.fingerprint("alice"), b.fingerprint("alice"));
        assert_eq!(a.fingerprint("bob"), b.fingerprint("bob"));
        assert_eq!(a.fingerprint("nobody"), None);
        let Verdict::Verified { fingerprint } = a.verify("bob", b"builder") else {
            panic!("bob verifies");
        };
        assert_eq!(Some(fingerprint), a.fingerprint("bob"));
    }

    #[test]
    fn bad_lines_name_the_line_and_never_echo_the_text() {
        for (text, expect) in [
            ("alice-without-hash\n", "expected user:hash"),
            (":$6$c2FsdA==$x\n", "empty user name"),
            ("alice:plaintext\n", "not a password hash"),
            ("alice:$7$0$c2FsdHNhbHRzYWx0$aGFzaA==\n", "iteration count"),
            ("alice:$7$101$!!$aGFzaA==\n", "salt is not base64"),
            ("alice:$7$101$c2FsdA==$aGFzaA==\n", "must be 64 bytes"),
            ("alice:$6$onlysalt\n", "$6$SALT$HASH"),
            ("alice:$7$101$a$b$c\n", "$7$ITERATIONS$SALT$HASH"),
            (
                "alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo\n",
                "unsupported algorithm",
            ),
        ] {
            let e = PasswordFile::parse(&format!("# c\n{text}")).unwrap_err();
            assert!(e.starts_with("line 2: "), "{text}: {e}");
            assert!(e.contains(expect), "{text}: {e}");
            assert!(!e.contains("plaintext"), "{e}");
        }
    }

    #[test]
    fn empty_file_has_an_argon2_decoy() {
        let file = PasswordFile::parse("# nobody yet\n").unwrap();
        assert!(file.is_empty());
        assert!(!verified(&file, "alice", "x"));
        let PasswordHash::Argon2(decoy) = &file.decoy else {
            panic!("an argon2 decoy");
        };
        assert!(
            decoy
                .to_string()
                .starts_with("$argon2id$v=19$m=7168,t=5,p=1$"),
            "{decoy}"
        );
    }

    #[test]
    fn debug_output_holds_no_hash() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        let text = format!("{file:?} {:?}", file.users["alice"]);
        assert!(!text.contains("Edl1"), "{text}");
    }
}
