//! HTTP(S): one router for the player, the API, signalling and HLS; rustls; graceful shutdown.

pub mod api;
pub mod error;
pub mod hls;
pub mod identity;
pub mod metrics;
pub mod tls;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Auth;
use crate::config::{Config, CorsOrigin, TlsMode};
use crate::media::Media;
use crate::signalling::{whep, ws, Signalling};
use crate::webrtc::WebRtc;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub media: Arc<Media>,
    pub webrtc: Arc<WebRtc>,
    pub publications: Arc<crate::relay::publish::Publications>,
    pub auth: Arc<Auth>,
    pub metrics: metrics::Metrics,
}

/// A client must send its request headers within this time (slow-header attacks).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HSTS lifetime when a real certificate is configured: one year.
const HSTS: &str = "max-age=31536000";

/// CORS for what WHEP players and hls.js pages on other origins call: the configured origins,
/// or any. `Authorization` may be sent; cookies are never used.
fn public_cors(origins: &[CorsOrigin]) -> CorsLayer {
    let allow = match exact_origins(origins) {
        Some(list) => AllowOrigin::list(list),
        None => AllowOrigin::any(),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("if-match")])
        .expose_headers([header::LOCATION, header::LINK, HeaderName::from_static("accept-post")])
}

/// The configured origins as header values; `None` when any origin is allowed.
fn exact_origins(origins: &[CorsOrigin]) -> Option<Vec<HeaderValue>> {
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| match origin {
            CorsOrigin::Exactly(origin) => HeaderValue::from_str(origin).ok(),
            CorsOrigin::Any => None,
        })
        .collect();
    (!list.is_empty()).then_some(list)
}

/// The WebSocket and WHEP routes. Their handlers expect [`crate::auth::Access`] and
/// [`crate::signalling::limits::ClientIp`] in the request extensions (see [`identity::identify`]).
pub fn signalling_routes(signalling: Arc<Signalling>) -> Router {
    Router::new()
        .route("/ws/{stream}", get(ws::upgrade))
        .route(
            "/whep/{stream}",
            post(whep::offer).options(whep::options).layer(DefaultBodyLimit::max(whep::MAX_OFFER_BYTES)),
        )
        .route(
            "/whep/{stream}/{session}",
            axum::routing::delete(whep::delete).patch(whep::patch).options(whep::options),
        )
        .with_state(signalling)
}

pub fn router(state: Arc<AppState>, signalling: Arc<Signalling>) -> Router {
    let origins = &state.config.cors_origins;
    let public = Router::new()
        .route("/api/config", get(api::client_config))
        .route("/hls/{stream}/{file}", get(hls::file))
        .with_state(state.clone())
        .merge(signalling_routes(signalling))
        .layer(public_cors(origins));
    // The admin answer of /api/streams is never offered to any origin: only to listed ones.
    let mut streams = Router::new().route("/api/streams", get(api::streams)).with_state(state.clone());
    if let Some(list) = exact_origins(origins) {
        streams = streams.layer(CorsLayer::new().allow_origin(list).allow_headers([header::AUTHORIZATION]));
    }
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics::serve))
        .fallback(get(web::serve))
        .with_state(state.clone())
        .merge(public)
        .merge(streams)
        .layer(axum::middleware::from_fn_with_state(state.clone(), identity::identify))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::count_requests))
        .layer(axum::middleware::map_response_with_state(state, security_headers))
}

/// Headers every answer carries; HSTS only with a real certificate (a self-signed one would
/// lock browsers out of the host once it is replaced by another self-signed one).
async fn security_headers(State(state): State<Arc<AppState>>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Tokens travel in player URLs: never hand them to another site.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if matches!(state.config.tls, TlsMode::Files { .. }) {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    response
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    app: Router,
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let mut server = axum_server::from_tcp(listener);
    server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    // Without TCP_NODELAY a response's last small TLS record waits for the browser's delayed
    // ACK: Chromium took ~45 ms to receive each 50 KB HLS part over loopback.
    let plain = axum_server::accept::NoDelayAcceptor::new();
    match tls {
        Some(tls) => {
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(plain);
            server.acceptor(acceptor).handle(handle).serve(service).await
        }
        None => server.acceptor(plain).handle(handle).serve(service).await,
    }
}
