//! A user method: its SQL function called as the logged-in user (one transaction with the
//! user's role and session), with the parameters by name as one jsonb value; the database
//! checks every one of them.

use serde_json::{Map, Value};

use super::bad_params;
use crate::gateway::methods::{self, Method};
use crate::gateway::rpc::{as_user, unauthenticated, Conn, RpcError};

pub(super) async fn apply(
    conn: &mut Conn,
    m: &Method,
    params: Map<String, Value>,
) -> Result<Value, RpcError> {
    let login = conn.login.as_ref().ok_or_else(unauthenticated)?;
    let sql = methods::sql(m, &params).map_err(bad_params)?;
    as_user(&conn.gw, login, &sql, &Value::Object(params)).await
}
