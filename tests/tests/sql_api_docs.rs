//! The psql examples in docs/sql-api.md are checked against the golden SQL tests
//! (test/sql/*.sql, whose output pg_regress compares with test/expected/*.out in
//! `bash scripts/regress.sh`, part of the test command): an example (after psql's prompt, its
//! statement and the output shown under it) must appear as it is in an expected output file. So an example in a
//! checked section cannot drift from what the database prints.
//!
//! Values made at random (uuids, dates, tokens, keys, digests, signatures) are compared by
//! their shape only: the page shows those of one session, the golden files print those of each
//! run. psql variables (`:'t'`) are echoed by pg_regress as written, so an example may use the
//! golden file's. Examples that shorten their output (`…`) are illustrations (counted apart,
//! per section); every other example is checked.

use std::collections::BTreeMap;
use std::path::Path;

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
            in_statement = !ends_statement(stmt);
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
                in_statement = !ends_statement(line);
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

/// Whether a statement's line ends it: a `;` at its end, before any `-- comment`.
fn ends_statement(line: &str) -> bool {
    let code = match line.find(" --") {
        Some(at) if !line[..at].contains('\'') || line[..at].matches('\'').count() % 2 == 0 => {
            &line[..at]
        }
        _ => line,
    };
    code.trim_end().ends_with(';')
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
    // (a psql meta-command such as `\set sig `chipsd sign …`` shows what a person runs
    // outside the database; the golden files do the same with SQL)
    e.statement.first().is_some_and(|l| l.starts_with('\\'))
        || e.statement.iter().chain(&e.output).any(|l| l.contains('…'))
}

/// A line with every value made at random replaced by a placeholder of the same length (so
/// psql's column widths still compare): uuids, document dates, and base64url runs of the
/// lengths of tokens (32), keys, agents and digests (43) and signatures (86), not psql's rules
/// of dashes under a header. The golden files
/// are written so already (scripts/regress-shape.sh, the same rule), so that they print the
/// same on every run.
fn shape(line: &str) -> String {
    use std::sync::OnceLock;
    static PATTERNS: OnceLock<[(regex::Regex, char); 3]> = OnceLock::new();
    let [uuid, date, b64] = PATTERNS.get_or_init(|| {
        [
            (
                regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
                    .unwrap(),
                'U',
            ),
            (
                regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").unwrap(),
                'D',
            ),
            (regex::Regex::new(r"[A-Za-z0-9_-]+").unwrap(), 'B'),
        ]
    });
    let fill = |m: &regex::Match, c: char| c.to_string().repeat(m.as_str().len());
    let line = uuid
        .0
        .replace_all(line, |c: &regex::Captures| fill(&c.get(0).unwrap(), uuid.1));
    let line = date.0.replace_all(&line, |c: &regex::Captures| {
        fill(&c.get(0).unwrap(), date.1)
    });
    b64.0
        .replace_all(&line, |c: &regex::Captures| {
            let m = c.get(0).unwrap();
            let word = m.as_str();
            if [32, 43, 86].contains(&word.len()) && word.chars().any(|c| c.is_ascii_alphanumeric())
            {
                fill(&m, b64.1)
            } else {
                m.as_str().to_string()
            }
        })
        .into_owned()
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
                    .map(|l| shape(l.trim_end())),
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
        let shaped: Vec<String> = text.iter().map(|l| shape(l)).collect();
        if contains(&golden, &shaped) {
            c.0 += 1;
        } else {
            c.1 += 1;
            missing.push(format!(
                "docs/sql-api.md:{} ({}):\n{}",
                e.line,
                e.section,
                text.join("\n")
            ));
        }
    }
    for (section, (found, not, shown)) in &counts {
        println!(
            "{section}: {found} examples in golden files, {not} not (yet), {shown} illustrations"
        );
    }
    for s in ["Administration", "Users: chits", "Helpers anyone may call"] {
        assert!(
            counts.contains_key(s),
            "no section \"{s}\" in docs/sql-api.md"
        );
    }
    assert!(
        missing.is_empty(),
        "examples that no golden file prints (add them to test/sql/, or copy what \
         test/expected/ says into the page):\n\n{}",
        missing.join("\n\n")
    );
}

/// Every function and view the page documents (its `###` headings) is called by a golden SQL
/// test or an isolation spec.
#[test]
fn every_documented_function_has_a_golden_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/sql-api.md")).unwrap();
    let mut tests = String::new();
    for dir in ["test/sql", "test/specs"] {
        for f in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = f.unwrap().path();
            if path.is_file() {
                tests.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut names = Vec::new();
    for heading in doc.lines().filter_map(|l| l.strip_prefix("### ")) {
        for name in heading.trim_start_matches("View ").split(", ") {
            if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                names.push(name.to_string());
            }
        }
    }
    assert!(
        names.len() > 80,
        "the page's functions were found ({})",
        names.len()
    );
    let untested: Vec<&String> = names
        .iter()
        .filter(|n| {
            !tests.contains(&format!("chips.{n}(")) && !tests.contains(&format!("chips.{n} "))
        })
        .collect();
    assert!(
        untested.is_empty(),
        "documented but called by no golden test (test/sql/, test/specs/): {untested:?}"
    );
}

#[test]
fn random_values_compare_by_shape_only() {
    let a = "{\"token\": \"PD7ecp7555d2JwO3SfsrtqVnS_iwjeQ2\", \"expires\": \"2026-11-23T05:22:25.788Z\"} 37d38db4-ba2b-416d-b176-627549e5da8d";
    let b = "{\"token\": \"luwuf6RymYzdUOo_ArpG8igs0Ut-DUFs\", \"expires\": \"2026-12-07T07:00:00.001Z\"} 00000000-0000-4000-8000-000000000001";
    assert_eq!(shape(a), shape(b));
    assert_eq!(shape(a).len(), a.len());
    // what is not random still has to be equal
    assert_ne!(shape("limit 50000"), shape("limit 5000"));
    assert_ne!(shape("p1000 ann"), shape("p1001 ann"));
    let rule = "-".repeat(86);
    assert_eq!(shape(&rule), rule);
}

#[test]
fn examples_are_read_as_statement_and_output() {
    let doc = "## S\n\n```\n=# SELECT 1\n          + 1;\n ?column?\n----------\n        2\n(1 row)\n\nsite1=> SELECT x;\nERROR:  no\n```\n";
    let e = examples(doc);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].statement, ["SELECT 1", "       + 1;"]);
    assert_eq!(e[0].output.len(), 4);
    assert_eq!(e[1].output, ["ERROR:  no"]);
    let e = examples("## S\n\n```\n=> SELECT 1;   -- one\n ?column?\n```\n");
    assert_eq!(e[0].statement, ["SELECT 1;   -- one"]);
    assert_eq!(e[0].output, [" ?column?"]);
    assert!(contains(
        &["a".into(), "SELECT x;".into(), "ERROR:  no".into()],
        &["SELECT x;".into(), "ERROR:  no".into()]
    ));
}
