//! `login.finish` (the connection becomes the user's, in the session the database opened) and
//! `logout`. The other login methods (`login.challenge`, `login.register`) only call the
//! database as the gateway.

use serde_json::{json, Map, Value};
use tracing::info;

use crate::gateway::methods;
use crate::gateway::rpc::{Conn, Login, RpcError};

pub(super) async fn finish(conn: &mut Conn, params: Map<String, Value>) -> Result<Value, RpcError> {
    let m = methods::find(methods::LOGIN_METHODS, "login.finish").expect("listed");
    let v = conn.as_gateway(m, &params).await?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    conn.logout().await;
    conn.login = Some(Login {
        ent: field("ent"),
        role: field("role"),
        session: field("session"),
    });
    info!(addr = %conn.addr, ent = %field("ent"), "logged in");
    Ok(json!({"ent": field("ent"), "expires": field("expires")}))
}

/// Whether the connection was logged in.
pub(super) async fn logout(conn: &mut Conn) -> Value {
    let was = conn.login.is_some();
    conn.logout().await;
    json!(was)
}
