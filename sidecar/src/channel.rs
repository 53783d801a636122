//! One encrypted peer connection: length-delimited frames (4-byte big-endian length, one type
//! byte) over TCP, a Noise IK handshake, then transport messages.

use std::time::Duration;

use bytes::Bytes;
use chips_core::peer::{self, FrameType, Hello, Welcome, MAX_FRAME, MAX_NOISE_MESSAGE};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::error::{Error, Result};

/// What a connection that closes before saying anything is refused with.
pub const CLOSED_EARLY: &str = "the peer closed before its hello";

/// How long [`Channel::reply`] waits before it pings (a peer that answers pings).
pub const PING_AFTER: Duration = Duration::from_millis(500);

/// Noise adds a 16-byte tag to every transport message.
pub const MAX_PAYLOAD: usize = MAX_NOISE_MESSAGE - 16;

pub struct Channel {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    /// None only for the plaintext channels of the transport benchmark.
    noise: Option<snow::TransportState>,
    /// The peer's agent id, as the handshake proved it.
    pub peer_agent: String,
    /// What the responder said it does (the initiator's side; ours on the responder's).
    pub welcome: Welcome,
    buf: Vec<u8>,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

async fn next_frame(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    wait: Duration,
) -> Result<Option<(FrameType, Vec<u8>)>> {
    match tokio::time::timeout(wait, framed.next()).await {
        Err(_) => Err(Error::Protocol("timed out waiting for a frame".into())),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(Error::Protocol(format!("bad frame: {e}"))),
        Ok(Some(Ok(bytes))) => {
            let (kind, payload) = peer::parse_frame(&bytes)?;
            Ok(Some((kind, payload.to_vec())))
        }
    }
}

async fn send_frame(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    kind: FrameType,
    payload: &[u8],
) -> Result<()> {
    framed
        .send(Bytes::from(peer::frame(kind, payload)?))
        .await?;
    Ok(())
}

impl Channel {
    /// Dials `addr` and opens a session with the agent `remote_agent`.
    pub async fn connect(
        addr: &str,
        seed: &[u8; 32],
        remote_agent: &str,
        wait: Duration,
    ) -> Result<Channel> {
        let stream = tokio::time::timeout(wait, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Protocol(format!("timed out connecting to {addr}")))??;
        stream.set_nodelay(true)?;
        let mut framed = Framed::new(stream, codec());
        let mut hs = peer::initiator(seed, remote_agent)?;
        let hello = serde_json::to_vec(&Hello {
            agent: peer::agent_id(seed),
            version: 1,
        })
        .expect("hello serializes");
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = hs.write_message(&hello, &mut buf)?;
        send_frame(&mut framed, FrameType::Hello, &buf[..n]).await?;
        let welcome = match next_frame(&mut framed, wait).await? {
            Some((FrameType::Accept, reply)) => {
                let n = hs.read_message(&reply, &mut buf)?;
                Welcome::parse(&buf[..n])?
            }
            Some((other, _)) => {
                return Err(Error::Protocol(format!(
                    "expected an accept frame, got {other:?}"
                )))
            }
            None => {
                return Err(Error::Protocol(
                    "the peer closed during the handshake".into(),
                ))
            }
        };
        Ok(Channel {
            framed,
            noise: Some(hs.into_transport_mode()?),
            peer_agent: remote_agent.to_string(),
            welcome,
            buf,
        })
    }

    /// Answers a session opened by a peer; refuses one whose claimed agent id is not the key
    /// the handshake proved.
    pub async fn accept(stream: TcpStream, seed: &[u8; 32], wait: Duration) -> Result<Channel> {
        stream.set_nodelay(true)?;
        let mut framed = Framed::new(stream, codec());
        let mut hs = peer::responder(seed)?;
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let hello = match next_frame(&mut framed, wait).await? {
            Some((FrameType::Hello, msg)) => {
                let n = hs.read_message(&msg, &mut buf)?;
                Hello::check(&buf[..n], hs.get_remote_static())?
            }
            Some((other, _)) => {
                return Err(Error::Protocol(format!(
                    "expected a hello frame, got {other:?}"
                )))
            }
            None => return Err(Error::Protocol(CLOSED_EARLY.into())),
        };
        let welcome = Welcome::ours();
        let n = hs.write_message(&welcome.to_bytes(), &mut buf)?;
        send_frame(&mut framed, FrameType::Accept, &buf[..n]).await?;
        Ok(Channel {
            framed,
            noise: Some(hs.into_transport_mode()?),
            peer_agent: hello.agent,
            welcome,
            buf,
        })
    }

    /// An unencrypted channel over `stream`, with the same framing: for the transport
    /// benchmark's baseline only (the listener never offers one).
    #[doc(hidden)]
    pub fn plaintext_for_benchmark(stream: TcpStream) -> Channel {
        Channel {
            framed: Framed::new(stream, codec()),
            noise: None,
            peer_agent: String::new(),
            welcome: Welcome::default(),
            buf: vec![0u8; MAX_NOISE_MESSAGE],
        }
    }

    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::Protocol(format!(
                "message of {} bytes (at most {MAX_PAYLOAD})",
                payload.len()
            )));
        }
        let Channel {
            framed, buf, noise, ..
        } = self;
        match noise {
            Some(noise) => {
                let n = noise.write_message(payload, buf)?;
                send_frame(framed, FrameType::Transport, &buf[..n]).await
            }
            None => send_frame(framed, FrameType::Transport, payload).await,
        }
    }

    /// The next message, None when the peer closed the connection.
    pub async fn recv(&mut self, wait: Duration) -> Result<Option<Vec<u8>>> {
        match next_frame(&mut self.framed, wait).await? {
            None => Ok(None),
            Some((FrameType::Transport, msg)) => match &mut self.noise {
                Some(noise) => {
                    let n = noise.read_message(&msg, &mut self.buf)?;
                    Ok(Some(self.buf[..n].to_vec()))
                }
                None => Ok(Some(msg)),
            },
            Some((other, _)) => Err(Error::Protocol(format!(
                "unexpected {other:?} frame in a session"
            ))),
        }
    }

    /// The peer's next reply, within `wait`. To a peer that answers pings, a ping goes out
    /// after every [`PING_AFTER`] of silence: if the message (or the reply) was lost, the
    /// ping's answer cannot be decrypted, or the peer closes the session on the ping, so the
    /// loss shows at once; a peer that is only slow (a lock) answers the ping after its reply.
    /// Answers to pings are skipped.
    pub async fn reply(&mut self, wait: Duration) -> Result<Vec<u8>> {
        let pings = self.welcome.pings;
        let started = std::time::Instant::now();
        loop {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::Protocol("timed out waiting for a reply".into()));
            }
            if !pings {
                return self
                    .recv(left)
                    .await?
                    .ok_or_else(|| Error::Protocol("the peer closed the session".into()));
            }
            // (recv is cancel-safe: a frame half read stays in the codec's buffer)
            match tokio::time::timeout(left.min(PING_AFTER), self.recv(wait)).await {
                Ok(r) => match r? {
                    Some(m) if m.is_empty() => continue, // a ping's answer
                    Some(m) => return Ok(m),
                    None => return Err(Error::Protocol("the peer closed the session".into())),
                },
                Err(_) => self.send(&[]).await?,
            }
        }
    }
}
