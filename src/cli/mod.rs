//! Subcommands of the `gannet` binary.

pub mod import;
pub mod sql;
