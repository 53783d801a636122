//! The admin view's commands: `admin.login` (an admin ticket for an admin session), `admin.qr`
//! and the admin methods, to which the gateway adds the session (the database checks it on
//! every call, so the gateway cannot act as an admin on its own).

use serde_json::{json, Map, Value};
use tracing::info;

use super::bad_params;
use crate::gateway::methods::{self, Method};
use crate::gateway::rpc::{not_admin, Conn, RpcError};

pub(super) async fn login(conn: &mut Conn, params: Map<String, Value>) -> Result<Value, RpcError> {
    let v = conn.as_gateway(&methods::ADMIN_LOGIN, &params).await?;
    let session = v.get("session").and_then(Value::as_str).unwrap_or_default();
    conn.admin = Some(session.to_string());
    info!(addr = %conn.addr, "admin logged in");
    Ok(json!({"expires": v.get("expires")}))
}

pub(super) fn qr(conn: &Conn, params: Map<String, Value>) -> Result<Value, RpcError> {
    conn.admin.as_ref().ok_or_else(not_admin)?;
    let text = match (params.get("text"), params.len()) {
        (Some(Value::String(t)), 1) if t.len() <= 1000 => t,
        _ => {
            return Err(bad_params(
                "admin.qr takes \"text\" (a string of at most 1000 bytes)",
            ))
        }
    };
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| RpcError::new(-32602, format!("no QR code for that: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(json!({"svg": svg}))
}

pub(super) async fn call(
    conn: &mut Conn,
    m: &Method,
    mut params: Map<String, Value>,
) -> Result<Value, RpcError> {
    let session = conn.admin.clone().ok_or_else(not_admin)?;
    if params.contains_key("session") {
        return Err(bad_params("the gateway adds the session: do not pass one"));
    }
    params.insert("session".into(), json!(session));
    let v = conn.as_gateway(m, &params).await?;
    if m.name == "admin.logout" {
        conn.admin = None;
    }
    Ok(v)
}
