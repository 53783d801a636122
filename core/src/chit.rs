//! Chits: signed IOUs on an open tally, and the hash chain that orders them.
//!
//! A chit moves value between the two halves of a tally. Its issuer (`by`) is the side that
//! pledges value: the issuer's balance goes down by `units`, the other side's goes up. Units are
//! milliCHIPs (1 CHIP = 1000). A `set` chit carries no units: it changes its issuer's trading
//! variables, or asks to close the tally.
//!
//! Every good chit gets a place in its tally's chain: `index` (1, 2, ...), the hash of the chit
//! before it (`prior`; the tally digest for index 1), and its own hash, SHA-256 of the canonical
//! JSON of the chit document plus `{index, prior, sign}`. Both halves of a tally end with the
//! same chain.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

use crate::tally::{Side, TradingVars};
use crate::{canon, codec, sign, Error, Result};

/// What a chit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChitType {
    /// A transaction: a payment the issuer signs, or an invoice the other side asks it to sign.
    Tran,
    /// A setting: the issuer's trading variables, or a request to close.
    Set,
    /// Part of a credit lift (written by lifts only).
    Lift,
}

impl ChitType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChitType::Tran => "tran",
            ChitType::Set => "set",
            ChitType::Lift => "lift",
        }
    }
}

impl FromStr for ChitType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tran" => Ok(ChitType::Tran),
            "set" => Ok(ChitType::Set),
            "lift" => Ok(ChitType::Lift),
            _ => Err(Error::value(format!(
                "chit type must be tran, set or lift, not {s:?}"
            ))),
        }
    }
}

/// The status of a chit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChitStatus {
    /// Asked for (an invoice) or reserved (a lift in progress); moves no value yet.
    Pend,
    /// Signed by its issuer (or committed by its lift): final.
    Good,
    /// Declined or withdrawn: final.
    Void,
}

pub const ALL_CHIT_STATUSES: [ChitStatus; 3] =
    [ChitStatus::Pend, ChitStatus::Good, ChitStatus::Void];

impl ChitStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChitStatus::Pend => "pend",
            ChitStatus::Good => "good",
            ChitStatus::Void => "void",
        }
    }
}

impl FromStr for ChitStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL_CHIT_STATUSES
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::value(format!("{s:?} is not a chit status")))
    }
}

impl fmt::Display for ChitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a chit may move from `from` to `to`: only a pending chit changes (to good when its
/// issuer signs, to void when declined or withdrawn); good and void are final.
pub fn chit_transition_allowed(from: ChitStatus, to: ChitStatus) -> bool {
    from == to || (from == ChitStatus::Pend && matches!(to, ChitStatus::Good | ChitStatus::Void))
}

/// What a `set` chit asks for. Trading variables left out keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clutch: Option<f64>,
    /// `true`: close the tally once its balance is zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<bool>,
}

impl Settings {
    pub fn from_json(v: &Value) -> Result<Settings> {
        if !v.is_object() {
            return Err(Error::value(format!(
                "settings must be a JSON object, not {v}"
            )));
        }
        let s: Settings = serde_json::from_value(v.clone()).map_err(|e| {
            Error::value(format!(
                "settings: {e} (allowed: target, bound, reward, clutch, close)"
            ))
        })?;
        if s == Settings::default() {
            return Err(Error::value("a setting chit must change something"));
        }
        if s.close == Some(false) {
            return Err(Error::value("close can only be true"));
        }
        Ok(s)
    }

    /// The trading variables after applying these settings to `current`, checked.
    pub fn apply(&self, current: TradingVars) -> Result<TradingVars> {
        let next = TradingVars {
            target: self.target.unwrap_or(current.target),
            bound: self.bound.unwrap_or(current.bound),
            reward: self.reward.unwrap_or(current.reward),
            clutch: self.clutch.unwrap_or(current.clutch),
        };
        next.check()?;
        Ok(next)
    }
}

/// The document a chit's issuer signs (over its canonical JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChitDoc {
    /// The tally's uuid.
    pub tally: String,
    /// The issuer: the side that pledges value.
    pub by: Side,
    #[serde(rename = "type")]
    pub kind: ChitType,
    pub uuid: String,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC.
    pub date: String,
    /// milliCHIPs, >= 1; absent for a `set` chit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<i64>,
    /// Free reference data for `tran`; the [`Settings`] for `set`; the lift for `lift`.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// Milliseconds since 1970 (UTC) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the date form of documents.
pub fn iso_millis(ms: i64) -> Result<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .filter(|d| (0..=9999).contains(&chrono::Datelike::year(d)))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .ok_or_else(|| Error::value(format!("{ms} ms is not a date between years 0 and 9999")))
}

/// The milliseconds since 1970 (UTC) of a document date (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
pub fn millis_of(date: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(date)
        .map(|d| d.timestamp_millis())
        .map_err(|e| Error::value(format!("{date:?} is not a date: {e}")))
}

/// How far from now a chit may be dated: an hour either way.
pub const DATE_SKEW_MS: i64 = 3_600_000;

/// Whether a chit dated `date_ms` may be issued at `now_ms` (both in milliseconds since 1970):
/// no more than [`DATE_SKEW_MS`] from it. The one rule of a chit's date: a single chit
/// (`chips._chit_issue`, through `chips._chit_dated_near`) and a batch written at once both ask it.
pub fn dated_near(date_ms: i64, now_ms: i64) -> bool {
    date_ms.abs_diff(now_ms) <= DATE_SKEW_MS as u64
}

/// What a chit of `units` issued by side `by` does to the balance of the half on side `holder`:
/// the issuer's balance goes down, the other half's up. The one rule of a chit's sign: chit
/// documents (`ChitDoc::value_for`) and the database's sums over chit rows
/// (`chips._chit_change`) both use it.
pub fn change(holder: Side, by: Side, units: i64) -> i64 {
    if by == holder {
        -units
    } else {
        units
    }
}

/// The most the holder of a tally half may pay now: its balance, plus what lifts under way may
/// still take from it (`held`, at most 0), plus the credit `limit` its partner granted. A
/// payment of more would take the balance past the limit. The one rule of the limit: one
/// payment (`chips._check_limit`) and the writer of payments at once (`chips._pay_bulk` and
/// `chips._pay_one`, extension/src/pay.rs) both use it.
pub fn pay_room(balance: i64, held: i64, limit: i64) -> i64 {
    balance.saturating_add(held).saturating_add(limit)
}

/// A fresh random (version 4) uuid.
pub fn random_uuid() -> [u8; 16] {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// A uuid as documents write it: lower-case hex in 8-4-4-4-12 groups.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The most units one chit may carry: 10^15 milliCHIPs (a trillion CHIPs). Sums of any realistic
/// number of chits stay far inside i64.
pub const MAX_UNITS: i64 = 1_000_000_000_000_000;

impl ChitDoc {
    /// The lift chit of `lift` on `tally`: issued by `by` (the creditor's side, whose balance
    /// goes down), unsigned (the lift record is its authority), referring to the lift.
    pub fn lift(
        tally: &str,
        by: Side,
        uuid: &str,
        date_ms: i64,
        units: i64,
        lift: &str,
    ) -> Result<ChitDoc> {
        let doc = ChitDoc {
            tally: tally.to_string(),
            by,
            kind: ChitType::Lift,
            uuid: uuid.to_string(),
            date: iso_millis(date_ms)?,
            units: Some(units),
            reference: Some(serde_json::json!({ "lift": lift })),
            memo: None,
        };
        doc.check()?;
        Ok(doc)
    }

    pub fn from_json(v: &Value) -> Result<ChitDoc> {
        if !v.is_object() {
            return Err(Error::value(format!(
                "a chit must be a JSON object, not {v}"
            )));
        }
        let d: ChitDoc =
            serde_json::from_value(v.clone()).map_err(|e| Error::value(format!("chit: {e}")))?;
        d.check()?;
        Ok(d)
    }

    pub fn check(&self) -> Result<()> {
        if !crate::tally::is_uuid(&self.tally) || !crate::tally::is_uuid(&self.uuid) {
            return Err(Error::value("chit tally and uuid must be lower-case UUIDs"));
        }
        if !crate::tally::is_utc_millis(&self.date) {
            return Err(Error::value(format!(
                "chit date {:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ",
                self.date
            )));
        }
        match (self.kind, self.units) {
            (ChitType::Set, None) => {
                Settings::from_json(self.reference.as_ref().unwrap_or(&Value::Null))?;
            }
            (ChitType::Set, Some(_)) => {
                return Err(Error::value("a setting chit carries no units"))
            }
            (_, Some(u)) if (1..=MAX_UNITS).contains(&u) => {}
            (_, Some(u)) => {
                return Err(Error::value(format!(
                    "units must be between 1 and {MAX_UNITS}, not {u}"
                )))
            }
            (_, None) => return Err(Error::value("a transaction chit needs units")),
        }
        if let Some(m) = &self.memo {
            if m.chars().count() > 1000 {
                return Err(Error::value("memo is longer than 1000 characters"));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a ChitDoc always serializes")
    }

    /// The change of the `holder` half's balance when this chit is good: the issuer pledges
    /// value, so its balance goes down.
    pub fn value_for(&self, holder: Side) -> i64 {
        change(holder, self.by, self.units.unwrap_or(0))
    }

    /// Verifies the issuer's signature with the issuer's public key.
    pub fn verify(&self, issuer_key: &str, signature: &str) -> Result<()> {
        self.verify_with(issuer_key, signature, sign::verify_json)
    }

    /// [`ChitDoc::verify`] with another verifier (e.g. a [`sign::VerifyCache`]).
    pub fn verify_with(
        &self,
        issuer_key: &str,
        signature: &str,
        check: impl FnOnce(&str, &Value, &str) -> Result<()>,
    ) -> Result<()> {
        check(issuer_key, &self.to_json(), signature).map_err(|e| match e {
            Error::BadSignature(_) => Error::BadSignature(format!(
                "chit {} was not signed by its issuer ({})",
                self.uuid, self.by
            )),
            other => other,
        })
    }

    /// The chain hash of this chit at `index`, after the block whose hash is `prior`.
    pub fn chain_hash(
        &self,
        index: i64,
        prior: &[u8],
        signature: Option<&str>,
    ) -> Result<[u8; 32]> {
        if index < 1 {
            return Err(Error::value(format!(
                "chain index must be >= 1, not {index}"
            )));
        }
        if prior.len() != 32 {
            return Err(Error::value("the prior hash must be 32 bytes"));
        }
        let mut v = self.to_json();
        let o = v.as_object_mut().expect("a chit is an object");
        o.insert("index".into(), Value::from(index));
        o.insert("prior".into(), Value::from(codec::b64url_encode(prior)));
        if let Some(s) = signature {
            o.insert("sign".into(), Value::from(s));
        }
        canon::digest(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::KeyPair;
    use serde_json::json;

    #[test]
    fn millis_of_reads_what_iso_millis_writes() {
        for ms in [0, 1_764_000_000_123, 253_402_300_799_999] {
            assert_eq!(millis_of(&iso_millis(ms).unwrap()).unwrap(), ms);
        }
        assert!(millis_of("yesterday").is_err());
    }

    #[test]
    fn a_chit_may_be_dated_an_hour_either_way() {
        let now = 1_764_000_000_000;
        for (date, ok) in [
            (now, true),
            (now + DATE_SKEW_MS, true),
            (now - DATE_SKEW_MS, true),
            (now + DATE_SKEW_MS + 1, false),
            (now - DATE_SKEW_MS - 1, false),
        ] {
            assert_eq!(dated_near(date, now), ok, "{}", date - now);
        }
        assert!(!dated_near(i64::MIN, i64::MAX));
    }

    #[test]
    fn pay_room_is_balance_held_and_limit() {
        assert_eq!(pay_room(0, 0, 0), 0);
        assert_eq!(pay_room(500, 0, 1000), 1500);
        // a lift under way holds back what it may still take
        assert_eq!(pay_room(500, -200, 1000), 1300);
        // already past the limit (a limit lowered since): nothing may be paid
        assert!(pay_room(-1500, 0, 1000) < 0);
        assert_eq!(pay_room(i64::MAX, 0, i64::MAX), i64::MAX);
    }

    fn doc(by: Side, units: Option<i64>) -> ChitDoc {
        ChitDoc {
            tally: "0b6f2a52-62cf-4c53-9c64-0b2ad4c3e1a7".into(),
            by,
            kind: if units.is_some() {
                ChitType::Tran
            } else {
                ChitType::Set
            },
            uuid: "9d1f6a52-62cf-4c53-9c64-0b2ad4c3e1a7".into(),
            date: "2026-11-21T10:00:00.000Z".into(),
            units,
            reference: units.is_none().then(|| json!({"target": 3, "bound": 7})),
            memo: Some("lunch".into()),
        }
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso_millis(1_795_252_345_678).unwrap(),
            "2026-11-21T09:12:25.678Z"
        );
        assert_eq!(iso_millis(-1).unwrap(), "1969-12-31T23:59:59.999Z");
        assert!(iso_millis(i64::MAX).is_err());
        assert!(crate::tally::is_utc_millis(
            &iso_millis(1_795_252_345_678).unwrap()
        ));
    }

    #[test]
    fn transitions() {
        use ChitStatus::*;
        for from in ALL_CHIT_STATUSES {
            for to in ALL_CHIT_STATUSES {
                let expect = from == to || (from == Pend && to != Pend);
                assert_eq!(chit_transition_allowed(from, to), expect, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn value_follows_the_issuer() {
        let d = doc(Side::Foil, Some(1500));
        assert_eq!(
            d.value_for(Side::Foil),
            -1500,
            "the payer's balance goes down"
        );
        assert_eq!(d.value_for(Side::Stock), 1500);
        assert_eq!(doc(Side::Stock, None).value_for(Side::Foil), 0);
        assert_eq!(change(Side::Stock, Side::Stock, 7), -7);
        assert_eq!(change(Side::Stock, Side::Foil, 7), 7);
    }

    #[test]
    fn validation() {
        doc(Side::Foil, Some(1)).check().unwrap();
        doc(Side::Foil, None).check().unwrap();
        for bad in [Some(0), Some(-5), Some(MAX_UNITS + 1)] {
            assert!(doc(Side::Foil, bad).check().is_err(), "{bad:?}");
        }
        let mut d = doc(Side::Foil, None);
        d.reference = Some(json!({"target": 9, "bound": 7, "color": 1}));
        assert!(d.check().is_err());
        d.reference = Some(json!({}));
        assert!(d.check().is_err(), "a setting must change something");
        d.reference = None;
        assert!(d.check().is_err());
        let mut d = doc(Side::Foil, Some(5));
        d.kind = ChitType::Set;
        assert!(d.check().is_err());
        let mut v = doc(Side::Foil, Some(5)).to_json();
        v["extra"] = json!(1);
        assert!(ChitDoc::from_json(&v).is_err());
        assert!(ChitDoc::from_json(&json!([1])).is_err());
    }

    #[test]
    fn settings_apply_and_check() {
        let cur = TradingVars::default();
        let s = Settings::from_json(&json!({"target": 3, "bound": 7})).unwrap();
        assert_eq!(
            s.apply(cur).unwrap(),
            TradingVars {
                target: 3,
                bound: 7,
                reward: 0.0,
                clutch: 0.0
            }
        );
        let s = Settings::from_json(&json!({"target": 9})).unwrap();
        assert!(s.apply(cur).is_err(), "target above bound");
        assert!(Settings::from_json(&json!({"close": false})).is_err());
        assert_eq!(
            Settings::from_json(&json!({"close": true})).unwrap().close,
            Some(true)
        );
    }

    #[test]
    fn signatures_and_chain_hashes() {
        let payer = KeyPair::from_phrase("payer");
        let d = doc(Side::Foil, Some(1500));
        let sig = payer.sign_json(&d.to_json()).unwrap();
        d.verify(&payer.public_b64(), &sig).unwrap();
        let mut other = d.clone();
        other.units = Some(15000);
        assert!(matches!(
            other.verify(&payer.public_b64(), &sig),
            Err(Error::BadSignature(_))
        ));

        let genesis = [9u8; 32];
        let h1 = d.chain_hash(1, &genesis, Some(&sig)).unwrap();
        assert_eq!(
            h1,
            d.chain_hash(1, &genesis, Some(&sig)).unwrap(),
            "deterministic"
        );
        assert_ne!(
            h1,
            d.chain_hash(2, &genesis, Some(&sig)).unwrap(),
            "index is hashed"
        );
        assert_ne!(
            h1,
            d.chain_hash(1, &[8u8; 32], Some(&sig)).unwrap(),
            "prior is hashed"
        );
        assert_ne!(
            h1,
            other.chain_hash(1, &genesis, Some(&sig)).unwrap(),
            "content is hashed"
        );
        // The hash is SHA-256 of the canonical chit plus index, prior and sign.
        let mut v = d.to_json();
        v["index"] = json!(1);
        v["prior"] = json!(codec::b64url_encode(&genesis));
        v["sign"] = json!(sig);
        assert_eq!(h1, canon::digest(&v).unwrap());
        assert!(d.chain_hash(0, &genesis, None).is_err());
    }
}
