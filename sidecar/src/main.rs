//! `chipsd`, the chips sidecar. The peer relay arrives with the sidecar issue; today the binary
//! offers what the foundation needs: key generation, and signing a JSON document with a key file
//! (what a client does before `chips.tally_offer` / `chips.tally_accept`).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use chips_core::sign::KeyPair;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chipsd",
    version,
    about = "chips sidecar: peer relay for a chips site"
)]
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
    /// Sign the canonical JSON of the document read from stdin; prints the base64url signature.
    Sign {
        /// A key file written by `chipsd keygen`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the public key (base64url) of a key file.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
    },
}

fn read_key(path: &PathBuf) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed = chips_core::codec::b64url_decode_array::<32>(text.trim(), "key file")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(KeyPair::from_seed(&seed))
}

fn sign_stdin(key: &PathBuf) -> Result<String, String> {
    let kp = read_key(key)?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let doc: serde_json::Value =
        serde_json::from_str(&input).map_err(|e| format!("stdin is not JSON: {e}"))?;
    kp.sign_json(&doc).map_err(|e| e.to_string())
}

fn print_or_fail(r: Result<String, String>, what: &str) -> ExitCode {
    match r {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chipsd {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sign { key } => print_or_fail(sign_stdin(&key), "sign"),
        Command::Pubkey { key } => print_or_fail(read_key(&key).map(|k| k.public_b64()), "pubkey"),
        Command::Keygen { out } => {
            let kp = KeyPair::generate();
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out);
            let result = file
                .and_then(|mut f| writeln!(f, "{}", chips_core::codec::b64url_encode(&kp.seed())));
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
