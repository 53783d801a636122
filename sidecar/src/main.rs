//! `chipsd`, the chips sidecar. The peer relay arrives with the sidecar issue; today the binary
//! offers what the foundation needs: agent key generation.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use chips_core::sign::KeyPair;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chipsd", version, about = "chips sidecar: peer relay for a chips site")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new agent key file (Ed25519 seed, base64url, mode 0600) and print the agent id.
    Keygen {
        /// Where to write the key; refused if the file exists.
        #[arg(long, default_value = "agent.key")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Keygen { out } => {
            let kp = KeyPair::generate();
            let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&out);
            let result = file.and_then(|mut f| {
                writeln!(f, "{}", chips_core::codec::b64url_encode(&kp.seed()))
            });
            match result {
                Ok(()) => {
                    println!("{}", kp.public_b64());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chipsd keygen: cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
