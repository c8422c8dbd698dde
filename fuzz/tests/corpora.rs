//! Replays every committed fuzz input, so that an input that once found a bug keeps failing the
//! tests until it is fixed, and checks that each target has a corpus and a libFuzzer target.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use outbox_fuzz::{Outcome, TARGETS};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `corpus/<target>/`, sorted; fails when the folder is missing or empty.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = root().join("corpus").join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|error| {
        panic!(
            "target {target} has no corpus: cannot read {}: {error}",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "target {target} has an empty corpus: {} holds no file",
        dir.display()
    );
    files
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| {
            payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
        })
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[test]
fn every_corpus_input_replays_without_a_finding() {
    let mut findings = Vec::new();
    for (name, target) in TARGETS {
        let (mut accepted, mut refused) = (0, 0);
        for path in corpus(name) {
            let data = match fs::read(&path) {
                Ok(data) => data,
                // A fuzzer running on the corpus meanwhile replaced it with a smaller input.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => panic!("cannot read {}: {error}", path.display()),
            };
            match catch_unwind(AssertUnwindSafe(|| target(&data))) {
                Ok(Outcome::Accepted) => accepted += 1,
                Ok(Outcome::Refused) => refused += 1,
                Err(payload) => {
                    findings.push(format!("{}: {}", path.display(), panic_text(&*payload)));
                }
            }
        }
        // A corpus that never gets past the first refusal, or never reaches one, tests half a parser.
        assert!(
            accepted > 0 && refused > 0,
            "corpus of {name}: {accepted} accepted and {refused} refused inputs; it needs both"
        );
    }
    assert!(
        findings.is_empty(),
        "{} corpus inputs fail:\n{}",
        findings.len(),
        findings.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus_and_a_libfuzzer_target() {
    let names: BTreeSet<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    let stems = |dir: PathBuf, want_dirs: bool| -> BTreeSet<String> {
        fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
            .map(|entry| entry.expect("a readable entry").path())
            .filter(|path| path.is_dir() == want_dirs)
            .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
            .collect()
    };
    assert_eq!(
        stems(root().join("libfuzzer").join("fuzz_targets"), false),
        names,
        "libfuzzer/fuzz_targets/*.rs and outbox_fuzz::TARGETS differ"
    );
    assert_eq!(
        stems(root().join("corpus"), true),
        names,
        "the folders of corpus/ and outbox_fuzz::TARGETS differ"
    );
}
