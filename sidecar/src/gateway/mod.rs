//! The user gateway: one HTTP server (TLS optional) with
//!
//! * `GET /ws`: the websocket JSON-RPC 2.0 API (rpc.rs, methods.rs),
//! * `GET /doc/{hash}`: contracts and stored files by SHA-256,
//! * `GET /health`, `GET /metrics` (Prometheus text format).
//!
//! It decides nothing about who sees what: every user call runs in the database as the user's
//! role, inside the session the user opened by signing a challenge (sql/access.sql), and
//! row-level security does the rest.

pub mod hub;
pub mod methods;
pub mod rpc;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::{Kind, METRICS};

/// The gateway's settings (from chipsd's configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// libpq connection string of a role that is a member of chips_gateway.
    pub db: String,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub idle_timeout: Duration,
    /// Calls per second per user (or per address before login), and the burst allowed.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub pool_size: usize,
    /// How often the heads of subscribed users are read.
    pub poll: Duration,
    /// PEM files; both or neither.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

pub struct Gateway {
    pub settings: Settings,
    pub pool: Pool,
    pub hub: Arc<hub::Hub>,
    pub limiter: DefaultKeyedRateLimiter<String>,
    pub ws_slots: Arc<Semaphore>,
    /// Loaded when the gateway is made, so that a bad certificate or key stops chipsd at start.
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        token: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Arc<Gateway>, String> {
        let pool = crate::db::pool(&settings.db, settings.pool_size, "gateway database")?;
        let quota = Quota::per_second(
            NonZeroU32::new(settings.rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(settings.rate_burst.max(1)).unwrap_or(NonZeroU32::MIN));
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        Ok(Arc::new(Gateway {
            ws_slots: Arc::new(Semaphore::new(settings.max_connections)),
            tls,
            limiter: RateLimiter::keyed(quota),
            hub: Arc::new(hub::Hub::default()),
            settings,
            pool,
            token,
            tracker,
        }))
    }

    fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ws", get(ws))
            .route("/admin", get(admin_page))
            .route("/login", get(app_page))
            .route("/app", get(app_page))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/doc/{hash}", get(document))
            .with_state(self.clone())
    }
}

/// Serves until cancelled: the event listener, and one task per TCP connection (at most
/// `max_connections` HTTP connections at once; websockets count separately, same limit).
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    gw.tracker.spawn(hub::run(
        gw.settings.db.clone(),
        gw.hub.clone(),
        gw.settings.poll,
        gw.token.clone(),
    ));
    let router = gw.router();
    let http_slots = Arc::new(Semaphore::new(gw.settings.max_connections));
    info!(
        listen = ?listener.local_addr().ok(),
        tls = gw.tls.is_some(),
        "user gateway serving"
    );
    loop {
        let (stream, addr) = tokio::select! {
            _ = gw.token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = http_slots.clone().try_acquire_owned() else {
            METRICS.error("connections");
            debug!(%addr, "too many gateway connections: refused");
            continue;
        };
        let (router, tls, token) = (router.clone(), gw.tls.clone(), gw.token.clone());
        gw.tracker.spawn(async move {
            let service = router.layer(axum::Extension(ConnectInfo(addr)));
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => serve_connection(s, service, token).await,
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
                None => serve_connection(stream, service, token).await,
            };
            if let Err(e) = result {
                debug!(%addr, error = %e, "gateway connection ended");
            }
            drop(permit);
        });
    }
    info!("user gateway stopped accepting");
}

async fn serve_connection<S>(
    stream: S,
    router: Router,
    token: CancellationToken,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(20))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(|e| e.to_string()),
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await.map_err(|e| e.to_string())
        }
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn ws(
    State(gw): State<Arc<Gateway>>,
    axum::Extension(ConnectInfo(addr)): axum::Extension<ConnectInfo<SocketAddr>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Ok(slot) = gw.ws_slots.clone().try_acquire_owned() else {
        METRICS.ws_refused.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let max = gw.settings.max_message_bytes;
    let tracker = gw.tracker.clone();
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tracker.track_future(rpc::run(socket, gw, addr, slot)))
}

/// The admin view: one static page; it logs in over the websocket with the admin ticket in its
/// URL fragment (`/admin#token=…`, never sent to the server in a request line).
async fn admin_page() -> Response {
    METRICS.http.get_or_create(&Kind { kind: "admin" }).inc();
    axum::response::Html(include_str!("admin.html")).into_response()
}

/// The user app: one static page and its script, at the path login links use (`/login?ent=…&
/// token=…`: it registers a key it makes in the browser with the ticket) and at `/app` (later
/// visits log in with that key). Everything it does is a websocket call as the user.
async fn app_page() -> Response {
    METRICS.http.get_or_create(&Kind { kind: "app" }).inc();
    let mut r = axum::response::Html(include_str!("app.html")).into_response();
    // the login ticket is in the query string: keep it out of other sites' Referer headers
    r.headers_mut().insert(
        axum::http::header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    METRICS.http.get_or_create(&Kind { kind: "health" }).inc();
    let db = async {
        let client = gw.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), db).await {
        Ok(Ok(_)) => {
            axum::Json(serde_json::json!({"status": "ok", "database": "ok"})).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "database": e})),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "database": "timed out"})),
        )
            .into_response(),
    }
}

async fn metrics() -> Response {
    METRICS.http.get_or_create(&Kind { kind: "metrics" }).inc();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.encode(),
    )
        .into_response()
}

async fn document(State(gw): State<Arc<Gateway>>, Path(hash): Path<String>) -> Response {
    METRICS.http.get_or_create(&Kind { kind: "doc" }).inc();
    let client = match gw.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            METRICS.error("http");
            warn!(error = %e, "document: no database connection");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
        }
    };
    let row = client
        .query_opt("SELECT media_type, body FROM chips.document($1)", &[&hash])
        .await;
    match row {
        Ok(Some(row)) => {
            let media: String = row.get(0);
            let body: Vec<u8> = row.get(1);
            (
                [
                    (header::CONTENT_TYPE, media),
                    (header::ETAG, format!("\"{hash}\"")),
                    (
                        header::CACHE_CONTROL,
                        "public, max-age=31536000, immutable".to_string(),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no document with this hash\n").into_response(),
        Err(e) => match e.as_db_error() {
            Some(d) if d.code().code() == "22023" => {
                (StatusCode::BAD_REQUEST, format!("{}\n", d.message())).into_response()
            }
            _ => {
                METRICS.error("http");
                warn!(error = %e, "document lookup failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "document lookup failed\n",
                )
                    .into_response()
            }
        },
    }
}
