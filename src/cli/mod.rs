//! Subcommands of the `gannet` binary.

pub mod auth;
pub mod import;
pub mod serve;
pub mod sql;
