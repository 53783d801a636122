//! Clears an obligation network read from a CSV file `debtor,creditor,amount` (a header line
//! is skipped) and prints one line of figures:
//!
//! ```text
//! cargo run --release -p chips-core --example clear -- network.csv [repeats]
//! file=network.csv nodes=28975 obligations=100471 total_debt=... cleared=... solve_ms=... decompose_ms=... circles=...
//! ```
//!
//! Every obligation becomes an edge debtor -> creditor with capacity `amount` and cost -1, so the
//! optimum clears the most debt. With `repeats` > 1 the solve is timed that many times and the
//! median is printed.

use std::time::Instant;

use chips_core::clearing::{decompose, solve, Edge};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: clear FILE.csv [repeats]")?;
    let repeats: usize = args
        .next()
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);

    let mut ids = std::collections::HashMap::<String, u32>::new();
    let mut edges = Vec::new();
    let mut total: i128 = 0;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(&path)?;
    for (line, record) in reader.records().enumerate() {
        let record = record?;
        let field = |i: usize| {
            record
                .get(i)
                .ok_or(format!("line {}: 3 fields expected", line + 2))
        };
        let mut node = |name: &str| {
            let next = ids.len() as u32;
            *ids.entry(name.to_string()).or_insert(next)
        };
        let from = node(field(0)?);
        let to = node(field(1)?);
        let cap: i64 = field(2)?
            .trim()
            .parse()
            .map_err(|e| format!("line {}: amount: {e}", line + 2))?;
        if from == to || cap <= 0 {
            continue; // a debt to oneself, or nothing owed, lies on no circle
        }
        total += i128::from(cap);
        edges.push(Edge {
            from,
            to,
            cap,
            cost: -1,
        });
    }
    let n = ids.len();

    let mut times = Vec::new();
    let mut result = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let c = solve(n, &edges)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        result = Some(c);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let c = result.expect("at least one run");
    let t = Instant::now();
    let circles = decompose(n, &edges, &c.flow)?;
    let decompose_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "file={path} nodes={n} obligations={} total_debt={total} cleared={} solve_ms={:.1} decompose_ms={decompose_ms:.1} circles={} touched={}",
        edges.len(),
        c.cleared,
        times[times.len() / 2],
        circles.len(),
        c.flow.iter().filter(|&&f| f > 0).count()
    );
    Ok(())
}
