//! The optional TOML configuration file, read by every subcommand (`--config` or `OUTBOX_CONFIG`).
//!
//! Its keys are the settings' names, grouped in tables (`[relay] lanes = 64` is `relay.lanes`), plus
//! `[kafka.properties]`, librdkafka producer properties passed through. Values are read as text and
//! parsed exactly like the same setting's flag or environment variable, so every setting has one
//! parser and one error message whatever its source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The table of pass-through producer properties.
pub const PROPERTIES_TABLE: &str = "kafka.properties";

/// A configuration file, flattened to `section.key = text`.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The settings, by dotted name.
    pub values: BTreeMap<String, String>,
    /// `[kafka.properties]`, in file order of their names.
    pub properties: BTreeMap<String, String>,
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid TOML.
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// It holds a key that is no setting.
    #[error("the config file {path} has an unknown setting `{key}`; known settings: {known}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// The known settings, comma-separated.
        known: String,
    },
    /// A value of a kind no setting takes (an array, a table where a value belongs, ...).
    #[error("the config file {path} sets `{key}` to {found}; expected {expected}")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What the file holds.
        found: &'static str,
        /// What is allowed.
        expected: &'static str,
    },
}

impl ConfigFile {
    /// Reads and checks the file: every key must be one of `known` (dotted names) or a property
    /// under `[kafka.properties]`.
    pub fn load(path: &Path, known: &[&str]) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, known)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str, known: &[&str]) -> Result<Self, FileError> {
        let table: toml::Table =
            text.parse()
                .map_err(|error: toml::de::Error| FileError::Syntax {
                    path: path.to_owned(),
                    message: syntax_message(text, &error),
                })?;
        let mut file = Self {
            path: path.to_owned(),
            ..Self::default()
        };
        file.flatten("", &table, known)?;
        Ok(file)
    }

    fn flatten(
        &mut self,
        prefix: &str,
        table: &toml::Table,
        known: &[&str],
    ) -> Result<(), FileError> {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if key == PROPERTIES_TABLE {
                let toml::Value::Table(properties) = value else {
                    return Err(self.wrong_type(&key, value, "a table of librdkafka properties"));
                };
                for (property, value) in properties {
                    let text = scalar_text(value).ok_or_else(|| {
                        self.wrong_type(
                            &format!("{key}.{property}"),
                            value,
                            "a string, number or boolean",
                        )
                    })?;
                    self.properties.insert(property.clone(), text);
                }
                continue;
            }
            match value {
                toml::Value::Table(inner)
                    if known
                        .iter()
                        .chain(&[PROPERTIES_TABLE])
                        .any(|k| k.starts_with(&format!("{key}."))) =>
                {
                    self.flatten(&key, inner, known)?;
                }
                _ if !known.contains(&key.as_str()) => {
                    return Err(FileError::UnknownKey {
                        path: self.path.clone(),
                        key,
                        known: known.join(", "),
                    });
                }
                _ => {
                    let text = scalar_text(value).ok_or_else(|| {
                        self.wrong_type(&key, value, "a string, number or boolean")
                    })?;
                    self.values.insert(key, text);
                }
            }
        }
        Ok(())
    }

    fn wrong_type(&self, key: &str, value: &toml::Value, expected: &'static str) -> FileError {
        FileError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            found: value.type_str(),
            expected,
        }
    }
}

/// The parser's message and where in the file it applies, without the file's text: the line may
/// hold a secret (a password mistyped is still a password).
fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end().replace('\n', " ");
    let Some(span) = error.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |line| line.chars().count())
        + 1;
    format!("line {line}, column {column}: {message}")
}

fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        toml::Value::Datetime(time) => Some(time.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["database.url", "relay.lanes", "relay.lease"];

    fn parse(text: &str) -> Result<ConfigFile, FileError> {
        ConfigFile::parse(Path::new("relay.toml"), text, KNOWN)
    }

    #[test]
    fn tables_flatten_to_dotted_settings_and_properties_pass_through() {
        let file = parse(
            r#"
            [database]
            url = "postgres://db/app"
            [relay]
            lanes = 32
            lease = "15s"
            [kafka.properties]
            "compression.type" = "zstd"
            "linger.ms" = 10
            "#,
        )
        .expect("valid");
        assert_eq!(file.values["database.url"], "postgres://db/app");
        assert_eq!(file.values["relay.lanes"], "32");
        assert_eq!(file.values["relay.lease"], "15s");
        assert_eq!(file.properties["compression.type"], "zstd");
        assert_eq!(file.properties["linger.ms"], "10");
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let error = parse("[relay]\nlane = 32\n").expect_err("typo").to_string();
        assert!(error.contains("relay.toml"), "{error}");
        assert!(error.contains("unknown setting `relay.lane`"), "{error}");
        assert!(
            error.contains("relay.lanes"),
            "lists the known ones: {error}"
        );

        let error = parse("[relay]\nlanes = [1, 2]\n")
            .expect_err("array")
            .to_string();
        assert!(error.contains("`relay.lanes` to array"), "{error}");

        let error = parse("[relay\nlanes = 1\n")
            .expect_err("syntax")
            .to_string();
        assert!(error.contains("not valid TOML"), "{error}");
        assert!(error.contains("line 1"), "{error}");

        // The message says where, never what the line holds.
        let error = parse("[database]\nurl = \"postgres://app:hunter2@db/app\n")
            .expect_err("unterminated string")
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");

        let error = parse("[kafka]\nproperties = 3\n")
            .expect_err("not a table")
            .to_string();
        assert!(error.contains("kafka.properties"), "{error}");

        let error = ConfigFile::load(Path::new("/nonexistent/relay.toml"), KNOWN)
            .expect_err("missing")
            .to_string();
        assert!(error.contains("/nonexistent/relay.toml"), "{error}");
    }
}
