//! The relay's settings: its config file, `-X` producer properties, environment variables, and the
//! text of each setting.

use std::collections::BTreeMap;
use std::ops::Range;

use outbox_kafka::TopicRoute;
use outbox_relay::fuzzing::{run_settings, setting_value};
use outbox_relay::settings::table::{DATABASE_URL, PROPERTY_FLAG};
use outbox_relay::settings::{ALL, Origin, SettingError, Settings};

use crate::Outcome;
use crate::secrets::{assert_not_shown, is_password, marker};

/// The config file of [`producer_properties`] before its `[kafka.properties]`: what `run` needs.
pub const BASE_FILE: &str = "[database]\nurl = \"postgres://relay@localhost/app\"\n\
                             [kafka]\nbrokers = \"localhost:9092\"\n";

/// Password lines of a config file checked per input, at most.
const PASSWORD_LINES: usize = 4;

/// Resolves `run`'s settings from a config file holding `data` (invalid UTF-8 replaced), without
/// flags or environment. Whatever the text, they resolve or are refused with an error; resolved
/// settings show every setting once and a topic template that reads back. The value of a line
/// `NAME = VALUE` whose name holds `password` is not shown, by an error or by `config check`.
pub fn config_file(data: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(data);
    let result = run_settings(&text, &[], &[]);
    check(&result);
    let shown = printed(&result);
    for (name, span) in password_lines(&text).take(PASSWORD_LINES) {
        let secret = &text[span.clone()];
        let Some(marker) = marker(name, secret) else {
            continue;
        };
        let mut without = text.clone().into_owned();
        without.replace_range(span, &marker);
        let shown_without = printed(&run_settings(&without, &[], &[]));
        assert_not_shown(
            &format!("`{name}` in the config file"),
            secret,
            &shown,
            &shown_without,
        );
    }
    Outcome::of(&result)
}

/// Reads `data` as NUL-separated fields (invalid UTF-8 replaced): `-XTEXT` is a `-X` argument,
/// `file:NAME=VALUE` a `[kafka.properties]` entry of a config file that also holds [`BASE_FILE`],
/// and any other `NAME=VALUE` an environment variable; then resolves `run`'s settings from them.
///
/// A `-X` that is no `KEY=VALUE`, or a property named `bootstrap.servers`, is refused; resolved
/// settings hand every property to the producer as given, a `-X` winning over the file, and
/// recorded with where it came from. The value of a property whose name holds `password` is not
/// shown, by an error or by `config check`.
pub fn producer_properties(data: &[u8]) -> Outcome {
    let input = Properties::read(data);
    let result = input.resolve();
    check(&result);

    let mut expected: BTreeMap<&str, (&str, bool)> = input
        .file
        .iter()
        .map(|(name, value)| (name.as_str(), (value.as_str(), false)))
        .collect();
    let mut malformed = false;
    for text in &input.flags {
        match property(text) {
            Some((name, value)) => {
                expected.insert(name, (value, true));
            }
            None => malformed = true,
        }
    }
    if let Ok(settings) = &result {
        assert!(!malformed, "a -X that is no KEY=VALUE was taken");
        for (name, (value, flag)) in &expected {
            assert_ne!(*name, "bootstrap.servers", "bootstrap.servers was taken");
            assert_eq!(
                settings.kafka.get(name),
                Some(*value),
                "property `{name}` did not pass through"
            );
            let key = format!("kafka.properties.{name}");
            let origin = settings.effective.iter().find(|e| e.key == key);
            let origin = origin.map(|effective| &effective.origin);
            if *flag {
                assert_eq!(origin, Some(&Origin::Flag(PROPERTY_FLAG)), "{key}");
            } else {
                assert!(
                    matches!(origin, Some(Origin::File(..))),
                    "{key}: {origin:?}"
                );
            }
        }
    }

    let shown = printed(&result);
    let mut secrets: Vec<(&str, &str)> = input
        .flags
        .iter()
        .filter_map(|text| property(text))
        .chain(input.file.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .filter(|(name, _)| is_password(name))
        .collect();
    secrets.dedup_by_key(|(_, value)| *value);
    for (name, secret) in secrets {
        let Some(marker) = marker(name, secret) else {
            continue;
        };
        let shown_without = printed(&input.replacing(secret, &marker).resolve());
        assert_not_shown(
            &format!("property `{name}`"),
            secret,
            &shown,
            &shown_without,
        );
    }
    Outcome::of(&result)
}

/// Reads `data` as a byte indexing a row of the settings table, then that row's text (invalid
/// UTF-8 replaced), and resolves `run`'s settings with the text given as the row's flag (see
/// [`setting_value`]). The text is taken, or refused by an error naming the row's flag (or a
/// combination of settings); the password of a database URL is not shown.
pub fn setting_values(data: &[u8]) -> Outcome {
    let (index, text) = match data.split_first() {
        Some((index, text)) => (usize::from(*index), String::from_utf8_lossy(text)),
        None => (0, "".into()),
    };
    let (spec, result) = setting_value(index, &text);
    check(&result);
    match &result {
        Ok(settings) => {
            let origin = settings.effective.iter().find(|e| e.key == spec.key);
            assert!(
                matches!(origin.map(|e| &e.origin), Some(Origin::Flag(_))),
                "{}: the value given was not used: {origin:?}",
                spec.key
            );
        }
        Err(SettingError::Invalid { setting, .. }) => assert_eq!(
            setting, spec.flag,
            "a value of {} was refused as another setting's",
            spec.key
        ),
        Err(SettingError::Conflict(_)) => {}
        Err(other) => panic!("{}: `{text}` refused otherwise: {other}", spec.key),
    }
    if spec.key == DATABASE_URL.spec.key {
        database_password(index, &text);
    }
    Outcome::of(&result)
}

/// A URL's password is not shown, by an error or by `config check`.
fn database_password(index: usize, text: &str) {
    let Ok(mut url) = url::Url::parse(text.trim()) else {
        return;
    };
    let Some(password) = url.password().map(str::to_owned) else {
        return;
    };
    let Some(marker) = marker("", &password) else {
        return;
    };
    let original = url.to_string();
    if url.set_password(Some(&marker)).is_err() {
        return;
    }
    let shown = printed(&setting_value(index, &original).1);
    let shown_without = printed(&setting_value(index, url.as_str()).1);
    assert_not_shown("the database URL", &password, &shown, &shown_without);
}

/// The input of [`producer_properties`].
#[derive(Debug, Clone)]
struct Properties {
    flags: Vec<String>,
    /// By name, the last of a repeated one winning (TOML refuses a key twice).
    file: BTreeMap<String, String>,
    env: Vec<(String, String)>,
}

impl Properties {
    fn read(data: &[u8]) -> Self {
        let mut input = Self {
            flags: Vec::new(),
            file: BTreeMap::new(),
            env: Vec::new(),
        };
        for field in data.split(|byte| *byte == 0) {
            let field = String::from_utf8_lossy(field);
            if let Some(flag) = field.strip_prefix("-X") {
                input.flags.push(flag.to_owned());
            } else if let Some(entry) = field.strip_prefix("file:") {
                if let Some((name, value)) = entry.split_once('=') {
                    input.file.insert(name.to_owned(), value.to_owned());
                }
            } else if let Some((name, value)) = field.split_once('=') {
                input.env.push((name.to_owned(), value.to_owned()));
            }
        }
        input
    }

    fn file_text(&self) -> String {
        let mut text = format!("{BASE_FILE}[kafka.properties]\n");
        for (name, value) in &self.file {
            let name = toml::Value::String(name.clone());
            let value = toml::Value::String(value.clone());
            text.push_str(&format!("{name} = {value}\n"));
        }
        text
    }

    fn resolve(&self) -> Result<Settings, SettingError> {
        run_settings(&self.file_text(), &self.flags, &self.env)
    }

    /// The same input with every password property valued `secret` valued `marker` instead.
    fn replacing(&self, secret: &str, marker: &str) -> Self {
        let mut input = self.clone();
        for flag in &mut input.flags {
            if property(flag).is_some_and(|(name, value)| is_password(name) && value == secret)
                && let Some((name, _)) = flag.split_once('=')
            {
                *flag = format!("{name}={marker}");
            }
        }
        for (name, value) in &mut input.file {
            if is_password(name) && value == secret {
                *value = marker.to_owned();
            }
        }
        input
    }
}

/// A `-X` text's property: the name (trimmed) and the value, or `None` for no `KEY=VALUE`.
fn property(text: &str) -> Option<(&str, &str)> {
    let (name, value) = text.split_once('=')?;
    let name = name.trim();
    (!name.is_empty()).then_some((name, value))
}

/// The lines `NAME = VALUE` of `text` whose name holds `password`: the name, and where the value
/// is, without blanks and quotes around it.
fn password_lines(text: &str) -> impl Iterator<Item = (&str, Range<usize>)> {
    let mut start = 0;
    text.split_inclusive('\n').filter_map(move |line| {
        let line_start = start;
        start += line.len();
        let (name, rest) = line.split_once('=')?;
        let name = name.trim();
        if !is_password(name) {
            return None;
        }
        let rest_start = line_start + line.len() - rest.len();
        let trimmed = rest.trim_start();
        let unquoted = trimmed.trim_start_matches(['"', '\'']);
        let value = unquoted.trim_end().trim_end_matches(['"', '\'']);
        let value_start = rest_start + (rest.len() - unquoted.len());
        Some((name, value_start..value_start + value.len()))
    })
}

/// What `config check` prints of resolved settings (every value used, and where it came from),
/// or what the relay prints when they are refused (the error and its causes).
fn printed(result: &Result<Settings, SettingError>) -> String {
    match result {
        Ok(settings) => settings
            .effective
            .iter()
            .map(|e| format!("{} = {} ({})\n", e.key, e.shown, e.origin))
            .collect(),
        Err(error) => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// What holds for any resolved settings: `config check` shows each setting once, and the topic
/// template reads back as itself.
fn check(result: &Result<Settings, SettingError>) {
    let Ok(settings) = result else {
        return;
    };
    for spec in ALL {
        let count = settings
            .effective
            .iter()
            .filter(|e| e.key == spec.key)
            .count();
        assert_eq!(count, 1, "config check shows `{}` {count} times", spec.key);
    }
    let route = settings.topic_route.to_string();
    assert_eq!(
        TopicRoute::parse(&route).ok().as_ref(),
        Some(&settings.topic_route),
        "the topic template `{route}` does not read back"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines_locate_the_value_without_its_quotes() {
        let text = "[kafka.properties]\n\"sasl.password\" = \"hunter2hunter2\"\nlinger.ms = 5\n";
        let lines: Vec<_> = password_lines(text).collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, "\"sasl.password\"");
        assert_eq!(&text[lines[0].1.clone()], "hunter2hunter2");
    }

    #[test]
    fn properties_read_flags_file_entries_and_environment() {
        let input =
            Properties::read(b"-Xlinger.ms=5\0file:sasl.password=x=y\0OUTBOX_LANES=16\0junk");
        assert_eq!(input.flags, ["linger.ms=5"]);
        assert_eq!(input.file["sasl.password"], "x=y");
        assert_eq!(input.env, [("OUTBOX_LANES".to_owned(), "16".to_owned())]);
        assert!(input.file_text().contains("\"sasl.password\" = \"x=y\""));
    }
}
