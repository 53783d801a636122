//! Writes a synthetic obligation network as CSV `debtor,creditor,amount` to stdout: `users`
//! firms, `tallies` obligations, heavy-tailed degrees (both ends drawn with probability
//! proportional to (rank + 1)^-0.8, a Zipf-like law: a few hubs, many small firms), amounts
//! log-uniform between 1 and 10^9. Deterministic for a given seed.
//!
//! ```text
//! cargo run --release -p chips-core --example gen_network -- 200000 1000000 42 > big.csv
//! ```

use std::io::{BufWriter, Write};

use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let users: usize = args
        .next()
        .ok_or("usage: gen_network USERS TALLIES [SEED]")?
        .parse()?;
    let tallies: usize = args
        .next()
        .ok_or("usage: gen_network USERS TALLIES [SEED]")?
        .parse()?;
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(42);
    if users < 2 {
        return Err("at least 2 users".into());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Cumulative Zipf-like weights for sampling by binary search.
    let mut cum = Vec::with_capacity(users);
    let mut total = 0.0f64;
    for r in 0..users {
        total += ((r + 1) as f64).powf(-0.8);
        cum.push(total);
    }
    let pick = |rng: &mut rand::rngs::StdRng| -> usize {
        let x = rng.gen::<f64>() * total;
        cum.partition_point(|&c| c < x).min(users - 1)
    };
    // Shuffle ranks to ids so hubs are not simply the small numbers.
    let mut id: Vec<usize> = (0..users).collect();
    for i in (1..users).rev() {
        id.swap(i, rng.gen_range(0..=i));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "debtor,creditor,amount")?;
    let mut written = 0;
    while written < tallies {
        let (a, b) = (pick(&mut rng), pick(&mut rng));
        if a == b {
            continue;
        }
        let amount = 10f64.powf(rng.gen::<f64>() * 9.0) as i64;
        writeln!(out, "{},{},{}", id[a], id[b], amount.max(1))?;
        written += 1;
    }
    Ok(())
}
