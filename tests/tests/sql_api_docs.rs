//! The psql examples in docs/sql-api.md are checked against the golden SQL tests
//! (test/sql/*.sql, whose output pg_regress compares with test/expected/*.out in
//! `bash scripts/regress.sh`, part of the test command): an example (after psql's prompt, its
//! statement and the output shown under it) must appear as it is in an expected output file. So an example in a
//! checked section cannot drift from what the database prints.
//!
//! Examples that shorten their output (`…`) or use psql variables from the page's running
//! session (`:'t'`) are illustrations; the others are checked in the sections listed in
//! `CHECKED`, and counted in the rest (the count is printed: the golden files grow section by
//! section).

use std::collections::BTreeMap;
use std::path::Path;

/// Sections of docs/sql-api.md whose every checkable example must be in a golden file.
const CHECKED: &[&str] = &["Administration", "Helpers anyone may call"];

struct Example {
    section: String,
    line: usize,
    statement: Vec<String>,
    output: Vec<String>,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut in_block = false;
    let mut current: Option<Example> = None;
    let mut in_statement = false;
    let mut width = 0;
    for (i, line) in doc.lines().enumerate() {
        if !in_block {
            if let Some(h) = line.strip_prefix("## ") {
                section = h.trim().to_string();
            }
            if line.starts_with("```") {
                in_block = true;
            }
            continue;
        }
        if line.starts_with("```") {
            in_block = false;
            out.extend(current.take());
            continue;
        }
        if let Some((prompt, stmt)) = prompt(line) {
            out.extend(current.take());
            width = prompt;
            in_statement = !stmt.trim_end().ends_with(';');
            current = Some(Example {
                section: section.clone(),
                line: i + 1,
                statement: vec![stmt.trim_end().to_string()],
                output: Vec::new(),
            });
            continue;
        }
        if let Some(e) = current.as_mut() {
            if in_statement {
                // a statement's continuation lines are aligned under the text after the prompt
                let l = line
                    .get(width..)
                    .filter(|_| line[..width].trim().is_empty())
                    .unwrap_or(line);
                e.statement.push(l.trim_end().to_string());
                in_statement = !line.trim_end().ends_with(';');
            } else {
                e.output.push(line.trim_end().to_string());
            }
        }
    }
    for e in &mut out {
        while e.output.last().is_some_and(|l| l.is_empty()) {
            e.output.pop();
        }
    }
    out
}

/// A psql prompt (`=# `, `site1=# `, `regress_ann=> `: database or role, `=`, `#` or `>`) at the
/// start of the line: its width and the statement after it.
fn prompt(line: &str) -> Option<(usize, &str)> {
    let at = line.find("=# ").or_else(|| line.find("=> "))?;
    let name = &line[..at];
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then(|| (at + 3, &line[at + 3..]))
}

fn illustration(e: &Example) -> bool {
    e.statement
        .iter()
        .chain(&e.output)
        .any(|l| l.contains('…') || l.contains(":'") || l.contains(":\""))
}

/// Whether `needle` (lines) appears as consecutive lines of `hay`.
fn contains(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_sql_api_examples_are_what_the_golden_tests_print() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/sql-api.md")).unwrap();
    let mut golden: Vec<String> = Vec::new();
    for f in std::fs::read_dir(root.join("test/expected")).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|x| x == "out") {
            golden.extend(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|l| l.trim_end().to_string()),
            );
            golden.push(String::new());
        }
    }
    let all = examples(&doc);
    assert!(
        all.len() > 100,
        "the page's examples were found ({})",
        all.len()
    );
    let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut missing = Vec::new();
    for e in &all {
        let c = counts.entry(e.section.as_str()).or_default();
        if illustration(e) {
            c.2 += 1;
            continue;
        }
        let text: Vec<String> = e.statement.iter().chain(&e.output).cloned().collect();
        if contains(&golden, &text) {
            c.0 += 1;
        } else {
            c.1 += 1;
            if CHECKED.contains(&e.section.as_str()) {
                missing.push(format!(
                    "docs/sql-api.md:{} ({}):\n{}",
                    e.line,
                    e.section,
                    text.join("\n")
                ));
            }
        }
    }
    for (section, (found, not, shown)) in &counts {
        println!(
            "{section}: {found} examples in golden files, {not} not (yet), {shown} illustrations"
        );
    }
    for s in CHECKED {
        assert!(
            counts.contains_key(s),
            "no section \"{s}\" in docs/sql-api.md"
        );
    }
    assert!(
        missing.is_empty(),
        "examples of checked sections that no golden file prints (add them to test/sql/, or \
         copy what test/expected/ says into the page):\n\n{}",
        missing.join("\n\n")
    );
}

#[test]
fn examples_are_read_as_statement_and_output() {
    let doc = "## S\n\n```\n=# SELECT 1\n          + 1;\n ?column?\n----------\n        2\n(1 row)\n\nsite1=> SELECT x;\nERROR:  no\n```\n";
    let e = examples(doc);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].statement, ["SELECT 1", "       + 1;"]);
    assert_eq!(e[0].output.len(), 4);
    assert_eq!(e[1].output, ["ERROR:  no"]);
    assert!(contains(
        &["a".into(), "SELECT x;".into(), "ERROR:  no".into()],
        &["SELECT x;".into(), "ERROR:  no".into()]
    ));
}
