//! Which settings each subcommand takes, and their flags, generated from [`super::table`].
//!
//! A subcommand flattens [`SettingArgs<S>`]: `S` names its [`Scope`], and the flags (`--config`
//! included, `-X` for `run`) are made from the table's rows, with their help text saying the
//! environment variable, the config file key, the default and what is allowed. Clap only collects
//! the text of each flag given; [`super::layers`] reads the environment and the file and parses
//! every value, whatever its source, with the row's parser.

use std::marker::PhantomData;
use std::path::PathBuf;

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};

use super::table::{
    ALL, CONFIG_ENV, CONNECT_TIMEOUT, DATABASE_URL, OUTBOX_TABLE, PROPERTY_HELP, PROPERTY_LONG,
    PROPERTY_SHORT, SCHEMA, Spec, WAL_SLOT,
};

/// The settings one group of subcommands takes.
#[derive(Debug)]
pub struct Scope {
    /// The subcommands, as the docs name them.
    pub commands: &'static str,
    /// Its settings, in table order.
    pub settings: &'static [&'static Spec],
    /// Flags named otherwise than in the table: (file key, flag).
    pub renamed: &'static [(&'static str, &'static str)],
    /// Whether it takes `-X` producer properties.
    pub producer_properties: bool,
}

impl Scope {
    /// The flag of `spec` in this scope.
    pub fn flag(&self, spec: &Spec) -> &'static str {
        self.renamed
            .iter()
            .find(|(key, _)| *key == spec.key)
            .map_or(spec.flag, |(_, flag)| flag)
    }

    /// Whether this scope takes `spec`.
    pub fn takes(&self, spec: &Spec) -> bool {
        self.settings.iter().any(|taken| taken.key == spec.key)
    }
}

/// `run` and `config check`: every setting.
pub const RUN: Scope = Scope {
    commands: "run",
    settings: ALL,
    renamed: &[],
    producer_properties: true,
};

/// `migrate`, `status` and `dead-letters`: the database.
pub const DATABASE: Scope = Scope {
    commands: "migrate, status, dead-letters",
    settings: &[
        &DATABASE_URL.spec,
        &SCHEMA.spec,
        &OUTBOX_TABLE.spec,
        &CONNECT_TIMEOUT.spec,
    ],
    renamed: &[],
    producer_properties: false,
};

/// `wal create-slot|drop-slot|status`: the database and the slot, whose flag there is `--slot`.
pub const WAL: Scope = Scope {
    commands: "wal",
    settings: &[
        &DATABASE_URL.spec,
        &SCHEMA.spec,
        &OUTBOX_TABLE.spec,
        &CONNECT_TIMEOUT.spec,
        &WAL_SLOT.spec,
    ],
    renamed: &[("wal.slot", "--slot")],
    producer_properties: false,
};

/// Every scope, for the docs.
pub const SCOPES: &[&Scope] = &[&RUN, &DATABASE, &WAL];

/// A type that names a [`Scope`], for [`SettingArgs`].
pub trait InScope {
    /// The scope.
    const SCOPE: &'static Scope;
}

/// [`RUN`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RunScope;

impl InScope for RunScope {
    const SCOPE: &'static Scope = &RUN;
}

/// [`DATABASE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DatabaseScope;

impl InScope for DatabaseScope {
    const SCOPE: &'static Scope = &DATABASE;
}

/// [`WAL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WalScope;

impl InScope for WalScope {
    const SCOPE: &'static Scope = &WAL;
}

/// The setting flags of a subcommand of scope `S`, as given on the command line (unparsed).
#[derive(Debug, Clone)]
pub struct SettingArgs<S> {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// The flags given: (file key, text).
    pub given: Vec<(&'static str, String)>,
    /// `-X key=value`, in order.
    pub producer_properties: Vec<String>,
    scope: PhantomData<S>,
}

impl<S> Default for SettingArgs<S> {
    fn default() -> Self {
        Self {
            config: None,
            given: Vec::new(),
            producer_properties: Vec::new(),
            scope: PhantomData,
        }
    }
}

impl<S: InScope> SettingArgs<S> {
    /// The scope of these flags.
    pub fn scope(&self) -> &'static Scope {
        S::SCOPE
    }

    /// The text given with the flag of `spec`, if it was given.
    pub fn flag(&self, spec: &Spec) -> Option<&str> {
        self.given
            .iter()
            .find(|(key, _)| *key == spec.key)
            .map(|(_, text)| text.as_str())
    }
}

const CONFIG_ID: &str = "config";
const PROPERTY_ID: &str = "producer_property";

/// The help of `spec`'s flag: what it sets, what it allows, and its other sources.
pub fn help(spec: &Spec) -> String {
    let default = spec
        .default
        .map(|default| format!(" [default: {default}]"))
        .unwrap_or_default();
    format!(
        "{}; {} [env: {}] [file: {}]{default}",
        spec.help,
        spec.allowed.short(),
        spec.env,
        spec.key
    )
}

impl<S: InScope> Args for SettingArgs<S> {
    fn augment_args(mut command: clap::Command) -> clap::Command {
        let scope = S::SCOPE;
        command = command.arg(
            Arg::new(CONFIG_ID)
                .long("config")
                .value_name("FILE")
                .value_parser(ValueParser::path_buf())
                .action(ArgAction::Set)
                .help(format!(
                    "TOML config file [env: {CONFIG_ENV}]. Flags override environment variables, which override the file"
                )),
        );
        for spec in scope.settings {
            command = command.arg(
                Arg::new(spec.key)
                    .long(scope.flag(spec).trim_start_matches('-'))
                    .value_name(spec.value_name)
                    .value_parser(ValueParser::string())
                    .action(ArgAction::Set)
                    .help(help(spec)),
            );
        }
        if scope.producer_properties {
            command = command.arg(
                Arg::new(PROPERTY_ID)
                    .short(PROPERTY_SHORT)
                    .long(PROPERTY_LONG)
                    .value_name("KEY=VALUE")
                    .value_parser(ValueParser::string())
                    .action(ArgAction::Append)
                    .help(PROPERTY_HELP),
            );
        }
        command
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl<S: InScope> FromArgMatches for SettingArgs<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let scope = S::SCOPE;
        if let Some(path) = matches
            .try_get_one::<PathBuf>(CONFIG_ID)
            .map_err(mismatch)?
        {
            self.config = Some(path.clone());
        }
        for spec in scope.settings {
            if let Some(text) = matches.try_get_one::<String>(spec.key).map_err(mismatch)? {
                self.given.retain(|(key, _)| *key != spec.key);
                self.given.push((spec.key, text.clone()));
            }
        }
        if scope.producer_properties
            && let Some(properties) = matches
                .try_get_many::<String>(PROPERTY_ID)
                .map_err(mismatch)?
        {
            self.producer_properties = properties.cloned().collect();
        }
        Ok(())
    }
}

/// A flag defined and read with different types: a bug in this module, reported rather than a panic.
fn mismatch(error: clap::parser::MatchesError) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        format!("internal error reading a setting flag: {error}\n"),
    )
}
