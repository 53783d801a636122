//! Writes a synthetic obligation network as CSV `debtor,creditor,amount` to stdout. Deterministic
//! for a given seed.
//!
//! ```text
//! cargo run --release -p chips-core --example gen_network -- 200000 1000000 42 > big.csv
//! cargo run --release -p chips-core --example gen_network -- --sardex 80000 400000 42 > dense.csv
//! ```
//!
//! Default mode: `users` firms, `tallies` obligations, heavy-tailed degrees (both ends drawn with
//! probability proportional to (rank + 1)^-0.8, a Zipf-like law: a few hubs, many small firms),
//! amounts log-uniform between 1 and 10^9.
//!
//! `--sardex` mode: a dense network of the kind a regional mutual-credit circuit clears (Sardex
//! and its sister circuits): firms in regional clusters of about 400, sizes heavy-tailed (Pareto,
//! alpha 1.3), most trade inside the region (85 %), trading partners and amounts drawn by size.
//! Within a region trade goes both ways, which is what makes debt clearable; a share of it
//! follows a supply chain (from firms lower in the chain to firms higher up: raw goods owe
//! nothing upstream), which no circle can clear. With the default `--chain 0.65` about 35 to 45 %
//! of the debt is clearable (the optimum; `clear` prints it).

use std::io::{BufWriter, Write};

use rand::{Rng, SeedableRng};

const USAGE: &str = "usage: gen_network [--sardex [--chain SHARE]] USERS TALLIES [SEED]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sardex = false;
    let mut chain = 0.65f64;
    let mut rest = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sardex" => sardex = true,
            "--chain" => {
                chain = args.next().ok_or(USAGE)?.parse()?;
                if !(0.0..=1.0).contains(&chain) {
                    return Err("--chain is a share between 0 and 1".into());
                }
            }
            _ => rest.push(a),
        }
    }
    let mut rest = rest.into_iter();
    let users: usize = rest.next().ok_or(USAGE)?.parse()?;
    let tallies: usize = rest.next().ok_or(USAGE)?.parse()?;
    let seed: u64 = rest.next().map(|s| s.parse()).transpose()?.unwrap_or(42);
    if users < 2 {
        return Err("at least 2 users".into());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "debtor,creditor,amount")?;
    if sardex {
        clustered(&mut rng, users, tallies, chain, &mut out)?;
    } else {
        zipf(&mut rng, users, tallies, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// Cumulative weights, for drawing an index with probability proportional to its weight.
struct Draw {
    cum: Vec<f64>,
}

impl Draw {
    fn new(weights: impl Iterator<Item = f64>) -> Draw {
        let mut total = 0.0;
        Draw {
            cum: weights
                .map(|w| {
                    total += w;
                    total
                })
                .collect(),
        }
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        let x = rng.gen::<f64>() * self.cum.last().copied().unwrap_or(0.0);
        self.cum.partition_point(|&c| c < x).min(self.cum.len() - 1)
    }
}

fn zipf(
    rng: &mut rand::rngs::StdRng,
    users: usize,
    tallies: usize,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let draw = Draw::new((0..users).map(|r| ((r + 1) as f64).powf(-0.8)));
    // Shuffle ranks to ids so hubs are not simply the small numbers.
    let mut id: Vec<usize> = (0..users).collect();
    for i in (1..users).rev() {
        id.swap(i, rng.gen_range(0..=i));
    }
    let mut written = 0;
    while written < tallies {
        let (a, b) = (draw.pick(rng), draw.pick(rng));
        if a == b {
            continue;
        }
        let amount = 10f64.powf(rng.gen::<f64>() * 9.0) as i64;
        writeln!(out, "{},{},{}", id[a], id[b], amount.max(1))?;
        written += 1;
    }
    Ok(())
}

fn clustered(
    rng: &mut rand::rngs::StdRng,
    users: usize,
    tallies: usize,
    chain: f64,
    out: &mut impl Write,
) -> std::io::Result<()> {
    const REGION_SIZE: usize = 400;
    const LOCAL: f64 = 0.85;
    let regions = users.div_ceil(REGION_SIZE).max(1);
    // Firm i: region i % regions, a Pareto size, a place in the supply chain.
    let size: Vec<f64> = (0..users)
        .map(|_| (1.0 - rng.gen::<f64>()).powf(-1.0 / 1.3))
        .collect();
    let tier: Vec<f64> = (0..users).map(|_| rng.gen::<f64>()).collect();
    let all = Draw::new(size.iter().copied());
    let members: Vec<Vec<usize>> = (0..regions)
        .map(|r| (r..users).step_by(regions).collect())
        .collect();
    let local: Vec<Draw> = members
        .iter()
        .map(|m| Draw::new(m.iter().map(|&i| size[i])))
        .collect();
    let mut written = 0;
    while written < tallies {
        let a = all.pick(rng);
        let b = if rng.gen::<f64>() < LOCAL {
            let r = a % regions;
            members[r][local[r].pick(rng)]
        } else {
            all.pick(rng)
        };
        if a == b {
            continue;
        }
        // Supply-chain trade: the firm lower in the chain is owed (it sold upstream); other
        // trade goes either way.
        let (debtor, creditor) = if rng.gen::<f64>() < chain {
            if tier[a] > tier[b] {
                (a, b)
            } else {
                (b, a)
            }
        } else {
            (a, b)
        };
        // Amounts grow with the smaller firm's size, log-normal around it (euro cents).
        let scale = size[a].min(size[b]) * 50_000.0;
        let normal: f64 = (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0;
        let amount = (scale * (normal * 1.2).exp()).clamp(100.0, 1e12) as i64;
        writeln!(out, "{debtor},{creditor},{amount}")?;
        written += 1;
    }
    Ok(())
}
