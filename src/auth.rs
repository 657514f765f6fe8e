//! Who may connect: Postgres users with SCRAM-SHA-256 passwords and HTTP API tokens.
//!
//! Both live in one JSON file, `<data-dir>/auth.json` by default (`--auth-file`), written
//! atomically with mode 0600. Nothing in it is a secret in clear:
//!
//! - a user keeps the SCRAM *salted password* (PBKDF2-HMAC-SHA-256 of the password with a
//!   random 16-byte salt and 4096 iterations, RFC 5802's `SaltedPassword`), never the
//!   password. It is what the SCRAM exchange is checked against, so anyone who can read the
//!   file could log in to this server as that user: keep it as private as the data.
//! - a token keeps the SHA-256 of the token. Tokens are 256 random bits, so a fast hash is
//!   enough; the token itself is shown once, when it is created.
//!
//! The file is read again whenever it changes on disk, so `gannet user` and `gannet token`
//! take effect on a running server without a restart.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The SCRAM iteration count of every stored password (PostgreSQL's default).
pub const SCRAM_ITERATIONS: usize = 4096;

/// What every token starts with, so a leaked one is recognisable in logs and scanners.
const TOKEN_PREFIX: &str = "gannet_";

/// The users and tokens of one server, from its auth file.
#[derive(Debug)]
pub struct AuthStore {
    path: PathBuf,
    /// The file as last read, and the stamp (length, modification time) it had then.
    cache: Mutex<(Option<Stamp>, Arc<AuthFile>)>,
    /// Serialises this process's read-modify-write cycles.
    writing: Mutex<()>,
}

/// Length, modification time, inode and change time (in nanoseconds): a rename over the
/// file changes the inode and the change time, whatever the clock's resolution.
type Stamp = (u64, Option<SystemTime>, u64, i128);

/// The contents of the auth file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AuthFile {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub tokens: Vec<Token>,
}

/// A Postgres user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// `pbkdf2-sha256$<iterations>$<salt, base64>$<salted password, base64>`.
    pub password: String,
    /// May create, change and drop users.
    #[serde(default)]
    pub superuser: bool,
    pub created_at: String,
}

/// An HTTP API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    /// SHA-256 of the token, base64.
    pub sha256: String,
    pub scope: Scope,
    pub created_at: String,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum Scope {
    /// Queries, model listing and metrics.
    Read,
    /// Line-protocol writes only.
    Write,
    /// Everything, including uploading and deleting models.
    Admin,
}

impl Scope {
    /// Whether a token of this scope may do what `needed` asks for.
    pub fn allows(self, needed: Scope) -> bool {
        self == Scope::Admin || self == needed
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        })
    }
}

/// Why the auth file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid auth file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("user \"{0}\" already exists")]
    UserExists(String),
    #[error("user \"{0}\" does not exist")]
    NoSuchUser(String),
    #[error("token \"{0}\" already exists")]
    TokenExists(String),
    #[error("token \"{0}\" does not exist")]
    NoSuchToken(String),
}

impl AuthStore {
    /// The store kept in `path`; the file need not exist yet (no users, no tokens).
    pub fn open(path: impl Into<PathBuf>) -> Result<AuthStore, AuthError> {
        let store = AuthStore {
            path: path.into(),
            cache: Mutex::new((None, Arc::new(AuthFile::default()))),
            writing: Mutex::new(()),
        };
        store.try_current()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The users and tokens as the file holds them now. A file that became unreadable or
    /// invalid keeps the last good contents in force (and logs why).
    pub fn current(&self) -> Arc<AuthFile> {
        match self.try_current() {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(error = %e, "keeping the previous users and tokens");
                self.cache.lock().expect("auth cache").1.clone()
            }
        }
    }

    fn try_current(&self) -> Result<Arc<AuthFile>, AuthError> {
        let stamp = match fs::metadata(&self.path) {
            Ok(meta) => Some((meta.len(), meta.modified().ok(), inode(&meta), ctime(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(AuthError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut cache = self.cache.lock().expect("auth cache");
        if cache.0 == stamp && stamp.is_some() {
            return Ok(cache.1.clone());
        }
        // A file that was there and is gone (deleted, or an editor replacing it) must not
        // turn authentication off: keep what it said.
        if stamp.is_none() && (cache.0.is_some() || !cache.1.is_empty()) {
            return Err(AuthError::Read {
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "the file disappeared"),
            });
        }
        let file = Arc::new(self.read()?);
        *cache = (stamp, file.clone());
        Ok(file)
    }

    fn read(&self) -> Result<AuthFile, AuthError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| AuthError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AuthFile::default()),
            Err(source) => Err(AuthError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reads the file, applies `change` and writes the result back atomically. Changes are
    /// serialised across processes (the server and `gannet user`) by a lock on
    /// `<file>.lock`, so that none undoes another.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut AuthFile) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let _writing = self.writing.lock().expect("auth writer");
        let write_error = |source| AuthError::Write {
            path: self.path.clone(),
            source,
        };
        let lock = lock_file(&self.path).map_err(write_error)?;
        lock.lock().map_err(write_error)?;
        let mut file = self.read()?;
        let result = change(&mut file)?;
        let bytes = serde_json::to_vec_pretty(&file).expect("auth file serialises");
        write_private(&self.path, &bytes).map_err(write_error)?;
        *self.cache.lock().expect("auth cache") = (None, Arc::new(file));
        Ok(result)
    }

    /// Adds a user with `password`.
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        superuser: bool,
    ) -> Result<(), AuthError> {
        check_name("user", name)?;
        let password = hash_password(password)?;
        self.update(|file| {
            if file.users.iter().any(|u| u.name == name) {
                return Err(AuthError::UserExists(name.to_owned()));
            }
            file.users.push(User {
                name: name.to_owned(),
                password,
                superuser,
                created_at: now(),
            });
            Ok(())
        })
    }

    /// Gives a user a new password and, if `superuser` is set, that role.
    pub fn alter_user(
        &self,
        name: &str,
        password: Option<&str>,
        superuser: Option<bool>,
    ) -> Result<(), AuthError> {
        let password = password.map(hash_password).transpose()?;
        self.update(|file| {
            let user = file
                .users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
            if let Some(password) = password {
                user.password = password;
            }
            if let Some(superuser) = superuser {
                user.superuser = superuser;
            }
            Ok(())
        })
    }

    /// Removes a user; `Ok(false)` if there was none of that name.
    pub fn drop_user(&self, name: &str) -> Result<bool, AuthError> {
        self.update(|file| {
            let before = file.users.len();
            file.users.retain(|u| u.name != name);
            Ok(file.users.len() != before)
        })
    }

    /// Creates a token and returns it: the only time it is ever shown.
    pub fn create_token(&self, name: &str, scope: Scope) -> Result<String, AuthError> {
        check_name("token", name)?;
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random::<32>()?));
        let sha256 = token_hash(&token);
        self.update(|file| {
            if file.tokens.iter().any(|t| t.name == name) {
                return Err(AuthError::TokenExists(name.to_owned()));
            }
            file.tokens.push(Token {
                name: name.to_owned(),
                sha256,
                scope,
                created_at: now(),
            });
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes a token; `Ok(false)` if there was none of that name.
    pub fn revoke_token(&self, name: &str) -> Result<bool, AuthError> {
        self.update(|file| {
            let before = file.tokens.len();
            file.tokens.retain(|t| t.name != name);
            Ok(file.tokens.len() != before)
        })
    }
}

impl AuthFile {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty()
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The token `presented` is, if it is one.
    pub fn token(&self, presented: &str) -> Option<&Token> {
        let hash = token_hash(presented);
        self.tokens.iter().find(|t| t.sha256 == hash)
    }
}

impl User {
    /// The salt and salted password SCRAM checks a login against.
    pub fn scram_secret(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut parts = self.password.split('$');
        let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(salted), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if iterations.parse::<usize>().ok()? != SCRAM_ITERATIONS {
            return None;
        }
        Some((STANDARD.decode(salt).ok()?, STANDARD.decode(salted).ok()?))
    }
}

/// The stored form of `password`: its SCRAM salted password under a new random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::Invalid("a password may not be empty".into()));
    }
    let salt = random::<16>()?;
    let salted =
        pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, SCRAM_ITERATIONS);
    Ok(format!(
        "pbkdf2-sha256${SCRAM_ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(salted)
    ))
}

fn token_hash(token: &str) -> String {
    STANDARD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Invalid("the system random number generator failed".into()))?;
    Ok(bytes)
}

fn check_name(what: &str, name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control()) {
        return Err(AuthError::Invalid(format!(
            "invalid {what} name {name:?}: 1 to 63 characters, no control characters"
        )));
    }
    Ok(())
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &fs::Metadata) -> u64 {
    0
}

#[cfg(unix)]
fn ctime(meta: &fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec())
}

#[cfg(not(unix))]
fn ctime(_meta: &fs::Metadata) -> i128 {
    0
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The directory the auth file lives in.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The file whose lock serialises changes to `path`.
fn lock_file(path: &Path) -> io::Result<fs::File> {
    fs::create_dir_all(parent(path))?;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(name))
}

/// Writes `bytes` to `path` readable by its owner only, so that a crash leaves either the
/// old file or the new one: a fresh temporary file (created 0600, never a path an
/// attacker could have prepared), fsync, rename, fsync of the directory.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens_round_trip_through_the_file_without_secrets_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let store = AuthStore::open(&path).unwrap();
        assert!(store.current().users.is_empty());
        store.create_user("alice", "s3cret pass", true).unwrap();
        let token = store.create_token("grafana", Scope::Read).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert!(matches!(
            store.create_user("alice", "x", false),
            Err(AuthError::UserExists(_))
        ));

        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains(&token), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Another process's view of the same file.
        let other = AuthStore::open(&path).unwrap().current();
        let alice = other.user("alice").unwrap();
        assert!(alice.superuser);
        let (salt, salted) = alice.scram_secret().unwrap();
        assert_eq!(
            salted,
            pgwire::api::auth::sasl::scram::gen_salted_password(
                "s3cret pass",
                &salt,
                SCRAM_ITERATIONS
            )
        );
        assert_eq!(other.token(&token).unwrap().scope, Scope::Read);
        assert!(other.token("gannet_guess").is_none());

        assert!(store.revoke_token("grafana").unwrap());
        assert!(!store.revoke_token("grafana").unwrap());
        assert!(store.drop_user("alice").unwrap());
        let after = AuthStore::open(&path).unwrap().current();
        assert!(after.users.is_empty() && after.tokens.is_empty());
    }

    #[test]
    fn a_change_by_another_process_is_seen_and_a_broken_file_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let server = AuthStore::open(&path).unwrap();
        assert!(server.current().user("bob").is_none());
        AuthStore::open(&path)
            .unwrap()
            .create_user("bob", "pw", false)
            .unwrap();
        assert!(server.current().user("bob").is_some());
        fs::write(&path, b"{ not json").unwrap();
        assert!(server.current().user("bob").is_some());
        fs::remove_file(&path).unwrap();
        assert!(
            server.current().user("bob").is_some(),
            "a vanished file keeps its users in force"
        );
        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(
            AuthStore::open(&path),
            Err(AuthError::Parse { .. })
        ));
    }

    #[test]
    fn scopes() {
        assert!(Scope::Admin.allows(Scope::Write));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
        assert!(!Scope::Write.allows(Scope::Read));
    }
}
