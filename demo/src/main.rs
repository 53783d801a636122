//! The main job: a chips network you can watch. It creates `--sites` sites on a private
//! cluster (each its own database and its own chipsd on loopback, peer traffic over Noise, the
//! user gateway on), lets `--users` people per site join and open tallies with vendors on their
//! own and other sites through tickets and the real protocol, then runs an agent-based trading
//! simulation for `--duration` seconds while automatic clearing runs: payments on tallies,
//! refunds, and payments to CHIP addresses on other sites (distributed linear lifts). At the
//! end it quiesces the network, runs a last clearing pass measured against the optimum the
//! solver reports for the whole network, checks every invariant it can (chipsd check), prints
//! a summary and writes an HTML report.

mod report;
mod sim;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;

#[derive(Parser, Clone)]
#[command(about = "Run a chips network on a private cluster, trade, clear, and report")]
pub struct Args {
    /// Superuser connection to the cluster (without dbname).
    #[arg(
        long,
        env = "CHIPS_DEMO_DSN",
        default_value = "host=127.0.0.1 port=54320 user=postgres"
    )]
    pub dsn: String,
    /// Prefix of the demo's database names (re-created on every run).
    #[arg(long, default_value = "chips_demo")]
    pub prefix: String,
    /// The chipsd binary (default: the one built next to this program).
    #[arg(long, env = "CHIPSD_BIN")]
    pub chipsd: Option<std::path::PathBuf>,
    /// Number of sites (each its own database and chipsd).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=12))]
    pub sites: u32,
    /// People per site.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..=200))]
    pub users: u32,
    /// Vendors each person buys from on credit (one tally each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub vendors: u32,
    /// Share of those vendors picked on another site (0 to 1).
    #[arg(long, default_value_t = 0.35)]
    pub cross: f64,
    /// Seconds of trading.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Trading agents acting at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub agents: u32,
    /// Automatic clearing runs on every site this often (seconds).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub clear_every: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the HTML report goes (a directory, created).
    #[arg(long, default_value = "target/demo-report")]
    pub report: std::path::PathBuf,
    /// No progress bar (for logs and tests).
    #[arg(long)]
    pub quiet: bool,
    /// The log filter of every chipsd (CHIPSD_LOG; their logs go to this program's stderr).
    #[arg(long, default_value = "error")]
    pub chipsd_log: String,
    /// For every payment to a CHIP address that failed though the network could have carried
    /// it, print the routes the oracle's flow took and what each site's route queries found.
    #[arg(long)]
    pub explain: bool,
    /// After the summary, keep the sites running this many seconds (or until Ctrl-C), to look
    /// around in the admin views.
    #[arg(long, default_value_t = 0)]
    pub linger: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.cross) {
        eprintln!("--cross is a share between 0 and 1");
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping the agents and the sidecars");
            flag.store(true, Ordering::SeqCst);
        }
    });
    match sim::run(args, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chips demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
