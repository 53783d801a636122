//! CHIP addresses: `cuid:agent`, optionally `cuid:agent@host:port`.
//!
//! `cuid` is the user's CHIP id, unique at its agent; `agent` is the site's peer identity, the
//! base64url Ed25519 public key of its agent (43 characters); host and port say where the agent
//! listens when known.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::{codec, Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipAddress {
    pub cuid: String,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A CHIP user id: 1 to 64 characters of letters, digits, `_`, `.` and `-`.
pub fn check_cuid(cuid: &str) -> Result<()> {
    let ok = !cuid.is_empty()
        && cuid.len() <= 64
        && cuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::value(format!(
            "CHIP user id {cuid:?} must be 1 to 64 letters, digits, '_', '.' or '-'"
        )))
    }
}

/// An agent id: the base64url (no padding) Ed25519 public key of a site's agent.
pub fn check_agent(agent: &str) -> Result<()> {
    crate::sign::public_key(agent).map(|_| ()).map_err(|_| {
        Error::value(format!(
            "agent id {agent:?} is not a base64url Ed25519 public key"
        ))
    })
}

/// A host name or IP address (no scheme, no port).
pub fn check_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::value(format!(
            "host {host:?} is not a host name or IP address"
        )))
    }
}

impl ChipAddress {
    pub fn check(&self) -> Result<()> {
        check_cuid(&self.cuid)?;
        check_agent(&self.agent)?;
        if let Some(h) = &self.host {
            check_host(h)?;
        }
        if self.port == Some(0) {
            return Err(Error::value("port must be between 1 and 65535"));
        }
        Ok(())
    }

    /// Parses `cuid:agent` or `cuid:agent@host:port` (IPv6 hosts in brackets).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::value(format!(
                "{text:?} is not a CHIP address (cuid:agent[@host:port])"
            ))
        };
        let (id, place) = match text.split_once('@') {
            Some((id, place)) => (id, Some(place)),
            None => (text, None),
        };
        let (cuid, agent) = id.split_once(':').ok_or_else(bad)?;
        let (host, port) = match place {
            None => (None, None),
            Some(place) => {
                let (host, port) = place.rsplit_once(':').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                (Some(host.to_string()), Some(port))
            }
        };
        let addr = ChipAddress {
            cuid: cuid.into(),
            agent: agent.into(),
            host,
            port,
        };
        addr.check()?;
        Ok(addr)
    }

    /// The agent's public key bytes.
    pub fn agent_key(&self) -> Result<[u8; 32]> {
        codec::b64url_decode_array::<32>(&self.agent, "agent id")
    }
}

impl fmt::Display for ChipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cuid, self.agent)?;
        if let (Some(h), Some(p)) = (&self.host, self.port) {
            write!(f, "@{h}:{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::KeyPair;

    #[test]
    fn parse_and_display_roundtrip() {
        let agent = KeyPair::from_phrase("site-a").public_b64();
        for text in [
            format!("suzie:{agent}"),
            format!("c_2_3:{agent}@127.0.0.1:65430"),
            format!("a.b-c:{agent}@[::1]:1"),
        ] {
            let a = ChipAddress::parse(&text).unwrap();
            assert_eq!(a.to_string(), text);
        }
        let a = ChipAddress::parse(&format!("suzie:{agent}@example.org:65430")).unwrap();
        assert_eq!(
            (a.cuid.as_str(), a.host.as_deref(), a.port),
            ("suzie", Some("example.org"), Some(65430))
        );
    }

    #[test]
    fn bad_addresses_refused() {
        let agent = KeyPair::from_phrase("site-a").public_b64();
        for text in [
            "nocolon".to_string(),
            format!(":{agent}"),
            format!("su zie:{agent}"),
            "suzie:notakey".into(),
            format!("suzie:{agent}@host"),
            format!("suzie:{agent}@host:0"),
            format!("suzie:{agent}@host:70000"),
            format!("suzie:{agent}@ho/st:1"),
        ] {
            assert!(ChipAddress::parse(&text).is_err(), "{text} accepted");
        }
    }
}
