//! Resolving whole subcommands' settings: precedence, the config file, secrets, and errors.

use std::collections::HashMap;
use std::io::Write;

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

/// The `run` flags of `argv` (after `outbox-relay run`).
fn args(argv: &[&str]) -> RunArgs {
    let cli = Cli::try_parse_from(["outbox-relay", "run"].iter().chain(argv)).expect("parses");
    match cli.command {
        Command::Run(args) => args,
        other => panic!("not run: {other:?}"),
    }
}

fn resolve_with(argv: &[&str], env: &[(&str, &str)]) -> Result<Settings, SettingError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    Settings::resolve(&args(argv), &|name| env.get(name).cloned())
}

/// A TOML config file holding `text`, removed when dropped.
pub(super) fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

fn origin(settings: &Settings, key: &str) -> Origin {
    settings
        .effective
        .iter()
        .find(|effective| effective.key == key)
        .map(|effective| effective.origin.clone())
        .unwrap_or_else(|| panic!("{key} not in {:?}", settings.effective))
}

const REQUIRED: &[&str] = &["--database-url", "postgres://db/app", "--brokers", "k:9092"];

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let file = config_file(
        "[database]\nurl = \"postgres://file/app\"\n[kafka]\nbrokers = \"file:9092\"\n\
         [relay]\nlanes = 16\nbatch_size = 100\npoll_interval = \"3s\"\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    let settings = resolve_with(
        &["--config", path, "--lanes", "8"],
        &[("OUTBOX_LANES", "32"), ("OUTBOX_BATCH_SIZE", "200")],
    )
    .expect("valid");
    assert_eq!(settings.shown("relay.lanes"), "8", "flag over env and file");
    assert_eq!(origin(&settings, "relay.lanes"), Origin::Flag("--lanes"));
    assert_eq!(settings.shown("relay.batch_size"), "200", "env over file");
    assert_eq!(
        origin(&settings, "relay.batch_size"),
        Origin::Env("OUTBOX_BATCH_SIZE")
    );
    assert_eq!(
        settings.shown("relay.poll_interval"),
        "3s",
        "file over default"
    );
    assert_eq!(
        origin(&settings, "relay.poll_interval"),
        Origin::File(file.path().to_owned(), "relay.poll_interval".into())
    );
    assert_eq!(settings.database.url, "postgres://file/app");
    assert_eq!(settings.brokers, "file:9092");
    assert_eq!(origin(&settings, "relay.lease"), Origin::Default);
    assert_eq!(settings.database.tables.schema_name(), "public");
    assert_eq!(settings.metrics_address, None, "metrics are off by default");
    assert_eq!(settings.kafka.get("message.timeout.ms"), Some("5000"));
}

#[test]
fn the_config_file_can_come_from_the_environment_and_properties_merge_by_name() {
    let file = config_file(
        "[kafka.properties]\n\"compression.type\" = \"zstd\"\n\"linger.ms\" = 20\n\
         \"sasl.password\" = \"hunter2\"\n[metrics]\naddress = \"127.0.0.1:9464\"\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    let settings = resolve_with(
        &[
            REQUIRED,
            &[
                "-X",
                "linger.ms=1",
                "--topic-template",
                "outbox.event.{topic}",
            ],
        ]
        .concat(),
        &[(CONFIG_ENV, path)],
    )
    .expect("valid");
    assert_eq!(settings.kafka.get("compression.type"), Some("zstd"));
    assert_eq!(
        settings.kafka.get("linger.ms"),
        Some("1"),
        "-X beats the file"
    );
    assert_eq!(settings.kafka.get("sasl.password"), Some("hunter2"));
    assert_eq!(
        origin(&settings, "kafka.properties.linger.ms"),
        Origin::Flag("-X")
    );
    let shown: Vec<&str> = settings
        .effective
        .iter()
        .map(|e| e.shown.as_str())
        .collect();
    assert!(
        !shown.contains(&"hunter2"),
        "secrets are redacted: {shown:?}"
    );
    assert_eq!(
        settings.topic_route.route("orders").as_deref(),
        Ok("outbox.event.orders")
    );
    assert_eq!(
        settings.metrics_address,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
}

#[test]
fn database_passwords_never_show() {
    let settings = resolve_with(
        &["--brokers", "k:9092"],
        &[("DATABASE_URL", "postgres://app:s3cret@db:5432/app")],
    )
    .expect("valid");
    let url = settings
        .effective
        .iter()
        .find(|e| e.key == "database.url")
        .expect("url");
    assert!(!url.shown.contains("s3cret"), "{url:?}");
    assert_eq!(settings.database.url, "postgres://app:s3cret@db:5432/app");

    let error = resolve_with(
        &[
            "--brokers",
            "k:9092",
            "--database-url",
            "mysql://app:s3cret@db",
        ],
        &[],
    )
    .expect_err("not postgres")
    .to_string();
    assert!(!error.contains("s3cret"), "{error}");
    assert!(error.contains("--database-url"), "{error}");
}

/// Every invalid value: the message names where it came from, the value and what is allowed.
#[test]
fn every_invalid_value_is_explained() {
    /// Flags, environment, and what the error must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (
            &["--lanes", "100"],
            &[],
            &["--lanes `100`", "power of two from 1 to 1024"],
        ),
        (
            &[],
            &[("OUTBOX_LANES", "0")],
            &["OUTBOX_LANES `0`", "from 1 to 1024"],
        ),
        (
            &["--batch-size", "0"],
            &[],
            &["--batch-size `0`", "from 1 to 100000"],
        ),
        (
            &["--batch-size", "many"],
            &[],
            &["--batch-size `many`", "whole number"],
        ),
        (
            &["--pool-size", "0"],
            &[],
            &["--pool-size `0`", "from 1 to 100"],
        ),
        (
            &["--poll-interval", "soon"],
            &[],
            &["--poll-interval `soon`", "like 500ms"],
        ),
        (&["--poll-interval", "2h"], &[], &["`2h`", "to 1h"]),
        (&["--lease", "500ms"], &[], &["--lease `500ms`", "from 1s"]),
        (&["--retention", "0s"], &[], &["--retention `0s`", "`off`"]),
        (
            &["--shutdown-grace", "x"],
            &[],
            &["--shutdown-grace `x`", "duration"],
        ),
        (
            &["--max-attempts", "0"],
            &[],
            &["--max-attempts `0`", "from 1 to 1000"],
        ),
        (
            &["--initial-backoff", "0s"],
            &[],
            &["--initial-backoff `0s`", "from 1ms"],
        ),
        (
            &["--max-backoff", "1d 1s"],
            &[],
            &["--max-backoff", "to 1day"],
        ),
        (
            &["--initial-backoff", "2m", "--max-backoff", "1m"],
            &[],
            &[
                "retry.initial_backoff `2m` (from --initial-backoff)",
                "retry.max_backoff `1m`",
                "must not exceed",
            ],
        ),
        (&["--schema", "Bad-Name"], &[], &["--schema `Bad-Name`"]),
        (
            &["--outbox-table", "x;drop"],
            &[],
            &["--outbox-table `x;drop`"],
        ),
        (
            &["--connect-timeout", "forever"],
            &[],
            &["--connect-timeout `forever`"],
        ),
        (
            &["--topic-template", "a/{topic}"],
            &[],
            &["--topic-template `a/{topic}`", "`/` cannot be part"],
        ),
        (
            &["--metrics-address", "everywhere"],
            &[],
            &["--metrics-address `everywhere`", "0.0.0.0:9464"],
        ),
        (&["-X", "linger.ms"], &[], &["-X `linger.ms`", "KEY=VALUE"]),
        (&["-X", "bootstrap.servers=x:1"], &[], &["-X", "--brokers"]),
        (
            &["-X", "message.timeout.ms=9000"],
            &[],
            &[
                "kafka.properties.message.timeout.ms",
                "between 1 and 5000 ms",
            ],
        ),
        (
            &["-X", "message.timeout.ms=soon"],
            &[],
            &["`soon`", "milliseconds"],
        ),
    ];
    for (argv, env, says) in cases {
        let error = resolve_with(&[REQUIRED, argv].concat(), env)
            .expect_err(&format!("{argv:?} {env:?} is invalid"))
            .to_string();
        for part in *says {
            assert!(
                error.contains(part),
                "{argv:?} {env:?}: `{error}` lacks `{part}`"
            );
        }
    }
    let error = resolve_with(
        &["--database-url", "postgres://db", "--brokers", "nohost"],
        &[],
    )
    .expect_err("no port")
    .to_string();
    assert!(error.contains("host:port"), "{error}");
}

#[test]
fn invalid_file_values_name_the_file_and_the_key() {
    let file = config_file("[relay]\nlanes = 12\n");
    let path = file.path().to_str().expect("utf-8 path");
    let error = resolve_with(&[REQUIRED, &["--config", path]].concat(), &[])
        .expect_err("not a power of two")
        .to_string();
    assert!(error.contains("relay.lanes `12`"), "{error}");
    assert!(error.contains(path), "{error}");

    let file = config_file("[relay]\nlanez = 12\n");
    let path = file.path().to_str().expect("utf-8 path");
    let error = resolve_with(&[REQUIRED, &["--config", path]].concat(), &[])
        .expect_err("typo")
        .to_string();
    assert!(error.contains("unknown setting `relay.lanez`"), "{error}");

    let error = resolve_with(
        &[REQUIRED, &["--config", "/nonexistent.toml"]].concat(),
        &[],
    )
    .expect_err("missing file")
    .to_string();
    assert!(error.contains("/nonexistent.toml"), "{error}");
}

#[test]
fn required_settings_say_every_way_to_give_them() {
    let error = resolve_with(&["--brokers", "k:9092"], &[])
        .expect_err("no url")
        .to_string();
    for part in ["database.url is required", "--database-url", "DATABASE_URL"] {
        assert!(error.contains(part), "{error}");
    }
    let error = resolve_with(&["--database-url", "postgres://db"], &[])
        .expect_err("no brokers")
        .to_string();
    for part in ["kafka.brokers", "--brokers", "KAFKA_BROKERS"] {
        assert!(error.contains(part), "{error}");
    }
}

#[test]
fn a_password_in_the_url_query_and_a_malformed_secret_property_are_never_shown() {
    let settings = resolve_with(
        &[
            "--database-url",
            "postgres://app@127.0.0.1/db?password=hunter2",
            "--brokers",
            "127.0.0.1:9092",
        ],
        &[],
    )
    .expect("valid");
    let url = settings
        .effective
        .iter()
        .find(|e| e.key == table::DATABASE_URL.spec.key)
        .expect("the URL is shown");
    assert!(!url.shown.contains("hunter2"), "{}", url.shown);
    let error = resolve_with(
        &[
            "--database-url",
            "postgres://app@127.0.0.1/db",
            "--brokers",
            "127.0.0.1:9092",
            "-X",
            "sasl.password:hunter2",
        ],
        &[],
    )
    .expect_err("not KEY=VALUE")
    .to_string();
    assert!(!error.contains("hunter2"), "{error}");
    assert!(error.contains("KEY=VALUE"), "{error}");
}

/// The help text documents each setting's environment variable and file key.
#[test]
fn the_help_names_every_source_of_every_setting() {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let help = command
        .find_subcommand_mut("run")
        .expect("run")
        .render_long_help()
        .to_string();
    for spec in ALL {
        for name in [spec.flag, spec.env, spec.key] {
            assert!(help.contains(name), "`run --help` does not mention {name}");
        }
        if let Some(default) = spec.default {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "`run --help` does not give {}'s default {default}",
                spec.key
            );
        }
    }
}

/// `config check` shows every setting of the table, and the table's defaults are the libraries'.
#[test]
fn every_setting_is_shown_and_the_defaults_are_the_libraries() {
    let settings = resolve_with(REQUIRED, &[]).expect("valid");
    for spec in ALL {
        assert!(
            settings.effective.iter().any(|e| e.key == spec.key),
            "{} is not shown by config check",
            spec.key
        );
    }
    // The engine's and the store's settings, all of them, as the libraries default them.
    assert_eq!(
        format!("{:?}", settings.relay),
        format!("{:?}", outbox_core::RelayConfig::default())
    );
    assert_eq!(
        format!("{:?}", settings.store),
        format!("{:?}", outbox_postgres::PgRelayStoreConfig::default())
    );
}
