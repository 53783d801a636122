//! `chipsd keygen` writes a private key file only its owner can read and prints the agent id.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn keygen_writes_a_0600_key_and_refuses_to_overwrite() {
    let dir = chips_tests::scratch_dir("keygen");
    let key = dir.join("agent.key");
    let out = Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let agent = String::from_utf8(out.stdout).unwrap().trim().to_string();
    chips_core::address::check_agent(&agent).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The file holds the seed of exactly that agent id.
    let seed = chips_core::codec::b64url_decode_array::<32>(
        std::fs::read_to_string(&key).unwrap().trim(),
        "seed",
    )
    .unwrap();
    assert_eq!(
        chips_core::sign::KeyPair::from_seed(&seed).public_b64(),
        agent
    );
    // A second keygen never overwrites a key.
    let again = Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let seed2 = std::fs::read_to_string(&key).unwrap();
    assert_eq!(
        chips_core::codec::b64url_decode(seed2.trim()).unwrap(),
        seed
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sign_makes_a_signature_over_the_canonical_json() {
    use std::io::Write;
    let dir = chips_tests::scratch_dir("sign");
    let key = dir.join("user.key");
    let out = Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .unwrap();
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let pk = Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .arg("pubkey")
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(pk.stdout).unwrap().trim(), public);
    let mut child = Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .arg("sign")
        .arg("--key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Whitespace and key order do not matter: the canonical form is signed.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{ \"b\": 2,\n \"a\": [1, 2.0] }")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let sig = String::from_utf8(out.stdout).unwrap().trim().to_string();
    chips_core::sign::verify(&public, br#"{"a":[1,2],"b":2}"#, &sig).unwrap();
    // Not JSON: a clear failure.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .args(["sign", "--key"])
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{oops").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));
    std::fs::remove_dir_all(&dir).ok();
}
