//! `rpc.methods`: what a client may call, by the state the connection must be in.

use serde_json::{json, Value};

use crate::gateway::methods;

pub(super) fn apply() -> Value {
    json!({
        "login": methods::LOGIN_METHODS.iter().map(|m| m.name).collect::<Vec<_>>(),
        "user": methods::USER_METHODS.iter().map(|m| m.name).collect::<Vec<_>>(),
        "session": ["logout", "subscribe", "unsubscribe"],
        "admin": std::iter::once(methods::ADMIN_LOGIN.name)
            .chain(methods::ADMIN_METHODS.iter().map(|m| m.name))
            .chain(["admin.qr"])
            .collect::<Vec<_>>(),
    })
}
