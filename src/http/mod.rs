//! HTTP(S): one router for the player, the API, signalling and HLS; rustls; graceful shutdown.

pub mod api;
pub mod error;
pub mod hls;
pub mod tls;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};

use crate::config::Config;
use crate::media::Media;
use crate::signalling::{whep, ws, Signalling};
use crate::webrtc::WebRtc;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub media: Arc<Media>,
    pub webrtc: Arc<WebRtc>,
}

pub fn router(state: Arc<AppState>, signalling: Arc<Signalling>) -> Router {
    // WHEP players and hls.js pages are often served from another origin.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("if-match")])
        .expose_headers([header::LOCATION, header::LINK, HeaderName::from_static("accept-post")]);
    let signalling_routes = Router::new()
        .route("/ws/{stream}", get(ws::upgrade))
        .route("/whep/{stream}", post(whep::offer).options(whep::options))
        .route(
            "/whep/{stream}/{session}",
            axum::routing::delete(whep::delete).patch(whep::patch).options(whep::options),
        )
        .with_state(signalling);
    Router::new()
        .route("/api/streams", get(api::streams))
        .route("/api/config", get(api::client_config))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/hls/{stream}/{file}", get(hls::file))
        .fallback(get(web::serve))
        .with_state(state)
        .merge(signalling_routes)
        .layer(cors)
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
    match tls {
        Some(tls) => axum_server::from_tcp_rustls(listener, tls).handle(handle).serve(service).await,
        None => axum_server::from_tcp(listener).handle(handle).serve(service).await,
    }
}
