//! The layers a value comes from — a flag, else an environment variable, else the config file, else
//! the default — and the errors that name the layer, the value and what is allowed.

use std::fmt;
use std::path::PathBuf;

use super::file::{ConfigFile, FileError, PROPERTIES_TABLE};
use super::scope::{InScope, Scope, SettingArgs};
use super::table::{ALL, CONFIG_ENV, Setting, Spec};
use super::values::shown;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// The config file, under this key.
    File(PathBuf, String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::Env(name) => f.write_str(name),
            Origin::File(path, key) => write!(f, "{key} in {}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A value that was used, shown with secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The setting's file name (`relay.lanes`, `kafka.properties.linger.ms`).
    pub key: String,
    /// The value, secrets redacted.
    pub shown: String,
    /// Where it came from.
    pub origin: Origin,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// The config file cannot be used.
    #[error(transparent)]
    File(#[from] FileError),
    /// A required setting has no value in any source.
    #[error("{key} is required: give {flag}, set {env} or put `{key}` in the config file")]
    Missing {
        /// The file key.
        key: &'static str,
        /// The flag.
        flag: &'static str,
        /// The environment variable.
        env: &'static str,
    },
    /// A value is invalid.
    #[error("invalid {setting} `{shown}`{from}: {allowed}")]
    Invalid {
        /// How the setting was named where the value came from.
        setting: String,
        /// The value, secrets redacted.
        shown: String,
        /// Where it came from, when not obvious from the name.
        from: String,
        /// What is wrong and what is allowed.
        allowed: String,
    },
    /// Two values that are each valid do not go together.
    #[error("{0}")]
    Conflict(String),
}

/// The sources of one subcommand's settings, and what was taken from them so far.
pub struct Layers<'a> {
    scope: &'static Scope,
    flags: &'a [(&'static str, String)],
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<ConfigFile>,
    effective: Vec<Effective>,
}

impl<'a> Layers<'a> {
    /// The layers of `args`, the environment as `env` reports it, and the config file named by
    /// `--config` or `OUTBOX_CONFIG`, read and checked against every setting's key (one file serves
    /// every subcommand; each takes the settings it uses).
    ///
    /// # Errors
    /// [`SettingError::File`] when the file cannot be read or holds an unknown key.
    pub fn new<S: InScope>(
        args: &'a SettingArgs<S>,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingError> {
        let path = args
            .config
            .clone()
            .or_else(|| env(CONFIG_ENV).map(PathBuf::from));
        let file = path
            .map(|path| ConfigFile::load(&path, &known_keys()))
            .transpose()?;
        Ok(Self::with_file(args, env, file))
    }

    /// The layers of `args`, the environment as `env` reports it, and `file` as the config file
    /// (whatever `--config` or `OUTBOX_CONFIG` say).
    pub(crate) fn with_file<S: InScope>(
        args: &'a SettingArgs<S>,
        env: &'a dyn Fn(&str) -> Option<String>,
        file: Option<ConfigFile>,
    ) -> Self {
        Self {
            scope: args.scope(),
            flags: &args.given,
            env,
            file,
            effective: Vec::new(),
        }
    }

    /// The environment variable `name`, as these layers read the environment.
    pub fn env_var(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// The config file, if one was named.
    pub fn file(&self) -> Option<&ConfigFile> {
        self.file.as_ref()
    }

    /// The value of `setting`: its flag, else its environment variable, else the file, else its
    /// default; parsed by the row's parser and recorded as effective.
    ///
    /// # Errors
    /// [`SettingError::Missing`] without any value, [`SettingError::Invalid`] naming where an
    /// invalid one came from.
    pub fn value<T>(&mut self, setting: &Setting<T>) -> Result<T, SettingError> {
        let spec = &setting.spec;
        let flag = self.scope.flag(spec);
        let given = self
            .flags
            .iter()
            .find(|(key, _)| *key == spec.key)
            .map(|(_, text)| text.clone());
        let (text, origin) = if let Some(text) = given {
            (text, Origin::Flag(flag))
        } else if let Some(text) = (self.env)(spec.env) {
            (text, Origin::Env(spec.env))
        } else if let Some((text, path)) = self
            .file
            .as_ref()
            .and_then(|file| Some((file.values.get(spec.key)?.clone(), file.path.clone())))
        {
            (text, Origin::File(path, spec.key.to_owned()))
        } else if let Some(default) = spec.default {
            (default.to_owned(), Origin::Default)
        } else {
            return Err(SettingError::Missing {
                key: spec.key,
                flag,
                env: spec.env,
            });
        };
        let shown = shown(spec.key, &text);
        let value = setting
            .parse(text.trim())
            .map_err(|allowed| invalid(&origin, spec.key, &shown, allowed))?;
        self.record(Effective {
            key: spec.key.to_owned(),
            shown,
            origin,
        });
        Ok(value)
    }

    /// Records a value used that is no row of the table (a producer property).
    pub fn record(&mut self, effective: Effective) {
        self.effective.push(effective);
    }

    /// Where the value recorded under `key` came from ([`Origin::Default`] if none was).
    pub fn origin(&self, key: &str) -> Origin {
        self.effective
            .iter()
            .find(|effective| effective.key == key)
            .map_or(Origin::Default, |effective| effective.origin.clone())
    }

    /// `spec`'s recorded value refused by the builder it went to, with what the row allows.
    pub fn refused(&self, spec: &Spec) -> SettingError {
        let (shown, origin) = self
            .effective
            .iter()
            .find(|effective| effective.key == spec.key)
            .map_or_else(
                || (String::new(), Origin::Default),
                |effective| (effective.shown.clone(), effective.origin.clone()),
            );
        invalid(&origin, spec.key, &shown, spec.allowed.must())
    }

    /// Recorded values that are each valid but do not go together.
    pub fn conflict(&self, specs: &[&Spec], why: &str) -> SettingError {
        let values: Vec<String> = specs
            .iter()
            .map(|spec| {
                let effective = self
                    .effective
                    .iter()
                    .find(|effective| effective.key == spec.key);
                match effective {
                    Some(effective) => format!(
                        "{} `{}` (from {})",
                        spec.key, effective.shown, effective.origin
                    ),
                    None => spec.key.to_owned(),
                }
            })
            .collect();
        SettingError::Conflict(format!(
            "invalid combination {}: {why}",
            values.join(" and ")
        ))
    }

    /// What was used and where it came from: the table's settings in table order, then the rest
    /// (producer properties) in the order they were recorded.
    pub fn into_effective(self) -> Vec<Effective> {
        let mut effective = self.effective;
        effective.sort_by_key(|effective| {
            ALL.iter()
                .position(|spec| spec.key == effective.key)
                .unwrap_or(ALL.len())
        });
        effective
    }
}

/// The keys a config file may hold besides `[kafka.properties]`: every setting's.
pub(crate) fn known_keys() -> Vec<&'static str> {
    ALL.iter().map(|spec| spec.key).collect()
}

/// A refused value: named as it was given (the flag, the variable, or the key in the file).
pub fn invalid(origin: &Origin, key: &str, shown: &str, allowed: String) -> SettingError {
    let (setting, from) = match origin {
        Origin::Flag(flag) if key.starts_with(PROPERTIES_TABLE) => {
            (key.to_owned(), format!(" (from {flag})"))
        }
        Origin::Flag(flag) => ((*flag).to_owned(), String::new()),
        Origin::Env(name) => ((*name).to_owned(), String::new()),
        Origin::File(path, _) => (
            key.to_owned(),
            format!(" in the config file {}", path.display()),
        ),
        Origin::Default => (key.to_owned(), " (the default)".to_owned()),
    };
    SettingError::Invalid {
        setting,
        shown: shown.to_owned(),
        from,
        allowed,
    }
}
