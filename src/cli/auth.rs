//! `gannet user` and `gannet token`: manage who may connect. They edit the auth file and
//! work whether or not a server runs on the data directory; a running server sees the
//! change at the next connection or request.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gannet::auth::{AuthStore, Scope};

#[derive(Debug, Args)]
pub struct AuthFileArgs {
    /// Data directory of the server.
    #[arg(
        long,
        env = "GANNET_DATA_DIR",
        default_value = "./gannet-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The users and tokens file [default: <data-dir>/auth.json].
    #[arg(long, env = "GANNET_AUTH_FILE", global = true)]
    pub auth_file: Option<PathBuf>,
}

impl AuthFileArgs {
    fn open(&self) -> anyhow::Result<AuthStore> {
        let path = self
            .auth_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("auth.json"));
        Ok(AuthStore::open(path)?)
    }
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    file: AuthFileArgs,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a Postgres user. The password is read from the terminal (asked twice), or as
    /// one line from standard input when it is not a terminal.
    Add {
        name: String,
        /// Allow the user to create, change and drop users (CREATE USER ...).
        #[arg(long)]
        superuser: bool,
    },
    /// Set a user's password, read as for `add`.
    Passwd { name: String },
    /// Remove a user.
    Remove { name: String },
    /// List the users.
    List,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    file: AuthFileArgs,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an HTTP API token and print it (the only time it is shown). Clients send it
    /// as `Authorization: Bearer <token>` or `Authorization: Token <token>`.
    Create {
        /// A name to list and revoke the token by.
        name: String,
        /// read: queries, model listing, metrics; write: line-protocol writes only;
        /// admin: everything, including model upload and delete.
        #[arg(long, value_enum)]
        scope: Scope,
    },
    /// Revoke a token.
    Revoke { name: String },
    /// List the tokens (names and scopes; the tokens themselves are not kept).
    List,
}

pub fn run_user(args: UserArgs) -> anyhow::Result<()> {
    let store = args.file.open()?;
    match args.command {
        UserCommand::Add { name, superuser } => {
            let password = read_password()?;
            store.create_user(&name, &password, superuser)?;
            eprintln!("user \"{name}\" added to {}", store.path().display());
        }
        UserCommand::Passwd { name } => {
            if store.current().user(&name).is_none() {
                bail!("user \"{name}\" does not exist");
            }
            let password = read_password()?;
            store.alter_user(&name, Some(&password), None)?;
            eprintln!("password of \"{name}\" changed");
        }
        UserCommand::Remove { name } => {
            if !store.drop_user(&name)? {
                bail!("user \"{name}\" does not exist");
            }
            eprintln!("user \"{name}\" removed");
        }
        UserCommand::List => {
            for user in &store.current().users {
                let role = if user.superuser { "superuser" } else { "user" };
                println!("{}\t{role}\t{}", user.name, user.created_at);
            }
        }
    }
    Ok(())
}

pub fn run_token(args: TokenArgs) -> anyhow::Result<()> {
    let store = args.file.open()?;
    match args.command {
        TokenCommand::Create { name, scope } => {
            let token = store.create_token(&name, scope)?;
            println!("{token}");
            eprintln!("{scope} token \"{name}\" created; it is not shown again");
        }
        TokenCommand::Revoke { name } => {
            if !store.revoke_token(&name)? {
                bail!("token \"{name}\" does not exist");
            }
            eprintln!("token \"{name}\" revoked");
        }
        TokenCommand::List => {
            for token in &store.current().tokens {
                println!("{}\t{}\t{}", token.name, token.scope, token.created_at);
            }
        }
    }
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let password = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if password != again {
            bail!("the passwords differ");
        }
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password.to_owned())
}
