//! Fuzz targets of every parser of outside input: the relay's config file, its `-X` producer
//! properties and environment, the text of each setting, outbox rows written by plain SQL, Kafka
//! records from any producer, and WAL envelopes from writers in any language.
//!
//! Each target takes the fuzzer's bytes, runs the libraries' own decoding code through their
//! `fuzzing` features, and checks what must hold with `assert!`: a failed assertion is a finding,
//! as is any other panic. `libfuzzer/` runs them under libFuzzer (`scripts/fuzz.sh`);
//! `tests/corpora.rs` replays every input under `corpus/<target>/`, so a regression fails the
//! tests.
//!
//! | target | input | holds |
//! | --- | --- | --- |
//! | [`config_file`] | TOML text | the file and `run`'s settings resolve or are refused; a password property's value is never shown |
//! | [`producer_properties`] | `-X` arguments, environment variables and file properties, NUL-separated | properties pass through as given or are refused; a password property's value is never shown |
//! | [`setting_values`] | a row's index, then its text | each row's parser accepts or refuses, naming the row; a database password is never shown |
//! | [`stored_row`] | the columns of an outbox row | a row becomes a message only if the message is valid |
//! | [`consumed_record`] | a Kafka record, or a message to publish | records decode as the CloudEvents binding says; a published message's record decodes to it |
//! | [`wal_envelope`] | envelope bytes | what decodes encodes to bytes that decode to the same message |

mod envelope;
pub mod input;
mod record;
mod row;
mod secrets;
mod settings;

pub use envelope::wal_envelope;
pub use record::{NAMES as HEADER_NAMES, consumed_record};
pub use row::stored_row;
pub use settings::{BASE_FILE, config_file, producer_properties, setting_values};

/// What a target made of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// The code under test accepted it (a message, a record, settings).
    Accepted,
    /// The code under test refused it, with an error.
    Refused,
}

impl Outcome {
    fn of<T, E>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Self::Accepted,
            Err(_) => Self::Refused,
        }
    }
}

/// A fuzz target.
pub type Target = fn(&[u8]) -> Outcome;

/// Every target by name: the name of its `libfuzzer/fuzz_targets/` file and of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("config_file", config_file),
    ("producer_properties", producer_properties),
    ("setting_values", setting_values),
    ("stored_row", stored_row),
    ("consumed_record", consumed_record),
    ("wal_envelope", wal_envelope),
];
