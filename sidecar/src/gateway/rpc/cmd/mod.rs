//! The websocket API's commands, as tokio's mini-redis has them: one enum, [`Command`], one
//! file per command (or per family of commands). A request's method name is parsed into a
//! command (an unknown name is refused here), then the command is applied to the connection
//! with its parameters. The commands that change what the connection is (logged in, an admin,
//! subscribed) have files of their own; every other method is one SQL function of the
//! extension, listed in `gateway/methods.rs`, and goes through [`call`].

mod admin;
mod call;
mod list;
mod login;
mod subscribe;

use serde_json::{Map, Value};

use super::{Conn, RpcError};
use crate::gateway::methods::{self, Method};
use crate::metrics::METRICS;

pub(super) enum Command {
    /// `rpc.methods`: the names a client may call.
    List,
    /// `admin.login`: redeems an admin ticket for the connection's admin session.
    AdminLogin,
    /// `admin.qr`: a QR code (SVG) of a text, for an admin.
    AdminQr,
    /// Any other `admin.` method, with the connection's admin session added.
    Admin(&'static Method),
    /// `login.finish`: the connection logs in as the user.
    LoginFinish,
    /// `logout`: ends the connection's session.
    Logout,
    /// `subscribe`: the user's events from a cursor on, then as they commit.
    Subscribe,
    /// `unsubscribe`.
    Unsubscribe,
    /// A login method before `login.finish` (called as the gateway itself).
    Login(&'static Method),
    /// A user method, called as the logged-in user.
    User(&'static Method),
}

impl Command {
    pub(super) fn parse(name: &str) -> Result<Command, RpcError> {
        Ok(match name {
            "rpc.methods" => Command::List,
            "admin.login" => Command::AdminLogin,
            "admin.qr" => Command::AdminQr,
            name if name.starts_with("admin.") => {
                Command::Admin(find(methods::ADMIN_METHODS, name)?)
            }
            "login.finish" => Command::LoginFinish,
            "logout" => Command::Logout,
            "subscribe" => Command::Subscribe,
            "unsubscribe" => Command::Unsubscribe,
            name => match methods::find(methods::LOGIN_METHODS, name) {
                Some(m) => Command::Login(m),
                None => Command::User(find(methods::USER_METHODS, name)?),
            },
        })
    }

    pub(super) async fn apply(
        self,
        conn: &mut Conn,
        params: Map<String, Value>,
    ) -> Result<Value, RpcError> {
        match self {
            Command::List => Ok(list::apply()),
            Command::AdminLogin => admin::login(conn, params).await,
            Command::AdminQr => admin::qr(conn, params),
            Command::Admin(m) => admin::call(conn, m, params).await,
            Command::LoginFinish => login::finish(conn, params).await,
            Command::Logout => Ok(login::logout(conn).await),
            Command::Subscribe => subscribe::apply(conn, params).await,
            Command::Unsubscribe => Ok(subscribe::unsubscribe(conn)),
            Command::Login(m) => conn.as_gateway(m, &params).await,
            Command::User(m) => call::apply(conn, m, params).await,
        }
    }
}

fn find(table: &'static [Method], name: &str) -> Result<&'static Method, RpcError> {
    methods::find(table, name).ok_or_else(|| {
        METRICS.error("method");
        RpcError::new(
            -32601,
            format!("no method \"{name}\" (rpc.methods lists them)"),
        )
    })
}

fn bad_params(message: impl Into<String>) -> RpcError {
    METRICS.error("params");
    RpcError::new(-32602, message)
}
