//! A TCP proxy between sidecars that injects faults into transport (`T`) frames, both ways:
//! drops, duplicates, swaps with the next frame, delays, and cut connections, from a seeded
//! generator, within a budget, and only while switched on. Handshake frames pass untouched (a
//! broken handshake is only a cut connection). Sites advertise the proxy's port, so all traffic
//! to a site's chipsd crosses its proxy.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Faults injected so far, by kind.
#[derive(Default)]
pub struct Counts {
    pub dropped: AtomicUsize,
    pub duplicated: AtomicUsize,
    pub swapped: AtomicUsize,
    pub delayed: AtomicUsize,
    pub cut: AtomicUsize,
}

impl Counts {
    pub fn total(&self) -> usize {
        [
            &self.dropped,
            &self.duplicated,
            &self.swapped,
            &self.delayed,
            &self.cut,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} dropped, {} duplicated, {} swapped, {} delayed, {} connections cut",
            self.dropped.load(Ordering::SeqCst),
            self.duplicated.load(Ordering::SeqCst),
            self.swapped.load(Ordering::SeqCst),
            self.delayed.load(Ordering::SeqCst),
            self.cut.load(Ordering::SeqCst)
        )
    }
}

#[derive(Clone)]
struct Shared {
    counts: Arc<Counts>,
    on: Arc<AtomicBool>,
    budget: usize,
    /// Transport frames towards the sidecar still to drop whether faults are on or not
    /// ([`FaultyProxy::drop_requests`]).
    drop_requests: Arc<AtomicUsize>,
}

pub struct FaultyProxy {
    shared: Shared,
}

impl FaultyProxy {
    /// Listens on 127.0.0.1:`listen` and forwards to 127.0.0.1:`target`, injecting at most
    /// `budget` faults (switched on).
    pub async fn start(listen: u16, target: u16, seed: u64, budget: usize) -> FaultyProxy {
        let shared = Shared {
            counts: Arc::new(Counts::default()),
            on: Arc::new(AtomicBool::new(true)),
            budget,
            drop_requests: Arc::new(AtomicUsize::new(0)),
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .expect("the proxy's port is free");
        let s = shared.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue; // the sidecar is down: the connection just fails
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, seed ^ n, s.clone(), true));
                tokio::spawn(pump(sr, cw, seed ^ n ^ 0x5555, s.clone(), false));
            }
        });
        FaultyProxy { shared }
    }

    /// Faults on or off (frames pass untouched while off).
    pub fn set(&self, on: bool) {
        self.shared.on.store(on, Ordering::SeqCst);
    }

    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }

    pub fn injected(&self) -> usize {
        self.shared.counts.total()
    }

    /// Drops the next `n` transport frames sent to the sidecar (counted as dropped), whether
    /// random faults are on or not: a lost message, exactly where a test wants one.
    pub fn drop_requests(&self, n: usize) {
        self.shared.drop_requests.store(n, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    seed: u64,
    s: Shared,
    to_sidecar: bool,
) {
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100
    };
    let mut held: Option<Vec<u8>> = None;
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if from.read_exact(&mut body).await.is_err() {
            break;
        }
        let mut frame = len.to_vec();
        frame.extend_from_slice(&body);
        // takes one fault from the budget, if faults are on and any is left
        let spend = |c: &AtomicUsize| {
            s.on.load(Ordering::SeqCst)
                && s.counts.total() < s.budget
                && c.fetch_add(1, Ordering::SeqCst) < usize::MAX
        };
        if body.first() == Some(&b'T')
            && to_sidecar
            && s.drop_requests
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            s.counts.dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if body.first() == Some(&b'T') {
            let c = &s.counts;
            match next() {
                0..=7 if spend(&c.dropped) => continue,
                8..=15 if spend(&c.duplicated) => {
                    let _ = to.write_all(&frame).await;
                }
                16..=23 if held.is_none() && spend(&c.swapped) => {
                    held = Some(frame);
                    continue;
                }
                24..=27 if spend(&c.cut) => break,
                28..=35 if spend(&c.delayed) => {
                    tokio::time::sleep(Duration::from_millis(next() * 5)).await;
                }
                _ => {}
            }
        }
        if to.write_all(&frame).await.is_err() {
            break;
        }
        if let Some(h) = held.take() {
            if to.write_all(&h).await.is_err() {
                break;
            }
        }
    }
}
