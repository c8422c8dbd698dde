//! The spread of each target's value over several runs (their JSON files): the runs that measured
//! it, the lowest, median and highest value, and how many runs met it.

use std::path::PathBuf;

use anyhow::Context;

use crate::report::{Report, Target};

/// One target over the runs.
struct Row {
    name: String,
    goal: String,
    values: Vec<f64>,
    met: usize,
}

/// Reads the runs in `files` and renders each target's spread as a Markdown table.
///
/// # Errors
/// When a file cannot be read or is not the JSON of a run.
pub fn render(files: &[PathBuf]) -> anyhow::Result<String> {
    let mut reports = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not the JSON of a run", file.display()))?;
        // The targets as this version states them (an older run's file may lack some).
        report.check_targets();
        reports.push(report.targets);
    }
    Ok(table(&reports, files))
}

/// The table of the targets of each run in `runs`, the runs' files being `files`.
fn table(runs: &[Vec<Target>], files: &[PathBuf]) -> String {
    let mut rows: Vec<Row> = Vec::new();
    for targets in runs {
        for target in targets {
            let Some(value) = target.value else { continue };
            let index = match rows.iter().position(|row| row.name == target.name) {
                Some(index) => index,
                None => {
                    rows.push(Row {
                        name: target.name.clone(),
                        goal: target.goal.clone(),
                        values: Vec::new(),
                        met: 0,
                    });
                    rows.len() - 1
                }
            };
            let row = &mut rows[index];
            row.values.push(value);
            row.met += usize::from(target.met == Some(true));
        }
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    let mut md = format!(
        "## Spread over {} runs\n\nRuns: {}.\n\n| target | goal | runs | lowest | median | highest | met |\n|---|---|---|---|---|---|---|\n",
        runs.len(),
        names.join(", ")
    );
    for row in rows {
        let mut values = row.values.clone();
        values.sort_by(f64::total_cmp);
        let median = if values.len() % 2 == 1 {
            values[values.len() / 2]
        } else {
            (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} of {} |\n",
            row.name,
            row.goal,
            values.len(),
            number(values[0]),
            number(median),
            number(values[values.len() - 1]),
            row.met,
            values.len()
        ));
    }
    md
}

/// Three significant digits.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Bound;

    fn run(values: &[(&str, Option<f64>)]) -> Vec<Target> {
        values
            .iter()
            .map(|(name, value)| Bound::AtLeast(2.0).target(name, *value, ""))
            .collect()
    }

    #[test]
    fn each_target_shows_its_lowest_median_and_highest_over_the_runs_that_measured_it() {
        let runs = [
            run(&[("drain", Some(3.0)), ("p99", None)]),
            run(&[("drain", Some(1.5)), ("p99", Some(0.5))]),
            run(&[("drain", Some(2.5))]),
        ];
        let md = table(&runs, &[]);
        assert!(
            md.contains("| drain | ≥ 2 | 3 | 1.50 | 2.50 | 3.00 | 2 of 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| p99 | ≥ 2 | 1 | 0.500 | 0.500 | 0.500 | 0 of 1 |"),
            "{md}"
        );
    }
}
