//! What the settings look like to a person: the effective values `config check` prints, and the
//! table of every setting in `docs/operations.md` (`outbox-relay config table` prints it).

use std::fmt::Write as _;

use super::layers::Effective;
use super::scope::SCOPES;
use super::table::{ALL, PROPERTY_FLAG, Spec};

/// One line per value: the key, the value (secrets redacted) and where it came from.
pub fn effective_lines(effective: &[Effective]) -> String {
    let width = effective
        .iter()
        .map(|effective| effective.key.len())
        .max()
        .unwrap_or_default();
    let mut out = String::new();
    for effective in effective {
        let _ = writeln!(
            out,
            "{:width$}  {}  ({})",
            effective.key, effective.shown, effective.origin
        );
    }
    out
}

/// The Markdown table of every setting, as `docs/operations.md` holds it.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| file key | flag | environment | default | allowed | used by | what it sets |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for spec in ALL {
        let default = spec
            .default
            .map_or_else(|| "required".to_owned(), |default| format!("`{default}`"));
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | {default} | {} | {} | {} |",
            spec.key,
            flags(spec),
            spec.env,
            cell(&spec.allowed.short()),
            used_by(spec),
            cell(spec.help),
        );
    }
    let _ = writeln!(
        out,
        "| `[kafka.properties]` | `{PROPERTY_FLAG} key=value` | — | see below | librdkafka producer properties | run | passed through to the producer |"
    );
    out
}

/// `spec`'s flag, and its other names in the scopes that rename it.
fn flags(spec: &Spec) -> String {
    let mut flags = format!("`{}`", spec.flag);
    for scope in SCOPES {
        let flag = scope.flag(spec);
        if scope.takes(spec) && flag != spec.flag {
            let _ = write!(flags, " (`{flag}` in `{}`)", scope.commands);
        }
    }
    flags
}

/// The subcommands that take `spec`.
fn used_by(spec: &Spec) -> String {
    let commands: Vec<&str> = SCOPES
        .iter()
        .filter(|scope| scope.takes(spec))
        .map(|scope| scope.commands)
        .collect();
    if commands.len() == SCOPES.len() {
        "all".to_owned()
    } else {
        commands.join(", ")
    }
}

/// `text` as a table cell: `|` escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings table of `docs/operations.md`: from its header row to the first line that is
    /// not a table row.
    fn docs_table(docs: &str) -> Option<String> {
        let start = docs.find("| file key |")?;
        let table: String = docs[start..]
            .lines()
            .take_while(|line| line.starts_with('|'))
            .map(|line| format!("{line}\n"))
            .collect();
        Some(table)
    }

    #[test]
    fn the_docs_table_is_the_one_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
        let docs = std::fs::read_to_string(path).expect("docs/operations.md is readable");
        let generated = markdown_table();
        let found = docs_table(&docs).unwrap_or_default();
        assert!(
            found == generated,
            "the settings table in docs/operations.md differs from the code's; replace it with \
             this (also printed by `outbox-relay config table`):\n\n{generated}"
        );
    }

    #[test]
    fn a_docs_table_that_disagrees_is_noticed() {
        let generated = markdown_table();
        let edited = generated.replacen("`500`", "`400`", 1);
        assert_ne!(
            docs_table(&format!("intro\n\n{edited}\nmore")),
            Some(generated.clone())
        );
        assert_eq!(
            docs_table(&format!("intro\n\n{generated}\nmore")),
            Some(generated)
        );
    }

    #[test]
    fn the_table_has_a_row_per_setting_and_names_renamed_flags() {
        let table = markdown_table();
        for spec in ALL {
            assert!(
                table.contains(&format!("| `{}` |", spec.key)),
                "{}",
                spec.key
            );
        }
        assert!(
            table.contains("`--wal-slot` (`--slot` in `wal`)"),
            "{table}"
        );
    }
}
