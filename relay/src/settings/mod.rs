//! The settings of every subcommand, resolved from flags, environment variables, an optional TOML
//! file and defaults, in that order of precedence.
//!
//! Every setting is one row of [`table`]: its flag, environment variable, file key, default, what
//! it allows, help text and parser. Each subcommand takes the rows of its [`scope`] (`run` all of
//! them, the admin commands the database and, for `wal`, the slot), as flags generated from the
//! rows; [`layers`] takes each value from the first layer that has it and parses it with the row's
//! parser, so an invalid value gets the same explanation wherever it came from, naming the source,
//! the value and what is allowed. [`Settings::effective`] keeps what was used and where it came
//! from, for `outbox-relay config check` ([`report`], which also prints the docs' table).
//!
//! | file | holds |
//! | --- | --- |
//! | [`table`] | the rows |
//! | [`values`] | what a row allows, and the parsers |
//! | [`scope`] | which rows each subcommand takes, and the clap flags made from them |
//! | [`file`](mod@file) | the TOML file, flattened to `section.key` |
//! | [`layers`] | flag > environment > file > default, origins and errors |
//! | [`database`] | the database settings every subcommand uses |
//! | [`run`] / [`kafka`] | `run`'s settings built into the libraries' configurations |
//! | [`report`] | `config check`'s lines and the docs' Markdown table |

pub mod database;
pub mod file;
pub mod kafka;
pub mod layers;
pub mod report;
pub mod run;
pub mod scope;
pub mod table;
pub mod values;

#[cfg(test)]
mod bounds;
#[cfg(test)]
mod tests;

pub use database::{Database, WalSlot};
pub use layers::{Effective, Origin, SettingError};
pub use run::{Capture, RunArgs, Settings};
pub use scope::{DatabaseScope, RunScope, SettingArgs, WalScope};
pub use table::{ALL, CONFIG_ENV, Spec};

/// The process's environment variable `name`, as the resolvers read it (unset or not UTF-8: none).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
