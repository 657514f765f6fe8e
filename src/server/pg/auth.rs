//! Connection start-up: SCRAM-SHA-256 password authentication when users exist, trust on
//! loopback when none do, and `CREATE USER` / `ALTER USER` / `DROP USER`.
//!
//! pgwire carries out the SCRAM exchange ([`ScramAuth`]); Gannet drives it per connection so
//! that it can refuse an unknown database after the password was checked (as PostgreSQL
//! does, so a stranger learns nothing about the databases) and report a failed login with
//! the user's name.

use std::fmt::Debug;
use std::sync::Arc;

use crate::auth::{AuthError, AuthStore};
use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::{
    AlterRoleOperation, Expr, ObjectName, ObjectType, RoleOption, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::sasl::{SASLState, SCRAM_SHA_256_METHOD};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionHandle, ConnectionManager, METADATA_USER, PgWireConnectionState,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::{SERVER_VERSION, Sessions, database_of, unknown_database, user_error};

/// Marks (in the connection's session extensions, which clients cannot set) a connection
/// let in without a password.
#[derive(Debug, Clone, Copy)]
struct Trusted;

/// Marks a connection that finished its start-up: authenticated (or trusted), its database
/// checked. Query handlers serve no one without it.
#[derive(Debug, Clone, Copy)]
struct Admitted;

/// Whether `client` finished its start-up; an error to answer it with if not.
pub fn admitted(client: &(impl ClientInfo + ?Sized)) -> PgWireResult<()> {
    match client.session_extensions().get::<Admitted>() {
        Some(_) => Ok(()),
        None => Err(user_error(
            "FATAL",
            "28000",
            "the connection has not been authenticated".to_owned(),
        )),
    }
}

/// Who may log in over the Postgres protocol.
#[derive(Debug)]
pub struct PgAuth {
    store: Arc<AuthStore>,
    /// Require passwords even while no user exists (a non-loopback listener), so that
    /// dropping the last user never opens the server.
    always: bool,
    scram: Arc<ScramAuth>,
}

impl PgAuth {
    pub fn new(store: Arc<AuthStore>, always: bool) -> PgAuth {
        let secrets = Arc::new(Secrets {
            store: store.clone(),
            mock_key: ring::hmac::Key::generate(
                ring::hmac::HMAC_SHA256,
                &ring::rand::SystemRandom::new(),
            )
            .expect("the system random number generator works"),
        });
        PgAuth {
            store,
            always,
            scram: Arc::new(ScramAuth::new(secrets)),
        }
    }

    /// Whether connections must give a password now.
    fn password_required(&self) -> bool {
        self.always || !self.store.current().users.is_empty()
    }

    pub fn store(&self) -> &Arc<AuthStore> {
        &self.store
    }
}

/// The salted passwords SCRAM checks logins against.
struct Secrets {
    store: Arc<AuthStore>,
    /// Makes a stable fake salt for unknown users, so that the exchange looks the same
    /// whether or not a user exists (as PostgreSQL's mock authentication does).
    mock_key: ring::hmac::Key,
}

impl Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for Secrets {
    // async_trait needs the elided form to match the trait's lifetimes.
    #[allow(elided_lifetimes_in_paths)]
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let name = login.user().unwrap_or_default();
        if let Some((salt, salted)) = self
            .store
            .current()
            .user(name)
            .and_then(|user| user.scram_secret())
        {
            return Ok(Password::new(Some(salt), salted));
        }
        let tag = ring::hmac::sign(&self.mock_key, name.as_bytes());
        let salt = tag.as_ref()[..16].to_vec();
        // No password hashes to this (the proof check fails as for a wrong password).
        let mut impossible = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut impossible)
            .map_err(|_| PgWireError::ApiError("random number generator failed".into()))?;
        Ok(Password::new(Some(salt), impossible))
    }
}

/// The start-up of one connection.
pub struct Startup {
    pub(super) sessions: Arc<Sessions>,
    pub(super) connections: Arc<ConnectionManager>,
    pub(super) auth: Arc<PgAuth>,
    pub(super) statement_timeout: Option<std::time::Duration>,
    /// Where this connection's SCRAM exchange stands.
    pub(super) sasl: tokio::sync::Mutex<SASLState>,
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup").finish_non_exhaustive()
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // Start-up parameters land in the same metadata as Gannet's own per-connection
                // state: a client may not set that.
                client
                    .metadata_mut()
                    .retain(|key, _| !key.starts_with(super::GANNET_METADATA));
                if self.auth.password_required() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                            vec![SCRAM_SHA_256_METHOD.to_owned()],
                        )))
                        .await?;
                } else {
                    client.session_extensions().insert(Trusted);
                    self.admit(client).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let mut sasl = self.sasl.lock().await;
                let message = if matches!(*sasl, SASLState::Initial) {
                    if let PasswordMessageFamily::Raw(body) = &message
                        && !super::sasl_check::well_formed_sasl_initial_response(body)
                    {
                        return Err(user_error(
                            "FATAL",
                            "08P01",
                            "malformed SASLInitialResponse message".to_owned(),
                        ));
                    }
                    let initial = message.into_sasl_initial_response()?;
                    if initial.auth_method != SCRAM_SHA_256_METHOD {
                        return Err(PgWireError::UnsupportedSASLAuthMethod(initial.auth_method));
                    }
                    *sasl = SASLState::ScramClientFirstReceived;
                    PasswordMessageFamily::SASLInitialResponse(initial)
                } else {
                    PasswordMessageFamily::SASLResponse(message.into_sasl_response()?)
                };
                let (response, next) = self
                    .auth
                    .scram
                    .process_scram_message(client, message, &sasl)
                    .await
                    .map_err(|e| match e {
                        PgWireError::InvalidPassword(_) => password_failed(client),
                        e => e,
                    })?;
                *sasl = next;
                client
                    .send(PgWireBackendMessage::Authentication(response))
                    .await?;
                if matches!(*sasl, SASLState::Finished) {
                    self.admit(client).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Startup {
    /// Lets an authenticated (or trusted) client in: its database must exist.
    async fn admit<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let db = database_of(client);
        if !self.sessions.exists(db) {
            return Err(unknown_database(db, "FATAL"));
        }
        if let Some(timeout) = self.statement_timeout {
            // Where datafusion-postgres's `SET statement_timeout` keeps it.
            client.metadata_mut().insert(
                "statement_timeout_ms".to_owned(),
                timeout.as_millis().to_string(),
            );
        }
        let (pid, secret_key) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret_key.clone());
        let (handle, guard) = self.connections.register(pid, secret_key);
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert(guard);
        client.session_extensions().insert(Admitted);
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        finish_authentication(client, &parameters).await
    }
}

/// Whether `client` may administer: a superuser, or a connection let in without a password
/// while no user exists.
pub fn is_superuser(auth: &PgAuth, client: &(impl ClientInfo + ?Sized)) -> bool {
    if client.session_extensions().get::<Trusted>().is_some() && !auth.password_required() {
        return true;
    }
    let user = client.metadata().get(METADATA_USER);
    user.is_some_and(|name| auth.store.current().user(name).is_some_and(|u| u.superuser))
}

/// Refuses `COPY ... TO 'file'` (which writes a file on the server, as the server's user)
/// to all but superusers, as PostgreSQL does.
pub fn check_copy_to_file(
    auth: &PgAuth,
    client: &(impl ClientInfo + ?Sized),
    sql: &str,
) -> PgWireResult<()> {
    if !sql.to_ascii_lowercase().contains("copy") || !copies_to_file(sql) {
        return Ok(());
    }
    if is_superuser(auth, client) {
        return Ok(());
    }
    Err(user_error(
        "ERROR",
        "42501",
        "permission denied: only a superuser may COPY to a file on the server (COPY ... TO \
         STDOUT works for everyone)"
            .to_owned(),
    ))
}

/// Whether one of the statements in `sql` is a `COPY ... TO '<file>'`.
fn copies_to_file(sql: &str) -> bool {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        // Unparseable: DataFusion will refuse it too.
        return false;
    };
    let mut tokens = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .peekable();
    let mut statement_start = true;
    let mut in_copy = false;
    while let Some(token) = tokens.next() {
        match &token {
            Token::SemiColon => {
                statement_start = true;
                in_copy = false;
                continue;
            }
            Token::Word(w) if statement_start && w.keyword == Keyword::COPY => in_copy = true,
            Token::Word(w)
                if in_copy
                    && w.keyword == Keyword::TO
                    && matches!(
                        tokens.peek(),
                        Some(Token::SingleQuotedString(_) | Token::EscapedStringLiteral(_))
                    ) =>
            {
                return true;
            }
            _ => {}
        }
        statement_start = false;
    }
    false
}

fn password_failed(client: &(impl ClientInfo + ?Sized)) -> PgWireError {
    let user = client
        .metadata()
        .get(METADATA_USER)
        .map(String::as_str)
        .unwrap_or_default();
    tracing::info!(user, peer = %client.socket_addr(), "password authentication failed");
    user_error(
        "FATAL",
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

/// `CREATE USER` / `ROLE`, `ALTER USER` / `ROLE`, `DROP USER` / `ROLE`.
#[derive(Debug, PartialEq)]
pub enum UserStatement {
    Create {
        name: String,
        password: String,
        superuser: bool,
        if_not_exists: bool,
    },
    Alter {
        name: String,
        password: Option<String>,
        superuser: Option<bool>,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
    },
}

impl UserStatement {
    /// `None` when `sql` is not a user statement; `Some(Err(message))` when it is one that
    /// Gannet cannot carry out.
    pub fn parse(sql: &str) -> Option<Result<UserStatement, String>> {
        // Error messages never quote the statement: it may hold a password.
        const USAGE: &str = "expected CREATE USER name [WITH] PASSWORD 'password' \
                             [SUPERUSER], ALTER USER name [WITH] PASSWORD 'password', or DROP \
                             USER [IF EXISTS] name";
        let dialect = PostgreSqlDialect {};
        let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
            let lower = sql.to_ascii_lowercase();
            let about_users =
                lower.contains("password") && (lower.contains("user") || lower.contains("role"));
            return about_users.then(|| Err(format!("syntax error: {USAGE}")));
        };
        let mut words = tokens.iter().filter_map(|t| match t {
            Token::Word(w) => Some(w.keyword),
            Token::Whitespace(_) => None,
            _ => Some(Keyword::NoKeyword),
        });
        let verb = words.next()?;
        let object = words.next()?;
        if !matches!(verb, Keyword::CREATE | Keyword::ALTER | Keyword::DROP)
            || !matches!(object, Keyword::USER | Keyword::ROLE)
        {
            return None;
        }
        let mut parser = Parser::new(&dialect).with_tokens(tokens);
        Some(Self::parse_tokens(&mut parser, verb).map_err(|e| {
            let e = e.to_string();
            // The parser's own messages quote the token they stopped at.
            if e.starts_with("sql parser error") || e.contains("Expected") {
                format!("syntax error: {USAGE}")
            } else {
                e
            }
        }))
    }

    fn parse_tokens(
        parser: &mut Parser<'_>,
        verb: Keyword,
    ) -> Result<UserStatement, Box<dyn std::error::Error>> {
        let statement = match verb {
            Keyword::CREATE => {
                parser.expect_keyword(Keyword::CREATE)?;
                parser.expect_one_of_keywords(&[Keyword::USER, Keyword::ROLE])?;
                let role = parser.parse_create_role()?;
                let [name] = &role.names[..] else {
                    return Err("create one user at a time".into());
                };
                let password = match role.password {
                    Some(sqlparser_password) => password_text(sqlparser_password)?,
                    None => return Err("a user needs a PASSWORD".into()),
                };
                UserStatement::Create {
                    name: object_name(name)?,
                    password,
                    superuser: role.superuser.unwrap_or(false),
                    if_not_exists: role.if_not_exists,
                }
            }
            Keyword::ALTER => {
                parser.expect_keyword(Keyword::ALTER)?;
                parser.expect_one_of_keywords(&[Keyword::USER, Keyword::ROLE])?;
                let Statement::AlterRole { name, operation } = parser.parse_alter_role()? else {
                    return Err("unsupported ALTER USER".into());
                };
                let AlterRoleOperation::WithOptions { options } = operation else {
                    return Err("ALTER USER can change PASSWORD and SUPERUSER only".into());
                };
                let (mut password, mut superuser) = (None, None);
                for option in options {
                    match option {
                        RoleOption::Password(p) => password = Some(password_text(p)?),
                        RoleOption::SuperUser(s) => superuser = Some(s),
                        RoleOption::Login(true) => {}
                        other => return Err(format!("unsupported role option {other}").into()),
                    }
                }
                UserStatement::Alter {
                    name: name.value,
                    password,
                    superuser,
                }
            }
            _ => match parser.parse_statement()? {
                Statement::Drop {
                    object_type: ObjectType::User | ObjectType::Role,
                    if_exists,
                    names,
                    ..
                } => UserStatement::Drop {
                    names: names.iter().map(object_name).collect::<Result<_, _>>()?,
                    if_exists,
                },
                _ => return Err("unsupported DROP USER".into()),
            },
        };
        // Nothing may follow but a semicolon.
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token != Token::EOF {
            return Err(format!("unexpected {} after the statement", parser.peek_token()).into());
        }
        Ok(statement)
    }

    /// The statement as it may be logged: without the password.
    pub fn redacted(&self) -> String {
        match self {
            UserStatement::Create { name, .. } => format!("CREATE USER {name} PASSWORD '***'"),
            UserStatement::Alter { name, .. } => format!("ALTER USER {name} ..."),
            UserStatement::Drop { names, .. } => format!("DROP USER {}", names.join(", ")),
        }
    }

    /// Carries the statement out for `client`: a superuser (or a trusted connection) may do
    /// anything, a user may change their own password.
    pub fn execute(
        self,
        auth: &PgAuth,
        client: &(impl ClientInfo + ?Sized),
    ) -> PgWireResult<&'static str> {
        let current = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        // A connection let in while no user existed keeps no rights once one does.
        let superuser = is_superuser(auth, client);
        let own_password = matches!(
            &self,
            UserStatement::Alter { name, superuser: None, .. } if *name == current
        );
        if !superuser && !own_password {
            return Err(user_error(
                "ERROR",
                "42501",
                "permission denied: only a superuser may create, change or drop users".into(),
            ));
        }
        let store = &auth.store;
        let done = match self {
            UserStatement::Create {
                name,
                password,
                superuser,
                if_not_exists,
            } => match store.create_user(&name, &password, superuser) {
                Err(AuthError::UserExists(_)) if if_not_exists => Ok("CREATE ROLE"),
                other => other.map(|()| "CREATE ROLE"),
            },
            UserStatement::Alter {
                name,
                password,
                superuser,
            } => store
                .alter_user(&name, password.as_deref(), superuser)
                .map(|()| "ALTER ROLE"),
            UserStatement::Drop { names, if_exists } => (|| {
                for name in &names {
                    if !store.drop_user(name)? && !if_exists {
                        return Err(AuthError::NoSuchUser(name.clone()));
                    }
                }
                Ok("DROP ROLE")
            })(),
        };
        done.map_err(|e| {
            let code = match e {
                AuthError::UserExists(_) => "42710",
                AuthError::NoSuchUser(_) => "42704",
                AuthError::Invalid(_) => "22023",
                _ => "58030",
            };
            user_error("ERROR", code, e.to_string())
        })
    }
}

fn password_text(
    password: datafusion::sql::sqlparser::ast::Password,
) -> Result<String, Box<dyn std::error::Error>> {
    use datafusion::sql::sqlparser::ast::Password as P;
    match password {
        P::Password(Expr::Value(v)) => match v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Ok(s),
            _ => Err("the password must be a string literal".into()),
        },
        P::Password(_) => Err("the password must be a string literal".into()),
        P::NullPassword => Err("a user needs a password (PASSWORD NULL is not supported)".into()),
    }
}

fn object_name(name: &ObjectName) -> Result<String, Box<dyn std::error::Error>> {
    match &name.0[..] {
        [part] => Ok(part.as_ident().ok_or("invalid user name")?.value.clone()),
        _ => Err(format!("invalid user name {name}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_statements_parse_as_postgresql_writes_them() {
        assert_eq!(
            UserStatement::parse("CREATE USER alice WITH PASSWORD 'pw' SUPERUSER"),
            Some(Ok(UserStatement::Create {
                name: "alice".into(),
                password: "pw".into(),
                superuser: true,
                if_not_exists: false,
            }))
        );
        assert_eq!(
            UserStatement::parse("create role \"Bob\" login password 'x''y';"),
            Some(Ok(UserStatement::Create {
                name: "Bob".into(),
                password: "x'y".into(),
                superuser: false,
                if_not_exists: false,
            }))
        );
        assert_eq!(
            UserStatement::parse("ALTER USER bob WITH PASSWORD 'new'"),
            Some(Ok(UserStatement::Alter {
                name: "bob".into(),
                password: Some("new".into()),
                superuser: None,
            }))
        );
        assert_eq!(
            UserStatement::parse("DROP USER IF EXISTS a, b"),
            Some(Ok(UserStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true,
            }))
        );
        assert!(matches!(
            UserStatement::parse("CREATE USER carol"),
            Some(Err(m)) if m.contains("PASSWORD")
        ));
        assert!(matches!(
            UserStatement::parse("CREATE USER carol PASSWORD 'x' nonsense"),
            Some(Err(_))
        ));
        assert_eq!(UserStatement::parse("SELECT 1"), None);
        assert!(copies_to_file("COPY cpu TO '/tmp/x.csv'"));
        assert!(copies_to_file(
            "select 1; copy (select 1) to '/tmp/x' stored as csv"
        ));
        assert!(!copies_to_file("COPY cpu TO STDOUT"));
        assert!(!copies_to_file("SELECT 'copy' AS to"));
        assert_eq!(UserStatement::parse("CREATE TABLE t (a int)"), None);
        assert!(
            !UserStatement::parse("CREATE USER a PASSWORD 'secret'")
                .unwrap()
                .unwrap()
                .redacted()
                .contains("secret")
        );
    }
}
