//! Prometheus metrics of one chipsd process, served by the gateway at `/metrics`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Websocket connections open now.
    pub ws_open: Gauge,
    /// Websocket connections accepted.
    pub ws_accepted: Counter,
    /// Websocket connections refused (limit reached).
    pub ws_refused: Counter,
    /// JSON-RPC calls answered.
    pub rpc_calls: Counter,
    /// Errors by kind: parse, request, method, params, auth, rate, size, connections, db,
    /// internal, http.
    pub errors: Family<Kind, Counter>,
    /// Events delivered to subscribed clients, by kind (tally, chit, lift).
    pub events: Family<Kind, Counter>,
    /// Peer messages relayed, by direction (in, out).
    pub peer_messages: Family<Kind, Counter>,
    /// Lifts made by automatic clearing passes this process started.
    pub lifts: Counter,
    /// HTTP requests (not websocket upgrades), by route.
    pub http: Family<Kind, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chipsd");
        let m = Metrics {
            ws_open: Gauge::default(),
            ws_accepted: Counter::default(),
            ws_refused: Counter::default(),
            rpc_calls: Counter::default(),
            errors: Family::default(),
            events: Family::default(),
            peer_messages: Family::default(),
            lifts: Counter::default(),
            http: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ws_connections",
            "Websocket connections open",
            m.ws_open.clone(),
        );
        registry.register(
            "ws_accepted",
            "Websocket connections accepted",
            m.ws_accepted.clone(),
        );
        registry.register(
            "ws_refused",
            "Websocket connections refused at the connection limit",
            m.ws_refused.clone(),
        );
        registry.register("rpc_calls", "JSON-RPC calls answered", m.rpc_calls.clone());
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register(
            "events_delivered",
            "Events delivered to subscribers, by kind",
            m.events.clone(),
        );
        registry.register(
            "peer_messages",
            "Peer messages relayed, by direction",
            m.peer_messages.clone(),
        );
        registry.register(
            "clearing_lifts",
            "Lifts made by clearing passes",
            m.lifts.clone(),
        );
        registry.register("http_requests", "HTTP requests by route", m.http.clone());
        Metrics { registry, ..m }
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&Kind { kind }).inc();
    }
}

/// This process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
