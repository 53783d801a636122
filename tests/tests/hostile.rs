//! Random and hostile arguments to every public SQL function: each call either works or fails
//! with one of the SQLSTATEs the API documents (never an internal error), and a refused call
//! changes nothing (a fingerprint of every chips table is compared before and after).

use chips_tests::{sqlstate, Cluster, Site};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// The SQLSTATEs docs/sql-api.md lists, plus PostgreSQL's own for values a type refuses
/// (numeric out of range, bad date, null where not allowed).
const DOCUMENTED: [&str; 13] = [
    "22023", "22P02", "23505", "23514", "28000", "42501", "42704", "55000", "54000", "22003",
    "22007", "22008", "22004",
];

const FINGERPRINT: &str = "SELECT md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM (
    SELECT t::text AS x FROM chips.tallies t UNION ALL SELECT c::text FROM chips.chits c
    UNION ALL SELECT u::text FROM chips.users u UNION ALL SELECT k::text FROM chips.tickets k
    UNION ALL SELECT o::text FROM chips.outbox o UNION ALL SELECT i::text FROM chips.inbox i
    UNION ALL SELECT a::text FROM chips.agents a UNION ALL SELECT c::text FROM chips.contracts c
    UNION ALL SELECT l::text FROM chips.lifts l UNION ALL SELECT x::text FROM chips.lift_settings x
    UNION ALL SELECT s::text FROM chips.admin_sessions s) s";

#[derive(Clone, Copy)]
enum Arg {
    Text,
    Uuid,
    Json,
    Big,
    Int,
    Bool,
    Interval,
}

struct Gen {
    rng: rand::rngs::StdRng,
    known_uuids: Vec<Uuid>,
}

impl Gen {
    fn text(&mut self) -> Option<String> {
        let pool = [
            "",
            "stock",
            "foil",
            "open",
            "pend",
            "good",
            "'; DROP TABLE chips.tallies; --",
            "\" OR 1=1 --",
            "\\x00\\u0000",
            "☃ Zoë",
            "p1000",
            "ann",
            "AAAA",
            "-_8",
            "chips_user",
            "postgres",
            "$$; SELECT pg_sleep(10); $$",
        ];
        match self.rng.gen_range(0..6) {
            0 => None,
            1 => Some("x".repeat(self.rng.gen_range(0..5000))),
            2 => Some(
                (0..self.rng.gen_range(1..60))
                    .map(|_| self.rng.gen_range(' '..='~'))
                    .collect(),
            ),
            3 => Some(
                chips_core::sign::KeyPair::from_phrase(&self.rng.gen::<u64>().to_string())
                    .public_b64(),
            ),
            _ => Some(pool[self.rng.gen_range(0..pool.len())].to_string()),
        }
    }

    fn json(&mut self, depth: u32) -> Option<Value> {
        let v = match self.rng.gen_range(0..9) {
            0 => return None,
            1 => Value::Null,
            2 => json!(self.rng.gen::<i64>()),
            3 => json!(self.rng.gen::<f64>() * 1e20 - 5e19),
            4 => json!(self.text()),
            5 if depth < 3 => Value::Array(
                (0..self.rng.gen_range(0..4))
                    .filter_map(|_| self.json(depth + 1))
                    .collect(),
            ),
            _ if depth < 3 => {
                let keys = [
                    "limit", "call", "target", "bound", "reward", "clutch", "close", "token",
                    "chad", "cuid", "agent", "tally", "by", "type", "uuid", "date", "units", "ref",
                    "memo", "title",
                ];
                let mut m = serde_json::Map::new();
                for _ in 0..self.rng.gen_range(0..6) {
                    let k = keys[self.rng.gen_range(0..keys.len())];
                    m.insert(k.into(), self.json(depth + 1).unwrap_or(Value::Null));
                }
                Value::Object(m)
            }
            _ => json!(true),
        };
        Some(v)
    }

    fn value(&mut self, a: Arg) -> Box<dyn ToSql + Sync + Send> {
        match a {
            Arg::Text => Box::new(self.text()),
            Arg::Uuid => Box::new(match self.rng.gen_range(0..3) {
                0 => None,
                1 => Some(Uuid::new_v4()),
                _ => Some(self.known_uuids[self.rng.gen_range(0..self.known_uuids.len())]),
            }),
            Arg::Json => Box::new(self.json(0)),
            Arg::Big => Box::new(match self.rng.gen_range(0..5) {
                0 => None,
                1 => Some(i64::MIN),
                2 => Some(i64::MAX),
                3 => Some(self.rng.gen_range(-10..10)),
                _ => Some(self.rng.gen::<i64>()),
            }),
            Arg::Int => Box::new(match self.rng.gen_range(0..4) {
                0 => None,
                1 => Some(i32::MIN),
                2 => Some(self.rng.gen_range(-5..70000)),
                _ => Some(i32::MAX),
            }),
            Arg::Bool => Box::new(if self.rng.gen() {
                None
            } else {
                Some(self.rng.gen::<bool>())
            }),
            Arg::Interval => Box::new(
                [
                    "-1 day",
                    "0",
                    "1 second",
                    "48 hours",
                    "1000 years",
                    "nonsense",
                    "P1D",
                ][self.rng.gen_range(0..7)]
                .to_string(),
            ),
        }
    }
}

/// (call with $n placeholders, argument kinds); interval arguments are passed as text and cast.
fn calls() -> Vec<(&'static str, Vec<Arg>)> {
    use Arg::*;
    vec![
        (
            "SELECT chips.tally_create($1, $2, $3, $4, $5)",
            vec![Text, Text, Json, Json, Text],
        ),
        (
            "SELECT chips.tally_update($1, $2, $3, $4, $5)",
            vec![Uuid, Json, Json, Text, Text],
        ),
        ("SELECT chips.tally_json($1)", vec![Uuid]),
        (
            "SELECT chips.ticket_create($1, $2, $3::text::interval)",
            vec![Uuid, Bool, Interval],
        ),
        ("SELECT chips.ticket_redeem($1)", vec![Json]),
        ("SELECT chips.tally_offer($1, $2)", vec![Uuid, Text]),
        ("SELECT chips.tally_accept($1, $2)", vec![Uuid, Text]),
        ("SELECT chips.tally_counter($1)", vec![Uuid]),
        ("SELECT chips.tally_void($1)", vec![Uuid]),
        ("SELECT chips.tally_close($1)", vec![Uuid]),
        (
            "SELECT chips.chit_json($1, $2, $3, $4)",
            vec![Uuid, Big, Text, Json],
        ),
        ("SELECT chips.chit_issue($1, $2)", vec![Json, Text]),
        (
            "SELECT chips.chit_invoice($1, $2, $3, $4)",
            vec![Uuid, Big, Text, Json],
        ),
        ("SELECT chips.chit_sign($1, $2, $3)", vec![Uuid, Uuid, Text]),
        ("SELECT chips.chit_decline($1, $2)", vec![Uuid, Uuid]),
        (
            "SELECT chips.pay($1, $2, $3, $4)",
            vec![Uuid, Big, Text, Json],
        ),
        (
            "SELECT * FROM chips.lift_through_me($1, $2, $3)",
            vec![Bool, Big, Int],
        ),
        ("SELECT * FROM chips.events_since($1, $2)", vec![Big, Int]),
        ("SELECT * FROM chips.chits_list($1, $2)", vec![Uuid, Int]),
        ("SELECT * FROM chips.lifts_list($1)", vec![Int]),
        (
            "SELECT chips.tally_trade($1, $2, $3)",
            vec![Uuid, Json, Text],
        ),
        (
            "SELECT chips.pay_address($1, $2, $3, $4)",
            vec![Json, Big, Text, Json],
        ),
        ("SELECT chips.pay_address_json($1)", vec![Uuid]),
        ("SELECT chips.pay_address_sign($1, $2)", vec![Uuid, Text]),
        ("SELECT * FROM chips.route_check($1, $2)", vec![Json, Big]),
        ("SELECT * FROM chips.route_check_result($1)", vec![Text]),
    ]
}

fn admin_calls() -> Vec<(&'static str, Vec<Arg>)> {
    use Arg::*;
    vec![
        (
            "SELECT chips.agent_register($1, $2, $3, $4)",
            vec![Text, Text, Int, Bool],
        ),
        (
            "SELECT chips.user_create($1, $2, $3, $4, $5, NULL, $6)",
            vec![Text, Text, Text, Text, Text, Bool],
        ),
        ("SELECT chips.user_set_key($1, $2)", vec![Text, Text]),
        ("SELECT chips.user_set_status($1, $2)", vec![Text, Text]),
        ("SELECT chips.contract_add($1, $2)", vec![Json, Text]),
        ("SELECT chips.peer_receive($1, $2)", vec![Text, Json]),
        (
            "SELECT * FROM chips.outbox_claim($1, $2::text::interval, NULL)",
            vec![Int, Interval],
        ),
        ("SELECT chips.chain_sync($1)", vec![Uuid]),
        ("SELECT * FROM chips.tally_audit($1)", vec![Uuid]),
        ("SELECT chips.canonical_json($1)", vec![Json]),
        ("SELECT chips.tally_doc_check($1)", vec![Json]),
        ("SELECT chips.chit_doc_check($1)", vec![Json]),
        (
            "SELECT chips.verify_signature($1, $2, $3)",
            vec![Text, Json, Text],
        ),
        ("SELECT chips.address_parse($1)", vec![Text]),
        ("SELECT chips.settings_check($1)", vec![Json]),
        (
            "SELECT chips.trading_check($1, $2, 0.5, 0.5)",
            vec![Big, Big],
        ),
        (
            "SELECT * FROM chips.clearing_plan($1, $2, $3, $4)",
            vec![Big, Int, Int, Text],
        ),
        (
            "SELECT * FROM chips.clear($1, $2, $3, $4)",
            vec![Bool, Big, Int, Text],
        ),
        (
            "SELECT chips.clearing_configure($1, $2::text::interval, $3, $4)",
            vec![Bool, Interval, Big, Int],
        ),
        (
            "SELECT chips.login_ticket($1, $2::text::interval)",
            vec![Text, Interval],
        ),
        (
            "SELECT chips.login_register($1, $2, $3)",
            vec![Text, Text, Text],
        ),
        ("SELECT chips.login_challenge($1, $2)", vec![Text, Text]),
        (
            "SELECT chips.login_finish($1, $2, $3::text::interval)",
            vec![Text, Text, Interval],
        ),
        ("SELECT chips.login_end($1)", vec![Text]),
        ("SELECT chips.login_revoke($1, $2)", vec![Text, Text]),
        (
            "SELECT chips.events_prune($1::text::interval)",
            vec![Interval],
        ),
        (
            "SELECT chips.file_add(convert_to($1, 'UTF8'), $2)",
            vec![Text, Text],
        ),
        ("SELECT * FROM chips.document($1)", vec![Text]),
        (
            "SELECT chips.admin_ticket($1::text::interval)",
            vec![Interval],
        ),
        (
            "SELECT chips.admin_login($1, $2::text::interval)",
            vec![Text, Interval],
        ),
        ("SELECT chips.admin_overview($1, $2)", vec![Text, Int]),
        (
            "SELECT chips.admin_user_add($1, $2, $3)",
            vec![Text, Text, Text],
        ),
        (
            "SELECT chips.admin_login_ticket($1, $2, $3::text::interval)",
            vec![Text, Text, Interval],
        ),
        ("SELECT chips.admin_logout($1)", vec![Text]),
        (
            "SELECT chips.lift_configure($1::text::interval, $2::text::interval, $3::text::interval, NULL, $4, $5)",
            vec![Interval, Interval, Interval, Int, Int],
        ),
        ("SELECT chips.lift_circles($1, $2)", vec![Big, Int]),
        ("SELECT * FROM chips.lift_tick()", vec![]),
    ]
}

async fn fingerprint(s: &Site) -> String {
    s.admin.query_one(FINGERPRINT, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn hostile_arguments_get_documented_errors_and_change_nothing() {
    let s = Cluster::from_env().site("t_hostile", 65430).await.unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let t = ann.open_with(&bob, 10_000, &[]).await.unwrap();
    let c = bob.pay(t, 100, "").await.unwrap();
    let inv = ann.invoice(t, 50, "").await.unwrap();
    let mut g = Gen {
        rng: rand::rngs::StdRng::seed_from_u64(7),
        known_uuids: vec![t, c, inv],
    };
    let (mut ok, mut refused) = (0, 0);
    for (who, db, list, rounds) in [
        ("user", &bob.db, calls(), 60),
        ("admin", &s.admin, admin_calls(), 40),
    ] {
        for (sql, kinds) in &list {
            for _ in 0..rounds {
                let args: Vec<Box<dyn ToSql + Sync + Send>> =
                    kinds.iter().map(|k| g.value(*k)).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = args
                    .iter()
                    .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let before = fingerprint(&s).await;
                match db.query(*sql, &refs).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        refused += 1;
                        let code = sqlstate(&e);
                        assert!(
                            DOCUMENTED.contains(&code.as_str()),
                            "{who}: {sql} failed with undocumented SQLSTATE {code:?}: {}",
                            chips_tests::errmsg(&e)
                        );
                        assert_eq!(
                            fingerprint(&s).await,
                            before,
                            "{who}: {sql} was refused but changed something"
                        );
                    }
                }
            }
        }
    }
    eprintln!("hostile calls: {ok} worked, {refused} refused with documented errors");
    assert!(
        refused > 500,
        "the generator produced too few bad calls ({refused})"
    );
    assert!(
        s.audit_failures(t).await.unwrap().is_empty(),
        "the tally is still sound"
    );
}
