//! Entry points for the fuzz targets; not a stable API.
//!
//! They resolve `run`'s settings exactly as `outbox-relay run` does, from plain values instead of
//! the command line, the process's environment and a file on disk.

use std::path::Path;

use crate::settings::file::ConfigFile;
use crate::settings::layers::{Layers, known_keys};
use crate::settings::table::{ALL, BROKERS, DATABASE_URL, Spec};
use crate::settings::{RunArgs, SettingError, Settings};

/// The path [`run_settings`] gives its config file, as errors name it.
pub const CONFIG_PATH: &str = "relay.toml";

/// The values [`setting_value`] gives the required settings other than the row it runs.
pub const REQUIRED: &[(&str, &str)] = &[
    (DATABASE_URL.spec.key, "postgres://relay@localhost/app"),
    (BROKERS.spec.key, "localhost:9092"),
];

/// `run`'s settings from a config file holding `toml_text`, these `-X` properties and an
/// environment of these variables (the last of a repeated name wins).
///
/// # Errors
/// As `outbox-relay run`: the file cannot be used, a setting is missing or invalid, or two do not
/// go together.
pub fn run_settings(
    toml_text: &str,
    producer_properties: &[String],
    env: &[(String, String)],
) -> Result<Settings, SettingError> {
    let file = ConfigFile::parse(Path::new(CONFIG_PATH), toml_text, &known_keys())?;
    let mut args = RunArgs::default();
    args.producer_properties = producer_properties.to_vec();
    let env = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    Settings::from_layers(Layers::with_file(&args, &env, Some(file)), &args)
}

/// Runs the parser of the row `ALL[index % ALL.len()]` on `text`: `run`'s settings resolved with
/// `text` given as that row's flag, the [`REQUIRED`] settings given too, and nothing else set.
/// Returns the row and the outcome.
pub fn setting_value(index: usize, text: &str) -> (&'static Spec, Result<Settings, SettingError>) {
    let spec = ALL[index % ALL.len()];
    let mut args = RunArgs::default();
    args.given.push((spec.key, text.to_owned()));
    for (key, value) in REQUIRED {
        if *key != spec.key {
            args.given.push((*key, (*value).to_owned()));
        }
    }
    (spec, Settings::resolve(&args, &|_| None))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::settings::Origin;

    /// The settings' effective values, their origins by kind (a file's path differs).
    fn effective(settings: &Settings) -> Vec<(String, String, &'static str)> {
        let kind = |origin: &Origin| match origin {
            Origin::Flag(_) => "flag",
            Origin::Env(_) => "env",
            Origin::File(..) => "file",
            Origin::Default => "default",
        };
        settings
            .effective
            .iter()
            .map(|e| (e.key.clone(), e.shown.clone(), kind(&e.origin)))
            .collect()
    }

    #[test]
    fn a_file_text_resolves_as_the_same_file_on_disk() {
        let text = "[database]\nurl = \"postgres://file/app\"\n[kafka]\nbrokers = \"k:9092\"\n\
                    [relay]\nlanes = 16\n[kafka.properties]\n\"linger.ms\" = 5\n";
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        let mut args = RunArgs::default();
        args.config = Some(file.path().to_owned());
        args.producer_properties = vec!["compression.type=zstd".into()];
        let env = |name: &str| (name == "OUTBOX_BATCH_SIZE").then(|| "100".to_owned());
        let on_disk = Settings::resolve(&args, &env).expect("valid");
        let from_text = run_settings(
            text,
            &args.producer_properties,
            &[("OUTBOX_BATCH_SIZE".into(), "100".into())],
        )
        .expect("valid");
        assert_eq!(effective(&from_text), effective(&on_disk));
        assert_eq!(from_text.shown("relay.lanes"), "16");
    }

    #[test]
    fn a_rows_text_is_taken_from_its_flag_or_refused_by_its_name() {
        let lanes = ALL
            .iter()
            .position(|spec| spec.key == "relay.lanes")
            .expect("a lanes row");
        let (spec, taken) = setting_value(lanes, "16");
        assert_eq!(spec.key, "relay.lanes");
        let taken = taken.expect("16 lanes");
        assert_eq!(taken.shown("relay.lanes"), "16");
        let (_, refused) = setting_value(lanes + ALL.len(), "48");
        let error = refused.expect_err("48 lanes").to_string();
        assert!(error.contains("--lanes `48`"), "{error}");
    }
}
