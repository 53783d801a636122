//! Tallies: the status machine, certificates, credit terms, trading variables and the signed
//! tally document.
//!
//! A tally is held in two halves, one per party. The **stock** half is the vendor's (creditor's),
//! the **foil** half the client's (debtor's). Both halves sign the same [`TallyDoc`]; its digest
//! becomes block 0 of the tally's chit chain.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

use crate::address::ChipAddress;
use crate::{sign, Error, Result};

/// Which half of a tally: the stock (vendor, creditor) or the foil (client, debtor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Stock,
    Foil,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Stock => Side::Foil,
            Side::Foil => Side::Stock,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Stock => "stock",
            Side::Foil => "foil",
        }
    }
}

impl FromStr for Side {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stock" => Ok(Side::Stock),
            "foil" => Ok(Side::Foil),
            _ => Err(Error::value(format!(
                "tally side must be 'stock' or 'foil', not {s:?}"
            ))),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of one tally half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being written by its holder; not signed.
    Draft,
    /// Signed by one party, waiting for the other.
    Offer,
    /// Signed by both; chits may be written.
    Open,
    /// A close was requested; closes when the balance reaches zero.
    Closing,
    /// Final.
    Closed,
    /// Withdrawn or refused before it opened.
    Void,
}

pub const ALL_STATUSES: [Status; 6] = [
    Status::Draft,
    Status::Offer,
    Status::Open,
    Status::Closing,
    Status::Closed,
    Status::Void,
];

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Offer => "offer",
            Status::Open => "open",
            Status::Closing => "closing",
            Status::Closed => "closed",
            Status::Void => "void",
        }
    }
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL_STATUSES
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::value(format!("{s:?} is not a tally status")))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether one half may move from `from` to `to`. Staying in the same status is always allowed
/// (`offer -> offer` is a new revision replacing an older offer).
///
/// * draft -> offer (holder signs), draft -> void (holder drops it)
/// * offer -> draft (counter-offer), offer -> open (second signature), offer -> void
/// * void -> offer (the partner offers again), void -> open (a fully signed tally wins over a
///   crossing void: both parties signed it)
/// * open -> closing (close requested), open -> closed and closing -> closed (balance is zero)
pub fn transition_allowed(from: Status, to: Status) -> bool {
    use Status::*;
    from == to
        || matches!(
            (from, to),
            (Draft, Offer)
                | (Draft, Void)
                | (Offer, Draft)
                | (Offer, Open)
                | (Offer, Void)
                | (Void, Offer)
                | (Void, Open)
                | (Open, Closing)
                | (Open, Closed)
                | (Closing, Closed)
        )
}

pub fn check_transition(from: Status, to: Status) -> Result<()> {
    if transition_allowed(from, to) {
        Ok(())
    } else {
        Err(Error::Transition {
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

/// The state a person sees: the status plus who has signed. `P.` = the partner acted and it is
/// the holder's turn, `H.` = the holder acted and waits for the partner, `B.` = both signed.
pub fn state_label(
    status: Status,
    holder_signed: bool,
    partner_signed: bool,
    has_partner: bool,
) -> String {
    match status {
        Status::Draft if has_partner => "P.draft".into(),
        Status::Offer => match (holder_signed, partner_signed) {
            (true, true) => "B.offer".into(),
            (true, false) => "H.offer".into(),
            (false, true) => "P.offer".into(),
            (false, false) => "offer".into(),
        },
        s => s.to_string(),
    }
}

/// The trading variables a holder sets on its half (mychips §1.2): how much credit it wants to
/// hold (`target`) and at most (`bound`), the margin it charges beyond the target (`reward`) and
/// its willingness to drop (`clutch`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradingVars {
    pub target: i64,
    pub bound: i64,
    pub reward: f64,
    pub clutch: f64,
}

impl Default for TradingVars {
    fn default() -> Self {
        TradingVars {
            target: 0,
            bound: 0,
            reward: 0.0,
            clutch: 0.0,
        }
    }
}

impl TradingVars {
    pub fn check(&self) -> Result<()> {
        if self.target < 0 {
            return Err(Error::value(format!(
                "target must be >= 0, not {}",
                self.target
            )));
        }
        if self.bound < self.target {
            return Err(Error::value(format!(
                "bound ({}) must be >= target ({})",
                self.bound, self.target
            )));
        }
        for (name, v) in [("reward", self.reward), ("clutch", self.clutch)] {
            if !(-1.0..=1.0).contains(&v) {
                return Err(Error::value(format!(
                    "{name} must be between -1 and 1, not {v}"
                )));
            }
        }
        if self.reward + self.clutch < 0.0 {
            return Err(Error::value(format!(
                "reward + clutch must be >= 0, not {} + {}",
                self.reward, self.clutch
            )));
        }
        Ok(())
    }
}

/// Credit terms one party grants the other: `limit`, the most (in milliCHIPs) the other party
/// may owe it; `call`, the days of notice it must give to call the debt due.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<i64>,
}

impl Terms {
    pub fn from_json(v: &Value) -> Result<Terms> {
        let t: Terms = from_object(v, "credit terms", " (allowed: limit, call)")?;
        t.check()?;
        Ok(t)
    }

    pub fn check(&self) -> Result<()> {
        if let Some(l) = self.limit {
            if l < 0 {
                return Err(Error::value(format!("credit limit must be >= 0, not {l}")));
            }
        }
        if let Some(c) = self.call {
            if c < 0 {
                return Err(Error::value(format!(
                    "call period must be >= 0 days, not {c}"
                )));
            }
        }
        Ok(())
    }
}

/// A party's certificate, frozen into each tally it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cert {
    pub chad: ChipAddress,
    pub name: String,
    /// The party's Ed25519 public key (base64url).
    pub public: String,
    /// `p` for a person, `o` for an organization.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl Cert {
    pub fn from_json(v: &Value) -> Result<Cert> {
        let c: Cert = from_object(
            v,
            "certificate",
            " (needs chad, name, public; optional type)",
        )?;
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        self.chad.check()?;
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(Error::value("certificate name must be 1 to 200 characters"));
        }
        sign::public_key(&self.public)
            .map_err(|e| Error::value(format!("certificate public key: {e}")))?;
        if let Some(k) = &self.kind {
            if k != "p" && k != "o" {
                return Err(Error::value(format!(
                    "certificate type must be 'p' or 'o', not {k:?}"
                )));
            }
        }
        Ok(())
    }
}

/// One party's part of a tally document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TallyParty {
    pub cert: Cert,
    pub terms: Terms,
}

/// The tally document's shape, written once: the document both parties sign ([`TallyDoc`],
/// every part present and typed) and what one half's row makes of it ([`HalfDoc`], built by
/// `chips._tally_doc` for drafts and offers as for open tallies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doc<P> {
    pub version: i32,
    pub revision: i32,
    pub uuid: String,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC ([`crate::chit::iso_millis`]).
    pub date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    /// The contract: base64url SHA-256 of the contract document.
    pub agree: String,
    pub stock: P,
    pub foil: P,
}

/// The document both parties sign (over its canonical JSON) to open a tally.
pub type TallyDoc = Doc<TallyParty>;

/// One party's part as a tally half holds it: its certificate (not known on a draft nobody
/// has redeemed yet) and its terms, as stored (JSON, so that the document a half builds is
/// byte for byte what was signed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HalfParty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<Value>,
    pub terms: Value,
}

/// The tally document built from one half's columns: the holder's part goes under the half's
/// side, the partner's under the other, so both halves of a tally build the same document;
/// once both certificates are in it reads as a [`TallyDoc`].
pub type HalfDoc = Doc<HalfParty>;

impl HalfDoc {
    /// The document of the half on `side` (`date_ms`: the tally's date, milliseconds since 1970).
    #[allow(clippy::too_many_arguments)]
    pub fn from_half(
        version: i32,
        revision: i32,
        uuid: &str,
        date_ms: i64,
        memo: Option<&str>,
        agree: &str,
        side: Side,
        hold: HalfParty,
        part: HalfParty,
    ) -> Result<HalfDoc> {
        let (stock, foil) = match side {
            Side::Stock => (hold, part),
            Side::Foil => (part, hold),
        };
        Ok(Doc {
            version,
            revision,
            uuid: uuid.to_string(),
            date: crate::chit::iso_millis(date_ms)?,
            memo: memo.map(str::to_string),
            agree: agree.to_string(),
            stock,
            foil,
        })
    }

    /// Its JSON, with no null anywhere in it (a certificate or terms stored with a null field
    /// are signed without it, as PostgreSQL's `jsonb_strip_nulls` writes them).
    pub fn to_json(&self) -> Value {
        fn strip(v: Value) -> Value {
            match v {
                Value::Object(m) => Value::Object(
                    m.into_iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k, strip(v)))
                        .collect(),
                ),
                Value::Array(a) => Value::Array(a.into_iter().map(strip).collect()),
                other => other,
            }
        }
        strip(serde_json::to_value(self).expect("a tally document always serializes"))
    }
}

/// Deserializes `v` as `T`, refusing anything but a JSON object (serde would take an array).
fn from_object<T: serde::de::DeserializeOwned>(v: &Value, what: &str, hint: &str) -> Result<T> {
    if !v.is_object() {
        return Err(Error::value(format!(
            "{what} must be a JSON object, not {v}"
        )));
    }
    serde_json::from_value(v.clone()).map_err(|e| Error::value(format!("{what}: {e}{hint}")))
}

pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

pub(crate) fn is_utc_millis(s: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS.mmmZ
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

impl TallyDoc {
    pub fn from_json(v: &Value) -> Result<TallyDoc> {
        let d: TallyDoc = from_object(v, "tally document", "")?;
        d.check()?;
        Ok(d)
    }

    pub fn check(&self) -> Result<()> {
        if self.version != 1 {
            return Err(Error::value(format!(
                "tally version {} is not supported (only 1)",
                self.version
            )));
        }
        if self.revision < 1 {
            return Err(Error::value(format!(
                "tally revision must be >= 1, not {}",
                self.revision
            )));
        }
        if !is_uuid(&self.uuid) {
            return Err(Error::value(format!(
                "tally uuid {:?} is not a lower-case UUID",
                self.uuid
            )));
        }
        if !is_utc_millis(&self.date) {
            return Err(Error::value(format!(
                "tally date {:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ",
                self.date
            )));
        }
        crate::codec::b64url_decode_array::<32>(&self.agree, "contract reference")
            .map_err(|e| Error::value(e.to_string()))?;
        self.stock.cert.check()?;
        self.foil.cert.check()?;
        self.stock.terms.check()?;
        self.foil.terms.check()?;
        let (s, f) = (&self.stock.cert.chad, &self.foil.cert.chad);
        if s.cuid == f.cuid && s.agent == f.agent {
            return Err(Error::value("a tally needs two different parties"));
        }
        Ok(())
    }

    pub fn party(&self, side: Side) -> &TallyParty {
        match side {
            Side::Stock => &self.stock,
            Side::Foil => &self.foil,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a TallyDoc always serializes")
    }

    /// Verifies `sig` as `side`'s signature over this document.
    pub fn verify(&self, side: Side, sig: &str) -> Result<()> {
        self.verify_with(side, sig, sign::verify_json)
    }

    /// [`TallyDoc::verify`] with another verifier (e.g. a [`sign::VerifyCache`]).
    pub fn verify_with(
        &self,
        side: Side,
        sig: &str,
        check: impl FnOnce(&str, &Value, &str) -> Result<()>,
    ) -> Result<()> {
        check(&self.party(side).cert.public, &self.to_json(), sig).map_err(|e| match e {
            Error::BadSignature(_) => Error::BadSignature(format!(
                "the {side} signature on tally {} was not made by {}'s key",
                self.uuid,
                self.party(side).cert.chad.cuid
            )),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::KeyPair;
    use serde_json::json;

    #[test]
    fn transition_table() {
        use Status::*;
        let allowed = [
            (Draft, Offer),
            (Draft, Void),
            (Offer, Draft),
            (Offer, Open),
            (Offer, Void),
            (Void, Offer),
            (Void, Open),
            (Open, Closing),
            (Open, Closed),
            (Closing, Closed),
        ];
        for from in ALL_STATUSES {
            for to in ALL_STATUSES {
                let expect = from == to || allowed.contains(&(from, to));
                assert_eq!(transition_allowed(from, to), expect, "{from} -> {to}");
                assert_eq!(check_transition(from, to).is_ok(), expect);
            }
        }
        assert_eq!(
            check_transition(Closed, Open).unwrap_err().to_string(),
            "a tally cannot go from closed to open"
        );
    }

    #[test]
    fn status_and_side_parse() {
        for s in ALL_STATUSES {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("opened".parse::<Status>().is_err());
        assert_eq!("stock".parse::<Side>().unwrap().other(), Side::Foil);
        assert!("Stock".parse::<Side>().is_err());
    }

    #[test]
    fn state_labels() {
        assert_eq!(state_label(Status::Draft, false, false, false), "draft");
        assert_eq!(state_label(Status::Draft, false, false, true), "P.draft");
        assert_eq!(state_label(Status::Offer, true, false, true), "H.offer");
        assert_eq!(state_label(Status::Offer, false, true, true), "P.offer");
        assert_eq!(state_label(Status::Open, true, true, true), "open");
    }

    #[test]
    fn trading_variables_constraints() {
        let ok = TradingVars {
            target: 3,
            bound: 7,
            reward: 0.02,
            clutch: 0.04,
        };
        ok.check().unwrap();
        TradingVars::default().check().unwrap();
        let bad = [
            TradingVars { target: -1, ..ok },
            TradingVars { bound: 2, ..ok },
            TradingVars { reward: 1.5, ..ok },
            TradingVars {
                clutch: -1.01,
                ..ok
            },
            TradingVars {
                reward: -0.5,
                clutch: 0.2,
                ..ok
            },
        ];
        for b in bad {
            assert!(b.check().is_err(), "{b:?} accepted");
        }
        TradingVars {
            reward: -0.5,
            clutch: 0.5,
            ..ok
        }
        .check()
        .unwrap();
    }

    #[test]
    fn terms_validation() {
        assert_eq!(
            Terms::from_json(&json!({"limit": 5000})).unwrap().limit,
            Some(5000)
        );
        assert_eq!(Terms::from_json(&json!({})).unwrap(), Terms::default());
        assert!(Terms::from_json(&json!({"limit": -1})).is_err());
        assert!(Terms::from_json(&json!({"limit": 1.5})).is_err());
        assert!(Terms::from_json(&json!({"limmit": 5})).is_err());
        assert!(Terms::from_json(&json!([1])).is_err());
    }

    fn cert(name: &str, cuid: &str, site: &str) -> (Cert, KeyPair) {
        let kp = KeyPair::from_phrase(name);
        let c = Cert {
            chad: ChipAddress {
                cuid: cuid.into(),
                agent: KeyPair::from_phrase(site).public_b64(),
                host: Some("127.0.0.1".into()),
                port: Some(65430),
            },
            name: name.into(),
            public: kp.public_b64(),
            kind: Some("p".into()),
        };
        (c, kp)
    }

    fn doc() -> (TallyDoc, KeyPair, KeyPair) {
        let (sc, sk) = cert("Vera Vendor", "vera", "site-a");
        let (fc, fk) = cert("Cal Client", "cal", "site-a");
        let d = TallyDoc {
            version: 1,
            revision: 1,
            uuid: "0b6f2a52-62cf-4c53-9c64-0b2ad4c3e1a7".into(),
            date: "2026-11-21T10:00:00.000Z".into(),
            memo: Some("groceries".into()),
            agree: crate::codec::b64url_encode(&[7u8; 32]),
            stock: TallyParty {
                cert: sc,
                terms: Terms {
                    limit: Some(100_000),
                    call: None,
                },
            },
            foil: TallyParty {
                cert: fc,
                terms: Terms::default(),
            },
        };
        (d, sk, fk)
    }

    #[test]
    fn tally_document_signatures() {
        let (d, sk, fk) = doc();
        let v = d.to_json();
        assert_eq!(TallyDoc::from_json(&v).unwrap(), d);
        let ssig = sk.sign_json(&v).unwrap();
        let fsig = fk.sign_json(&v).unwrap();
        d.verify(Side::Stock, &ssig).unwrap();
        d.verify(Side::Foil, &fsig).unwrap();
        // A signature by the wrong party, or over another revision, is refused.
        assert!(matches!(
            d.verify(Side::Stock, &fsig),
            Err(Error::BadSignature(_))
        ));
        let mut d2 = d.clone();
        d2.revision = 2;
        assert!(matches!(
            d2.verify(Side::Stock, &ssig),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn a_half_builds_the_document_both_sign() {
        let (d, _, _) = doc();
        let v = d.to_json();
        let part = |p: &TallyParty| HalfParty {
            cert: Some(serde_json::to_value(&p.cert).unwrap()),
            terms: serde_json::to_value(&p.terms).unwrap(),
        };
        // 2026-11-21T10:00:00.000Z
        let ms = 1_795_255_200_000;
        let half = |side: Side| {
            let (hold, other) = match side {
                Side::Stock => (&d.stock, &d.foil),
                Side::Foil => (&d.foil, &d.stock),
            };
            HalfDoc::from_half(
                1,
                1,
                &d.uuid,
                ms,
                d.memo.as_deref(),
                &d.agree,
                side,
                part(hold),
                part(other),
            )
            .unwrap()
            .to_json()
        };
        // both halves build the signed document itself
        assert_eq!(half(Side::Stock), v);
        assert_eq!(half(Side::Foil), v);
        assert_eq!(TallyDoc::from_json(&half(Side::Foil)).unwrap(), d);
        // a draft without a partner: no certificate on the other side, no memo, no nulls
        let mut cert = serde_json::to_value(&d.stock.cert).unwrap();
        cert["nickname"] = Value::Null;
        let draft = HalfDoc::from_half(
            1,
            2,
            &d.uuid,
            ms,
            None,
            &d.agree,
            Side::Stock,
            HalfParty {
                cert: Some(cert),
                terms: json!({"limit": 5, "call": null}),
            },
            HalfParty {
                cert: None,
                terms: json!({}),
            },
        )
        .unwrap()
        .to_json();
        assert_eq!(draft["foil"], json!({"terms": {}}));
        assert_eq!(draft["stock"]["terms"], json!({"limit": 5}));
        assert_eq!(draft["stock"]["cert"], v["stock"]["cert"]);
        assert!(draft.get("memo").is_none());
        assert_eq!(draft["revision"], json!(2));
        assert!(TallyDoc::from_json(&draft).is_err());
    }

    #[test]
    fn tally_document_validation() {
        let (d, _, _) = doc();
        let mut v = d.to_json();
        v["extra"] = json!(1);
        assert!(TallyDoc::from_json(&v).is_err());
        let mut bad = d.clone();
        bad.date = "2026-11-21 10:00:00".into();
        assert!(bad.check().is_err());
        let mut bad = d.clone();
        bad.uuid = "not-a-uuid".into();
        assert!(bad.check().is_err());
        let mut bad = d.clone();
        bad.foil.cert.chad = bad.stock.cert.chad.clone();
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("two different parties"));
        let mut bad = d;
        bad.agree = "short".into();
        assert!(bad.check().is_err());
    }
}
