//! The peer wire, without the network: frame types, the message envelope, and Noise sessions
//! keyed by the agents' Ed25519 keys.
//!
//! On the wire (docs/protocol.md) a frame is a 4-byte big-endian length, then one type byte,
//! then the payload; the length prefix is the sidecar's codec's business (tokio-util's
//! `LengthDelimitedCodec`), this module reads what it delimits. Sessions use the Noise pattern
//! `IK` with `25519_ChaChaPoly_BLAKE2b`: the initiator knows the responder's agent id (from a
//! CHIP address or a ticket); the responder learns the initiator's static key in the handshake.
//! The initiator's first payload names its agent id, and the responder accepts it only if that
//! id's key is the static key the handshake proved ([`Hello::check`]): a peer cannot claim
//! another agent's id.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::address::ChipAddress;
use crate::{codec, Error, Result};

/// The Noise protocol every chips session uses.
pub const NOISE_IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2b";

/// The largest Noise message (snow's limit), and so the largest frame payload.
pub const MAX_NOISE_MESSAGE: usize = 65_535;

/// The largest frame: a type byte and a Noise message.
pub const MAX_FRAME: usize = 1 + MAX_NOISE_MESSAGE;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// `I`: the initiator's handshake message (Noise IK `e, es, s, ss`).
    Hello,
    /// `A`: the responder's handshake reply (`e, ee, se`); the channel is open.
    Accept,
    /// `T`: a transport message.
    Transport,
}

impl FrameType {
    pub fn byte(self) -> u8 {
        match self {
            FrameType::Hello => b'I',
            FrameType::Accept => b'A',
            FrameType::Transport => b'T',
        }
    }

    pub fn from_byte(b: u8) -> Result<FrameType> {
        match b {
            b'I' => Ok(FrameType::Hello),
            b'A' => Ok(FrameType::Accept),
            b'T' => Ok(FrameType::Transport),
            other => Err(Error::value(format!("unknown frame type {other:#04x}"))),
        }
    }
}

/// Splits a delimited frame into its type and payload.
pub fn parse_frame(frame: &[u8]) -> Result<(FrameType, &[u8])> {
    let (&kind, payload) = frame
        .split_first()
        .ok_or_else(|| Error::value("empty frame"))?;
    if frame.len() > MAX_FRAME {
        return Err(Error::value(format!(
            "frame of {} bytes (at most {MAX_FRAME})",
            frame.len()
        )));
    }
    Ok((FrameType::from_byte(kind)?, payload))
}

/// A frame's bytes after the length prefix.
pub fn frame(kind: FrameType, payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > MAX_NOISE_MESSAGE {
        return Err(Error::value(format!(
            "payload of {} bytes (at most {MAX_NOISE_MESSAGE})",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(kind.byte());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The X25519 private key of an agent, derived from its Ed25519 seed.
pub fn x25519_secret(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed).to_scalar_bytes()
}

/// The X25519 public key of an agent id (its Ed25519 public key, base64url).
pub fn x25519_public(agent: &str) -> Result<[u8; 32]> {
    Ok(crate::sign::public_key(agent)?.to_montgomery().to_bytes())
}

/// Starts a session to `remote_agent` as the initiator.
pub fn initiator(local_seed: &[u8; 32], remote_agent: &str) -> Result<snow::HandshakeState> {
    let secret = x25519_secret(local_seed);
    let remote = x25519_public(remote_agent)?;
    builder()?
        .local_private_key(&secret)
        .and_then(|b| b.remote_public_key(&remote))
        .and_then(|b| b.build_initiator())
        .map_err(noise_error)
}

/// Waits for a session as the responder.
pub fn responder(local_seed: &[u8; 32]) -> Result<snow::HandshakeState> {
    let secret = x25519_secret(local_seed);
    builder()?
        .local_private_key(&secret)
        .and_then(|b| b.build_responder())
        .map_err(noise_error)
}

fn builder() -> Result<snow::Builder<'static>> {
    Ok(snow::Builder::new(NOISE_IK.parse().map_err(noise_error)?))
}

fn noise_error(e: snow::Error) -> Error {
    Error::value(format!("noise: {e}"))
}

/// The first payload of a session: who the initiator says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The initiator's agent id.
    pub agent: String,
    /// Protocol version the initiator speaks.
    pub version: u32,
}

impl Hello {
    /// Accepts the hello only if `agent`'s key is the static key the handshake proved.
    pub fn check(payload: &[u8], remote_static: Option<&[u8]>) -> Result<Hello> {
        let hello: Hello =
            serde_json::from_slice(payload).map_err(|e| Error::value(format!("hello: {e}")))?;
        let proved =
            remote_static.ok_or_else(|| Error::value("the handshake proved no static key"))?;
        if x25519_public(&hello.agent)?.as_slice() != proved {
            return Err(Error::BadSignature(format!(
                "the peer claims to be agent {} but holds another key",
                hello.agent
            )));
        }
        if hello.version != 1 {
            return Err(Error::value(format!(
                "protocol version {} is not spoken here",
                hello.version
            )));
        }
        Ok(hello)
    }
}

/// What the responder says in its handshake reply (`A`): what the initiator may rely on in the
/// session. A site before 0.2.0 sends nothing (every field false).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The responder ends the session at the first message it refuses (after its reply), so an
    /// initiator may send messages ahead of their replies: none sent after a refused one is
    /// applied, and each peer's order holds.
    #[serde(default)]
    pub ends_at_refusal: bool,
    /// The responder answers an empty message (a ping) with an empty message, at once and in
    /// order with its replies: a sender whose reply is late sends one, and if its message was
    /// lost on the way, the ping fails to decrypt and the session closes (a lost frame shows in
    /// a ping's time, not after the whole reply wait).
    #[serde(default)]
    pub pings: bool,
}

impl Welcome {
    /// What this build's responder says.
    pub fn ours() -> Welcome {
        Welcome {
            ends_at_refusal: true,
            pings: true,
        }
    }

    /// Reads a responder's handshake payload: empty from an older site; fields this build does
    /// not know are a newer site's and are ignored.
    pub fn parse(payload: &[u8]) -> Result<Welcome> {
        if payload.is_empty() {
            return Ok(Welcome::default());
        }
        serde_json::from_slice(payload).map_err(|e| Error::value(format!("welcome: {e}")))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a welcome serializes")
    }
}

/// The envelope of every peer message (docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub id: String,
    pub target: String,
    pub action: String,
    pub from: ChipAddress,
    pub to: ChipAddress,
    pub object: Value,
}

/// A site's answer to one peer message, sent back on the same channel: the message's id and
/// what the receiving database did with it (`chips.peer_receive`'s word: applied, `duplicate`,
/// ...), or why it refused it (the database's message and SQLSTATE; `id` null when the
/// envelope could not be read). The sender acknowledges an applied message in its outbox and
/// backs off from a refused one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Applied {
        id: String,
        result: String,
    },
    Refused {
        id: Option<String>,
        error: String,
        sqlstate: String,
    },
}

impl Reply {
    /// The id of the message this answers, if it names one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Reply::Applied { id, .. } => Some(id),
            Reply::Refused { id, .. } => id.as_deref(),
        }
    }
}

/// The lane a message travels in between two sites. A peer's `Ordered` messages go in the order
/// they were queued (a tally's chits and chain, a lift's prepare, decision and status, a round's
/// steps need it), so one that waits for its answer holds up those after it. Route discovery's
/// queries and answers need no order among the rest, and a payment waits for them, so they have
/// a lane of their own: the sidecar sends each lane of a peer by a task and a session of its own
/// (`chips.outbox_claim(lane => ...)`), and a query does not wait behind a stalled chain update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Ordered,
    Route,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Route, Lane::Ordered];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Ordered => "ordered",
            Lane::Route => "route",
        }
    }
}

impl std::str::FromStr for Lane {
    type Err = Error;

    fn from_str(s: &str) -> Result<Lane> {
        match s {
            "ordered" => Ok(Lane::Ordered),
            "route" => Ok(Lane::Route),
            _ => Err(Error::value(format!(
                "lane must be 'ordered' or 'route', not {s:?}"
            ))),
        }
    }
}

/// A message sites exchange: its target and action, the SQL function in schema chips that
/// receives it at the addressee's site, and its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub target: &'static str,
    pub action: &'static str,
    pub receiver: &'static str,
    pub lane: Lane,
}

impl Message {
    const fn new(
        target: &'static str,
        action: &'static str,
        receiver: &'static str,
        lane: Lane,
    ) -> Message {
        Message {
            target,
            action,
            receiver,
            lane,
        }
    }
}

/// The messages sites exchange. `chips._apply` dispatches by this table (`chips._receiver`),
/// `chips.outbox_claim` sorts them into lanes by it (`chips._lane`), and an envelope naming
/// anything else is refused before it reaches the database.
pub const MESSAGES: [Message; 29] = [
    Message::new("tally", "ticket", "_recv_ticket", Lane::Ordered),
    Message::new("tally", "offer", "_recv_offer", Lane::Ordered),
    Message::new("tally", "open", "_recv_open", Lane::Ordered),
    Message::new("tally", "void", "_recv_void", Lane::Ordered),
    Message::new("tally", "close", "_recv_close", Lane::Ordered),
    Message::new("chit", "pend", "_recv_chit_pend", Lane::Ordered),
    Message::new("chit", "good", "_recv_chit_good", Lane::Ordered),
    Message::new("chit", "void", "_recv_chit_void", Lane::Ordered),
    Message::new("chit", "chain", "_recv_chain", Lane::Ordered),
    Message::new("chit", "chains", "_recv_chains", Lane::Ordered),
    Message::new("lift", "query", "_recv_lift_query", Lane::Route),
    Message::new("lift", "answer", "_recv_lift_answer", Lane::Route),
    Message::new("lift", "prepare", "_recv_lift_prepare", Lane::Ordered),
    Message::new("lift", "ready", "_recv_lift_ready", Lane::Ordered),
    Message::new("lift", "reject", "_recv_lift_reject", Lane::Ordered),
    Message::new("lift", "commit", "_recv_lift_decision", Lane::Ordered),
    Message::new("lift", "void", "_recv_lift_decision", Lane::Ordered),
    Message::new("lift", "status", "_recv_lift_status", Lane::Ordered),
    Message::new("round", "join", "_recv_round_join", Lane::Ordered),
    Message::new("round", "leave", "_recv_round_leave", Lane::Ordered),
    Message::new("round", "open", "_recv_round_open", Lane::Ordered),
    Message::new("round", "graph", "_recv_round_graph", Lane::Ordered),
    Message::new("round", "flows", "_recv_round_flows", Lane::Ordered),
    Message::new("round", "refuse", "_recv_round_refuse", Lane::Ordered),
    Message::new("round", "agree", "_recv_round_agree", Lane::Ordered),
    Message::new("round", "ready", "_recv_round_ready", Lane::Ordered),
    Message::new("round", "good", "_recv_round_good", Lane::Ordered),
    Message::new("round", "void", "_recv_round_void", Lane::Ordered),
    Message::new("round", "status", "_recv_round_status", Lane::Ordered),
];

/// The message `target`/`action`, if it is one (`MESSAGES`).
pub fn message(target: &str, action: &str) -> Option<&'static Message> {
    MESSAGES
        .iter()
        .find(|m| m.target == target && m.action == action)
}

/// The SQL function that receives message `target`/`action`, if it is one (`MESSAGES`).
pub fn receiver(target: &str, action: &str) -> Option<&'static str> {
    message(target, action).map(|m| m.receiver)
}

/// The most bytes of a message's JSON a site sends another: a message travels in one Noise
/// transport message (`MAX_NOISE_MESSAGE`, less its 16-byte tag), and the frame around it needs
/// a few bytes; 60,000 leaves room to spare. `chips._send` refuses a longer one (54000): it
/// could never be delivered and would hold up every later message to that site.
pub const MAX_MESSAGE_BYTES: usize = 60_000;

/// The most bytes of chain entries one `chit/chain` message carries (two thirds of a message,
/// leaving room for the rest of it); the next ones go when the partner acknowledges these.
pub const MAX_CHAIN_BATCH_BYTES: usize = 40_000;

// Checked when core compiles: a message of the most bytes `_send` allows, with a frame header to
// spare, fits one Noise transport message (16 bytes of which are the tag), and a chain batch
// leaves room in a message.
const _: () = assert!(MAX_MESSAGE_BYTES + 1024 <= MAX_NOISE_MESSAGE - 16);
const _: () = assert!(MAX_CHAIN_BATCH_BYTES < MAX_MESSAGE_BYTES);

impl Envelope {
    /// Parses and checks an envelope: a UUID id, a known message, valid addresses, an object.
    pub fn from_slice(bytes: &[u8]) -> Result<Envelope> {
        let e: Envelope =
            serde_json::from_slice(bytes).map_err(|e| Error::Json(format!("envelope: {e}")))?;
        if !crate::tally::is_uuid(&e.id) {
            return Err(Error::value(format!(
                "message id {:?} is not a lower-case UUID",
                e.id
            )));
        }
        if receiver(&e.target, &e.action).is_none() {
            return Err(Error::value(format!(
                "unknown message {}/{}",
                e.target, e.action
            )));
        }
        e.from.check()?;
        e.to.check()?;
        if !e.object.is_object() {
            return Err(Error::value("a message's object is a JSON object"));
        }
        Ok(e)
    }

    /// The envelope as JSON bytes (what a transport message carries).
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }
}

/// The agent id of a seed (base64url Ed25519 public key).
pub fn agent_id(seed: &[u8; 32]) -> String {
    codec::b64url_encode(
        ed25519_dalek::SigningKey::from_bytes(seed)
            .verifying_key()
            .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::KeyPair;
    use serde_json::json;

    fn hello(seed: &[u8; 32]) -> Vec<u8> {
        serde_json::to_vec(&Hello {
            agent: agent_id(seed),
            version: 1,
        })
        .unwrap()
    }

    #[test]
    fn a_welcome_reads_old_and_newer_responders() {
        assert_eq!(Welcome::parse(b"").unwrap(), Welcome::default());
        assert!(!Welcome::parse(b"").unwrap().ends_at_refusal);
        assert!(
            !Welcome::parse(br#"{"ends_at_refusal":true}"#)
                .unwrap()
                .pings
        );
        let ours = Welcome::parse(&Welcome::ours().to_bytes()).unwrap();
        assert!(ours.ends_at_refusal);
        assert!(ours.pings);
        assert_eq!(ours.to_bytes(), br#"{"ends_at_refusal":true,"pings":true}"#);
        let newer = Welcome::parse(br#"{"ends_at_refusal":true,"later":1}"#).unwrap();
        assert!(newer.ends_at_refusal);
        assert!(Welcome::parse(b"not json").is_err());
        assert!(Welcome::parse(br#"{"ends_at_refusal":"yes"}"#).is_err());
    }

    #[test]
    fn replies_keep_their_wire_form() {
        let ok = Reply::Applied {
            id: "m1".into(),
            result: "duplicate".into(),
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"id": "m1", "result": "duplicate"})
        );
        let no: Reply = serde_json::from_value(
            json!({"id": null, "error": "envelope: bad", "sqlstate": "22023"}),
        )
        .unwrap();
        assert_eq!(no.id(), None);
        assert!(matches!(no, Reply::Refused { ref sqlstate, .. } if sqlstate == "22023"));
        let back: Reply = serde_json::from_slice(&serde_json::to_vec(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
        assert!(serde_json::from_value::<Reply>(json!({"id": "m1"})).is_err());
    }

    #[test]
    fn every_message_has_one_receiver_and_fits_a_noise_message() {
        let mut seen = std::collections::HashSet::new();
        for Message {
            target: t,
            action: a,
            receiver: f,
            lane,
        } in MESSAGES
        {
            assert!(seen.insert((t, a)), "{t}/{a} listed twice");
            assert_eq!(receiver(t, a), Some(f));
            assert!(
                f.starts_with("_recv_") && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert_eq!(lane.as_str().parse::<Lane>().unwrap(), lane);
        }
        assert_eq!(receiver("tally", "steal"), None);
        // only route discovery leaves the order of a peer's messages
        let route: Vec<_> = MESSAGES
            .iter()
            .filter(|m| m.lane == Lane::Route)
            .map(|m| (m.target, m.action))
            .collect();
        assert_eq!(route, [("lift", "query"), ("lift", "answer")]);
        assert!("fast".parse::<Lane>().is_err());
    }

    /// Runs an IK handshake in memory; returns both transport states, or the responder's error.
    fn handshake(
        init_seed: &[u8; 32],
        claimed: &[u8],
        resp_seed: &[u8; 32],
    ) -> Result<(snow::TransportState, snow::TransportState)> {
        let mut i = initiator(init_seed, &agent_id(resp_seed))?;
        let mut r = responder(resp_seed)?;
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let mut out = vec![0u8; MAX_NOISE_MESSAGE];
        let n = i.write_message(claimed, &mut buf).map_err(noise_error)?;
        let wire = frame(FrameType::Hello, &buf[..n])?;
        let (kind, payload) = parse_frame(&wire)?;
        assert_eq!(kind, FrameType::Hello);
        let m = r.read_message(payload, &mut out).map_err(noise_error)?;
        Hello::check(&out[..m], r.get_remote_static())?;
        let n = r.write_message(b"", &mut buf).map_err(noise_error)?;
        i.read_message(&buf[..n], &mut out).map_err(noise_error)?;
        Ok((
            i.into_transport_mode().map_err(noise_error)?,
            r.into_transport_mode().map_err(noise_error)?,
        ))
    }

    /// Also proves that the X25519 key derived from a seed is the one derived from its agent id:
    /// the responder checks exactly that.
    #[test]
    fn ik_session_both_ways() {
        let (a, b) = (
            KeyPair::from_phrase("site a").seed(),
            KeyPair::from_phrase("site b").seed(),
        );
        let (mut i, mut r) = handshake(&a, &hello(&a), &b).unwrap();
        let env = Envelope {
            id: "0b6f2a52-62cf-4c53-9c64-0b2ad4c3e1a7".into(),
            target: "chit".into(),
            action: "good".into(),
            from: ChipAddress {
                cuid: "ann".into(),
                agent: agent_id(&a),
                host: None,
                port: None,
            },
            to: ChipAddress {
                cuid: "eve".into(),
                agent: agent_id(&b),
                host: None,
                port: None,
            },
            object: json!({"chit": {}, "sign": "x"}),
        };
        let (mut buf, mut out) = (vec![0u8; MAX_NOISE_MESSAGE], vec![0u8; MAX_NOISE_MESSAGE]);
        let n = i.write_message(&env.to_vec(), &mut buf).unwrap();
        assert!(
            !buf[..n].windows(3).any(|w| w == b"ann"),
            "the wire is encrypted"
        );
        let m = r.read_message(&buf[..n], &mut out).unwrap();
        assert_eq!(Envelope::from_slice(&out[..m]).unwrap(), env);
        let n = r.write_message(b"ack", &mut buf).unwrap();
        let m = i.read_message(&buf[..n], &mut out).unwrap();
        assert_eq!(&out[..m], b"ack");
        // A tampered transport message is refused.
        let n = i.write_message(b"hello", &mut buf).unwrap();
        buf[n - 1] ^= 1;
        assert!(r.read_message(&buf[..n], &mut out).is_err());
    }

    #[test]
    fn an_impostor_is_refused_before_any_message() {
        let (a, b, m) = (
            KeyPair::from_phrase("site a").seed(),
            KeyPair::from_phrase("site b").seed(),
            KeyPair::from_phrase("mallory").seed(),
        );
        // Mallory holds her own key but claims to be site a.
        let e = handshake(&m, &hello(&a), &b).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::BadSignature(_)), "{e}");
        // Dialing the wrong responder key fails the handshake itself.
        let mut i = initiator(&a, &agent_id(&m)).unwrap();
        let mut r = responder(&b).unwrap();
        let (mut buf, mut out) = (vec![0u8; MAX_NOISE_MESSAGE], vec![0u8; MAX_NOISE_MESSAGE]);
        let n = i.write_message(&hello(&a), &mut buf).unwrap();
        assert!(r.read_message(&buf[..n], &mut out).is_err());
        // Garbage hellos.
        assert!(Hello::check(b"not json", Some(&[0u8; 32])).is_err());
        assert!(Hello::check(&hello(&a), None).is_err());
    }

    #[test]
    fn frames_and_envelopes_refuse_bad_input() {
        assert!(parse_frame(&[]).is_err());
        assert!(parse_frame(b"Xabc").is_err());
        assert!(parse_frame(&vec![b'T'; MAX_FRAME + 1]).is_err());
        assert!(frame(FrameType::Transport, &vec![0; MAX_NOISE_MESSAGE + 1]).is_err());
        assert_eq!(
            parse_frame(&frame(FrameType::Accept, b"xy").unwrap()).unwrap(),
            (FrameType::Accept, &b"xy"[..])
        );
        let agent = KeyPair::from_phrase("x").public_b64();
        let good = json!({"id": "0b6f2a52-62cf-4c53-9c64-0b2ad4c3e1a7", "target": "tally", "action": "offer",
                          "from": {"cuid": "a", "agent": agent}, "to": {"cuid": "b", "agent": agent}, "object": {}});
        Envelope::from_slice(good.to_string().as_bytes()).unwrap();
        for (k, v) in [
            ("id", json!("x")),
            ("action", json!("explode")),
            ("object", json!([])),
            ("extra", json!(1)),
        ] {
            let mut bad = good.clone();
            bad[k] = v;
            assert!(
                Envelope::from_slice(bad.to_string().as_bytes()).is_err(),
                "{k}"
            );
        }
        let mut bad = good.clone();
        bad["from"]["agent"] = json!("short");
        assert!(Envelope::from_slice(bad.to_string().as_bytes()).is_err());
        assert!(Envelope::from_slice(b"\xff\xfe").is_err());
    }
}
