//! The peer transport between two endpoints on loopback, with Noise and without: messages per
//! second and round-trip latency (p50, p99) of the exchange chipsd runs for every message
//! (send an envelope, wait for the reply), in the same run.
//!
//! ```text
//! cargo run --release -p chipsd --example bench_transport -- [messages] [repeats]
//! ```
//!
//! The envelope is a chit `good` message as chipsd sends it (about 700 bytes). The receiving end
//! answers at once instead of applying the message in a database, so the figures isolate the
//! transport: what encryption costs.

use std::time::{Duration, Instant};

use chipsd::channel::Channel;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

fn envelope(seed: &[u8; 32]) -> Vec<u8> {
    let agent = chips_core::peer::agent_id(seed);
    serde_json::to_vec(&json!({
        "id": "0b6f2a52-62cf-4c53-9c64-0b2ad4c3e1a7", "target": "chit", "action": "good",
        "from": {"cuid": "eve", "agent": agent, "host": "127.0.0.1", "port": 65431},
        "to": {"cuid": "ann", "agent": agent, "host": "127.0.0.1", "port": 65430},
        "object": {"chit": {"by": "foil", "date": "2026-11-21T06:21:14.362Z", "memo": "rolls for the grocery",
                            "tally": "e1ba0107-cf1e-4172-a02a-d5f8515d34c8", "type": "tran",
                            "uuid": "9d1f6a52-62cf-4c53-9c64-0b2ad4c3e1a7", "units": 7250},
                   "sign": "q3HlVwQ0L6ZpRG0K7tXAAm0nVXm2ZQ2a5C8fB0l9qkUJiyAqiHPmvKD8ZZu3g9Q7sN0M6mX4wqkRDTgEcv7VCA"}
    }))
    .expect("json")
}

async fn run(noise: bool, messages: usize) -> (f64, Vec<Duration>) {
    let (a, b) = (
        chips_core::sign::KeyPair::from_phrase("bench a").seed(),
        chips_core::sign::KeyPair::from_phrase("bench b").seed(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ch = if noise {
            Channel::accept(stream, &b, Duration::from_secs(10))
                .await
                .unwrap()
        } else {
            stream.set_nodelay(true).unwrap();
            Channel::plaintext_for_benchmark(stream)
        };
        let reply = br#"{"id":"0b6f2a52-62cf-4c53-9c64-0b2ad4c3e1a7","result":"good"}"#;
        while let Ok(Some(_)) = ch.recv(Duration::from_secs(10)).await {
            ch.send(reply).await.unwrap();
        }
    });
    let mut ch = if noise {
        Channel::connect(
            &addr.to_string(),
            &a,
            &chips_core::peer::agent_id(&b),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    } else {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Channel::plaintext_for_benchmark(s)
    };
    let msg = envelope(&a);
    let mut lat = Vec::with_capacity(messages);
    let t = Instant::now();
    for _ in 0..messages {
        let s = Instant::now();
        ch.send(&msg).await.unwrap();
        ch.recv(Duration::from_secs(10)).await.unwrap().unwrap();
        lat.push(s.elapsed());
    }
    let rate = messages as f64 / t.elapsed().as_secs_f64();
    drop(ch);
    let _ = server.await;
    (rate, lat)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let mut results = [(vec![], vec![]), (vec![], vec![])];
    for _ in 0..repeats {
        for (i, noise) in [true, false].into_iter().enumerate() {
            let (rate, mut lat) = run(noise, messages).await;
            lat.sort();
            results[i].0.push(rate);
            results[i].1.push((pct(&lat, 0.5), pct(&lat, 0.99)));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("transport         msgs/s    p50_us    p99_us   ({messages} messages, median of {repeats} runs)");
    let mut rates = vec![];
    for (i, name) in ["noise", "plaintext"].iter().enumerate() {
        let rate = median(results[i].0.clone());
        let p50 = median(results[i].1.iter().map(|x| x.0).collect());
        let p99 = median(results[i].1.iter().map(|x| x.1).collect());
        rates.push(rate);
        println!("{name:<12} {rate:>11.0} {p50:>9.1} {p99:>9.1}");
    }
    println!(
        "noise throughput / plaintext: {:.3} (cost {:.1} %)",
        rates[0] / rates[1],
        (1.0 - rates[0] / rates[1]) * 100.0
    );
}
