//! One websocket connection: JSON-RPC 2.0 requests in, responses and event notifications out.
//!
//! Before login only the login methods (and `rpc.methods`) answer; after `login.finish` every
//! user method runs in one database transaction as the user's role with the session id set
//! (`SET LOCAL ROLE`, `chips.session`), so the database checks the session on every call.
//! `subscribe {cursor}` delivers the user's events after `cursor`, then new ones as they
//! commit, as `event` notifications numbered by `seq` (1, 2, 3... per user, no gaps).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::{debug, warn};

use super::methods::{self, Method};
use super::Gateway;

mod cmd;
use crate::metrics::{Kind, METRICS};

/// Events read per query while catching up.
const BATCH: i64 = 500;

struct Login {
    ent: String,
    role: String,
    session: String,
}

struct Subscription {
    cursor: i64,
    wake: watch::Receiver<u64>,
}

struct Conn {
    gw: Arc<Gateway>,
    addr: SocketAddr,
    login: Option<Login>,
    /// An admin session (admin.login), checked by the database on every admin call.
    admin: Option<String>,
    sub: Option<Subscription>,
    /// A subscription was just made: its backlog follows the response.
    backlog: bool,
}

/// A JSON-RPC error object.
struct RpcError {
    code: i64,
    message: String,
    sqlstate: Option<String>,
    hint: Option<String>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            sqlstate: None,
            hint: None,
        }
    }

    fn state(mut self, sqlstate: &str) -> Self {
        self.sqlstate = Some(sqlstate.to_string());
        self
    }

    fn db(e: &tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(d) => {
                METRICS.error("db");
                RpcError {
                    code: -32000,
                    message: d.message().to_string(),
                    sqlstate: Some(d.code().code().to_string()),
                    hint: d.hint().map(str::to_string),
                }
            }
            None => Self::unavailable(e),
        }
    }

    fn unavailable(e: impl std::fmt::Display) -> Self {
        METRICS.error("internal");
        warn!(error = %e, "gateway database call failed");
        RpcError::new(-32603, "the database is unavailable; try again").state("08006")
    }

    fn to_json(&self) -> Value {
        let mut data = Map::new();
        if let Some(s) = &self.sqlstate {
            data.insert("sqlstate".into(), json!(s));
        }
        if let Some(h) = &self.hint {
            data.insert("hint".into(), json!(h));
        }
        let mut e = json!({"code": self.code, "message": self.message});
        if !data.is_empty() {
            e["data"] = Value::Object(data);
        }
        e
    }
}

pub async fn run(
    socket: WebSocket,
    gw: Arc<Gateway>,
    addr: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    METRICS.ws_accepted.inc();
    METRICS.ws_open.inc();
    debug!(%addr, "websocket open");
    let mut conn = Conn {
        gw,
        addr,
        login: None,
        admin: None,
        sub: None,
        backlog: false,
    };
    if let Err(e) = conn.serve(socket).await {
        debug!(%addr, error = %e, "websocket ended");
    }
    conn.logout().await;
    METRICS.ws_open.dec();
}

impl Conn {
    async fn serve(&mut self, mut socket: WebSocket) -> Result<(), String> {
        let idle = self.gw.settings.idle_timeout;
        let mut ping = tokio::time::interval(idle / 2);
        ping.tick().await;
        let mut seen = Instant::now();
        let token = self.gw.token.clone();
        loop {
            let wake = async {
                match self.sub.as_mut() {
                    Some(s) => s.wake.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => {
                    let _ = socket.send(close(1001, "server shutting down")).await;
                    return Ok(());
                }
                _ = ping.tick() => {
                    if seen.elapsed() >= idle {
                        let _ = socket.send(close(1000, "idle")).await;
                        return Err("idle".into());
                    }
                    socket.send(Message::Ping(Default::default())).await.map_err(|e| e.to_string())?;
                }
                alive = wake => {
                    if alive {
                        self.deliver(&mut socket).await?;
                    } else {
                        self.sub = None;
                    }
                }
                m = socket.recv() => {
                    let Some(m) = m else { return Ok(()) };
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            if too_big(&e) {
                                METRICS.error("size");
                                let _ = socket.send(close(1009, "message too big")).await;
                            }
                            return Err(e.to_string());
                        }
                    };
                    seen = Instant::now();
                    match m {
                        Message::Text(text) => {
                            if let Some(reply) = self.handle(text.as_str()).await {
                                socket.send(Message::Text(reply.to_string().into())).await
                                    .map_err(|e| e.to_string())?;
                            }
                            if std::mem::take(&mut self.backlog) {
                                self.deliver(&mut socket).await?;
                            }
                        }
                        Message::Binary(_) => {
                            METRICS.error("request");
                            let e = RpcError::new(-32600, "send JSON-RPC requests as text frames");
                            socket.send(Message::Text(response(Value::Null, Err(e)).to_string().into())).await
                                .map_err(|e| e.to_string())?;
                        }
                        Message::Close(_) => return Ok(()),
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        }
    }

    /// One text frame: a request, a notification, or a batch. Returns what to send back.
    async fn handle(&mut self, text: &str) -> Option<Value> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                METRICS.error("parse");
                return Some(response(
                    Value::Null,
                    Err(RpcError::new(-32700, format!("not JSON: {e}"))),
                ));
            }
        };
        match v {
            Value::Array(calls) if calls.is_empty() => Some(response(
                Value::Null,
                Err(RpcError::new(-32600, "an empty batch")),
            )),
            Value::Array(calls) => {
                let mut out = Vec::new();
                for c in calls {
                    if let Some(r) = self.one(c).await {
                        out.push(r);
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
            v => self.one(v).await,
        }
    }

    async fn one(&mut self, v: Value) -> Option<Value> {
        let Value::Object(mut req) = v else {
            METRICS.error("request");
            return Some(response(
                Value::Null,
                Err(RpcError::new(-32600, "a request is a JSON object")),
            ));
        };
        let id = req.remove("id");
        let reply_id = id.clone().unwrap_or(Value::Null);
        if !matches!(
            id,
            None | Some(Value::Null | Value::String(_) | Value::Number(_))
        ) {
            METRICS.error("request");
            return Some(response(
                Value::Null,
                Err(RpcError::new(
                    -32600,
                    "id must be a string, a number or null",
                )),
            ));
        }
        let result = self.call(req).await;
        METRICS.rpc_calls.inc();
        // a notification (no id) gets no response, not even an error
        id.map(|_| response(reply_id, result))
    }

    async fn call(&mut self, mut req: Map<String, Value>) -> Result<Value, RpcError> {
        if req.get("jsonrpc") != Some(&json!("2.0")) {
            METRICS.error("request");
            return Err(RpcError::new(-32600, "\"jsonrpc\" must be \"2.0\""));
        }
        let Some(Value::String(method)) = req.remove("method") else {
            METRICS.error("request");
            return Err(RpcError::new(-32600, "\"method\" must be a string"));
        };
        let params = match req.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => {
                METRICS.error("params");
                return Err(RpcError::new(-32602, "params are by name: a JSON object"));
            }
        };
        let key = match &self.login {
            Some(l) => l.ent.clone(),
            None => format!("addr:{}", self.addr.ip()),
        };
        if self.gw.limiter.check_key(&key).is_err() {
            METRICS.error("rate");
            return Err(RpcError::new(
                -32029,
                format!(
                    "too many requests: at most {} a second (bursts of {})",
                    self.gw.settings.rate_per_sec, self.gw.settings.rate_burst
                ),
            )
            .state("53400"));
        }
        cmd::Command::parse(&method)?.apply(self, params).await
    }

    /// A login method, as the gateway itself (no user role).
    async fn as_gateway(&self, m: &Method, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let sql = methods::sql(m, params).map_err(|e| {
            METRICS.error("params");
            RpcError::new(-32602, e)
        })?;
        let client = self.gw.pool.get().await.map_err(RpcError::unavailable)?;
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(|e| RpcError::db(&e))?;
        let arg = Value::Object(params.clone());
        let row = client
            .query_one(&stmt, &args(&stmt, &arg))
            .await
            .map_err(|e| {
                if e.as_db_error().is_some_and(|d| d.code().code() == "28000") {
                    METRICS.error("auth");
                }
                RpcError::db(&e)
            })?;
        Ok(row.get::<_, Option<Value>>(0).unwrap_or(Value::Null))
    }

    async fn events(&self, login: &Login, cursor: i64, max: i64) -> Result<Vec<Value>, RpcError> {
        let v = as_user(
            &self.gw,
            login,
            "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r) ORDER BY r.seq), '[]'::jsonb) \
             FROM chips.events_since(($1::jsonb ->> 'cursor')::bigint, ($1::jsonb ->> 'max')::integer) r",
            &json!({"cursor": cursor, "max": max}),
        )
        .await?;
        Ok(match v {
            Value::Array(a) => a,
            _ => Vec::new(),
        })
    }

    /// Sends the events after the subscription's cursor, in order.
    async fn deliver(&mut self, socket: &mut WebSocket) -> Result<(), String> {
        loop {
            let (Some(login), Some(sub)) = (self.login.as_ref(), self.sub.as_ref()) else {
                return Ok(());
            };
            let batch = match self.events(login, sub.cursor, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    // e.g. the session ended or expired: the subscription ends, the client is told
                    self.sub = None;
                    let n = json!({"jsonrpc": "2.0", "method": "subscription_ended", "params": {"error": e.to_json()}});
                    return socket
                        .send(Message::Text(n.to_string().into()))
                        .await
                        .map_err(|e| e.to_string());
                }
            };
            let n = batch.len() as i64;
            for mut e in batch {
                let seq = e.get("seq").and_then(Value::as_i64).unwrap_or_default();
                let kind = e.get("kind").and_then(Value::as_str).unwrap_or_default();
                METRICS
                    .events
                    .get_or_create(&Kind {
                        kind: match kind {
                            "tally" => "tally",
                            "chit" => "chit",
                            "lift" => "lift",
                            _ => "other",
                        },
                    })
                    .inc();
                if let Some(o) = e.as_object_mut() {
                    if let Some(body) = o.remove("body") {
                        o.insert("data".into(), body);
                    }
                }
                let note = json!({"jsonrpc": "2.0", "method": "event", "params": e});
                socket
                    .send(Message::Text(note.to_string().into()))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(s) = self.sub.as_mut() {
                    s.cursor = seq;
                }
            }
            if n < BATCH {
                return Ok(());
            }
        }
    }

    async fn logout(&mut self) {
        self.sub = None;
        if let Some(login) = self.login.take() {
            match self.gw.pool.get().await {
                Ok(c) => {
                    if let Err(e) = c
                        .execute("SELECT chips.login_end($1)", &[&login.session])
                        .await
                    {
                        warn!(error = %e, "could not end a session (it expires by itself)");
                    }
                }
                Err(e) => warn!(error = %e, "could not end a session (it expires by itself)"),
            }
        }
    }
}

fn not_admin() -> RpcError {
    METRICS.error("auth");
    RpcError::new(
        -32001,
        "log in as an admin first (admin.login with an admin ticket)",
    )
    .state("28000")
}

fn unauthenticated() -> RpcError {
    METRICS.error("auth");
    RpcError::new(-32001, "log in first (login.challenge, then login.finish)").state("28000")
}

/// One call as the user: a transaction with the user's role and session, the statement, commit.
async fn as_user(gw: &Gateway, login: &Login, sql: &str, arg: &Value) -> Result<Value, RpcError> {
    let mut client = gw.pool.get().await.map_err(RpcError::unavailable)?;
    let tx = client.transaction().await.map_err(|e| RpcError::db(&e))?;
    let set = tx
        .prepare_cached("SELECT pg_catalog.set_config('role', $1, true), pg_catalog.set_config('chips.session', $2, true)")
        .await
        .map_err(|e| RpcError::db(&e))?;
    tx.query_one(&set, &[&login.role, &login.session])
        .await
        .map_err(|e| RpcError::db(&e))?;
    let stmt = tx.prepare_cached(sql).await.map_err(|e| RpcError::db(&e))?;
    let row = tx
        .query_one(&stmt, &args(&stmt, arg))
        .await
        .map_err(|e| RpcError::db(&e))?;
    tx.commit().await.map_err(|e| RpcError::db(&e))?;
    Ok(row.get::<_, Option<Value>>(0).unwrap_or(Value::Null))
}

/// The statement's arguments: the params as `$1`, or none for a call without parameters.
fn args<'a>(
    stmt: &tokio_postgres::Statement,
    arg: &'a Value,
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    if stmt.params().is_empty() {
        vec![]
    } else {
        vec![arg]
    }
}

fn response(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

/// A frame or message over the size limit (tungstenite's capacity error).
fn too_big(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<WsError>())
        .is_some_and(|e| matches!(e, WsError::Capacity(_)))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
