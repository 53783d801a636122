//! The Noise layer as chipsd uses it (IK, then transport): a responder fed arbitrary bytes as the
//! initiator's handshake, the hello check on arbitrary payloads, and an open session fed
//! arbitrary transport messages, each refuses with an error and never panics; a genuine message
//! still decrypts after garbage was refused.
#![no_main]

use chips_core::peer::{agent_id, initiator, responder, Hello};
use libfuzzer_sys::fuzz_target;

const A: [u8; 32] = [7; 32];
const B: [u8; 32] = [9; 32];

fuzz_target!(|data: &[u8]| {
    let mut buf = vec![0u8; 65535];
    // 1. garbage as the first handshake message
    let mut r = responder(&B).expect("a responder");
    if r.read_message(data, &mut buf).is_ok() {
        let _ = Hello::check(&buf[..0], r.get_remote_static());
    }
    // 2. garbage as the hello payload, with a proved key
    let _ = Hello::check(data, Some(&[1u8; 32]));
    // 3. garbage on an open session
    let mut i = initiator(&A, &agent_id(&B)).expect("an initiator");
    let mut r = responder(&B).expect("a responder");
    let mut m1 = vec![0u8; 1024];
    let n = i.write_message(b"{}", &mut m1).expect("message 1");
    r.read_message(&m1[..n], &mut buf).expect("read 1");
    let n = r.write_message(&[], &mut m1).expect("message 2");
    i.read_message(&m1[..n], &mut buf).expect("read 2");
    let mut it = i.into_transport_mode().expect("initiator transport");
    let mut rt = r.into_transport_mode().expect("responder transport");
    let _ = rt.read_message(data, &mut buf);
    let n = it
        .write_message(b"hello", &mut m1)
        .expect("a genuine message");
    let got = rt.read_message(&m1[..n], &mut buf);
    // a refused message does not advance the receiving nonce, so the genuine one decrypts
    // unless the garbage itself decrypted (it cannot without the key)
    assert_eq!(got.map(|k| buf[..k].to_vec()).ok(), Some(b"hello".to_vec()));
});
