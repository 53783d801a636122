//! The user methods of the websocket API: each is one documented SQL function of the chips
//! extension, called as the logged-in user (docs/sql-api.md, docs/protocol.md "User API").
//! Parameters are by name and travel to the database as one jsonb value; the database parses
//! and checks every one of them, so a bad value gets the extension's own SQLSTATE and message.

use serde_json::{Map, Value};

/// One parameter: its name (the SQL function's parameter name), its SQL type, required or not.
pub struct Param {
    pub name: &'static str,
    pub ty: &'static str,
    pub required: bool,
}

pub struct Method {
    /// The JSON-RPC method name.
    pub name: &'static str,
    /// The SQL function in schema chips.
    pub function: &'static str,
    pub params: &'static [Param],
    /// Returns a set of rows (an array of objects) rather than one value.
    pub set: bool,
}

const fn req(name: &'static str, ty: &'static str) -> Param {
    Param {
        name,
        ty,
        required: true,
    }
}

const fn opt(name: &'static str, ty: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
    }
}

const fn scalar(name: &'static str, function: &'static str, params: &'static [Param]) -> Method {
    Method {
        name,
        function,
        params,
        set: false,
    }
}

const fn rows(name: &'static str, function: &'static str, params: &'static [Param]) -> Method {
    Method {
        name,
        function,
        params,
        set: true,
    }
}

/// What a logged-in user may call.
pub static USER_METHODS: &[Method] = &[
    scalar("me", "user_cert", &[]),
    rows("tallies.list", "tallies_list", &[]),
    scalar("tally.get", "tally_json", &[req("tally", "uuid")]),
    rows(
        "chits.list",
        "chits_list",
        &[opt("tally", "uuid"), opt("max_chits", "integer")],
    ),
    rows("lifts.list", "lifts_list", &[opt("max_lifts", "integer")]),
    scalar("events.head", "events_head", &[]),
    rows(
        "events.since",
        "events_since",
        &[opt("cursor", "bigint"), opt("max_events", "integer")],
    ),
    scalar(
        "tally.create",
        "tally_create",
        &[
            req("side", "text"),
            opt("contract", "text"),
            opt("hold_terms", "jsonb"),
            opt("part_terms", "jsonb"),
            opt("memo", "text"),
        ],
    ),
    scalar(
        "tally.update",
        "tally_update",
        &[
            req("tally", "uuid"),
            opt("hold_terms", "jsonb"),
            opt("part_terms", "jsonb"),
            opt("memo", "text"),
            opt("contract", "text"),
        ],
    ),
    scalar(
        "ticket.create",
        "ticket_create",
        &[
            req("tally", "uuid"),
            opt("reusable", "boolean"),
            opt("lifetime", "interval"),
        ],
    ),
    scalar("ticket.redeem", "ticket_redeem", &[req("ticket", "jsonb")]),
    scalar(
        "tally.offer",
        "tally_offer",
        &[req("tally", "uuid"), opt("signature", "text")],
    ),
    scalar(
        "tally.accept",
        "tally_accept",
        &[req("tally", "uuid"), opt("signature", "text")],
    ),
    scalar("tally.counter", "tally_counter", &[req("tally", "uuid")]),
    scalar("tally.void", "tally_void", &[req("tally", "uuid")]),
    scalar("tally.close", "tally_close", &[req("tally", "uuid")]),
    scalar(
        "tally.trade",
        "tally_trade",
        &[
            req("tally", "uuid"),
            req("settings", "jsonb"),
            opt("memo", "text"),
        ],
    ),
    scalar(
        "chit.json",
        "chit_json",
        &[
            req("tally", "uuid"),
            opt("units", "bigint"),
            opt("memo", "text"),
            opt("reference", "jsonb"),
        ],
    ),
    scalar(
        "chit.issue",
        "chit_issue",
        &[req("doc", "jsonb"), opt("signature", "text")],
    ),
    scalar(
        "pay",
        "pay",
        &[
            req("tally", "uuid"),
            req("units", "bigint"),
            opt("memo", "text"),
            opt("reference", "jsonb"),
        ],
    ),
    rows(
        "pay.batch",
        "pay_batch",
        &[req("payments", "jsonb"), opt("all_or_nothing", "boolean")],
    ),
    scalar(
        "pay.address",
        "pay_address",
        &[
            req("address", "jsonb"),
            req("units", "bigint"),
            opt("memo", "text"),
            opt("reference", "jsonb"),
        ],
    ),
    scalar(
        "pay.address_json",
        "pay_address_json",
        &[req("lift", "uuid")],
    ),
    scalar(
        "pay.address_sign",
        "pay_address_sign",
        &[req("lift", "uuid"), req("signature", "text")],
    ),
    scalar(
        "route.check",
        "route_check",
        &[req("address", "jsonb"), opt("units", "bigint")],
    ),
    scalar(
        "route.check_result",
        "route_check_result",
        &[req("query", "text")],
    ),
    scalar(
        "invoice",
        "chit_invoice",
        &[
            req("tally", "uuid"),
            req("units", "bigint"),
            opt("memo", "text"),
            opt("reference", "jsonb"),
        ],
    ),
    scalar(
        "invoice.accept",
        "chit_sign",
        &[
            req("tally", "uuid"),
            req("chit", "uuid"),
            opt("signature", "text"),
        ],
    ),
    scalar(
        "invoice.decline",
        "chit_decline",
        &[req("tally", "uuid"), req("chit", "uuid")],
    ),
    rows(
        "lift.through_me",
        "lift_through_me",
        &[
            opt("execute", "boolean"),
            opt("min_units", "bigint"),
            opt("max_len", "integer"),
        ],
    ),
];

/// What anyone connected may call before logging in (as the gateway, not as a user).
pub static LOGIN_METHODS: &[Method] = &[
    scalar(
        "login.register",
        "login_register",
        &[
            req("token", "text"),
            req("pubkey", "text"),
            opt("label", "text"),
        ],
    ),
    scalar(
        "login.challenge",
        "login_challenge",
        &[req("ent", "text"), req("pubkey", "text")],
    ),
    scalar(
        "login.finish",
        "login_finish",
        &[req("challenge", "text"), req("signature", "text")],
    ),
];

/// The admin view's methods (docs/sql-api.md, "Admin view"): `admin.login` redeems an admin
/// ticket; the others run with the connection's admin session, which the gateway adds as the
/// `session` parameter (a client cannot pass one) and the database checks on every call.
pub static ADMIN_LOGIN: Method = scalar(
    "admin.login",
    "admin_login",
    &[req("token", "text"), opt("lifetime", "interval")],
);
pub static ADMIN_METHODS: &[Method] = &[
    scalar(
        "admin.overview",
        "admin_overview",
        &[req("session", "text"), opt("max_lifts", "integer")],
    ),
    scalar(
        "admin.user_add",
        "admin_user_add",
        &[
            req("session", "text"),
            req("name", "text"),
            opt("cuid", "text"),
        ],
    ),
    scalar(
        "admin.login_ticket",
        "admin_login_ticket",
        &[
            req("session", "text"),
            req("ent", "text"),
            opt("lifetime", "interval"),
        ],
    ),
    scalar("admin.logout", "admin_logout", &[req("session", "text")]),
];

pub fn find<'a>(table: &'a [Method], name: &str) -> Option<&'a Method> {
    table.iter().find(|m| m.name == name)
}

/// The SQL that calls `m` with the parameters present in `params` (the others take the
/// function's defaults), all read from `$1::jsonb`. Err: a message for -32602.
pub fn sql(m: &Method, params: &Map<String, Value>) -> Result<String, String> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !m.params.iter().any(|p| p.name == k.as_str()))
    {
        let known: Vec<_> = m.params.iter().map(|p| p.name).collect();
        return Err(format!(
            "{} takes no parameter \"{unknown}\" (it takes: {})",
            m.name,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    if let Some(missing) = m
        .params
        .iter()
        .find(|p| p.required && !params.contains_key(p.name))
    {
        return Err(format!("{} needs \"{}\"", m.name, missing.name));
    }
    let args: Vec<String> = m
        .params
        .iter()
        .filter(|p| params.contains_key(p.name))
        .map(|p| {
            if p.ty == "jsonb" {
                format!("\"{0}\" => ($1::jsonb -> '{0}')", p.name)
            } else {
                format!("\"{0}\" => ($1::jsonb ->> '{0}')::{1}", p.name, p.ty)
            }
        })
        .collect();
    let call = format!("chips.{}({})", m.function, args.join(", "));
    Ok(if m.set {
        format!("SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r)), '[]'::jsonb) FROM {call} r")
    } else {
        format!("SELECT pg_catalog.to_jsonb({call})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn calls_name_only_the_parameters_given() {
        let pay = find(USER_METHODS, "pay").unwrap();
        assert_eq!(
            sql(pay, &obj(json!({"tally": "x", "units": 5}))).unwrap(),
            "SELECT pg_catalog.to_jsonb(chips.pay(\"tally\" => ($1::jsonb ->> 'tally')::uuid, \
             \"units\" => ($1::jsonb ->> 'units')::bigint))"
        );
        let list = find(USER_METHODS, "tallies.list").unwrap();
        assert!(sql(list, &Map::new())
            .unwrap()
            .contains("FROM chips.tallies_list() r"));
    }

    #[test]
    fn unknown_and_missing_parameters_are_refused() {
        let pay = find(USER_METHODS, "pay").unwrap();
        let e = sql(pay, &obj(json!({"tally": "x"}))).unwrap_err();
        assert!(e.contains("needs \"units\""), "{e}");
        let e = sql(pay, &obj(json!({"tally": "x", "units": 1, "x'; DROP": 1}))).unwrap_err();
        assert!(e.contains("takes no parameter"), "{e}");
    }

    #[test]
    fn every_method_name_is_unique_and_every_name_is_an_identifier() {
        let mut names: Vec<_> = USER_METHODS
            .iter()
            .chain(LOGIN_METHODS)
            .map(|m| m.name)
            .collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
        for m in USER_METHODS.iter().chain(LOGIN_METHODS) {
            for p in m.params {
                assert!(p.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            }
        }
    }
}
