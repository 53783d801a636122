//! `subscribe {cursor}`: the user's events after `cursor` follow the response, then each new
//! one as it commits (the connection's serve loop delivers them); `unsubscribe`.

use serde_json::{json, Map, Value};

use super::bad_params;
use crate::gateway::rpc::{unauthenticated, Conn, RpcError, Subscription};

pub(super) async fn apply(conn: &mut Conn, params: Map<String, Value>) -> Result<Value, RpcError> {
    let login = conn.login.as_ref().ok_or_else(unauthenticated)?;
    let cursor = match params.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(c) => c
            .as_i64()
            .filter(|c| *c >= 0)
            .ok_or_else(|| bad_params("cursor is 0 or the seq of the last event seen"))?,
    };
    if let Some(k) = params.keys().find(|k| k.as_str() != "cursor") {
        return Err(bad_params(format!("subscribe takes no parameter \"{k}\"")));
    }
    let mut wake = conn.gw.hub.watch(&login.ent);
    wake.borrow_and_update();
    // check the cursor (and the session) before saying yes
    conn.events(login, cursor, 1).await?;
    conn.sub = Some(Subscription { cursor, wake });
    conn.backlog = true;
    Ok(json!({"subscribed": true, "cursor": cursor}))
}

/// Whether the connection was subscribed.
pub(super) fn unsubscribe(conn: &mut Conn) -> Value {
    json!(conn.sub.take().is_some())
}
