//! Property-based fuzzing of every parser that sees network input: WebSocket messages (and the
//! remote candidates they carry), SDP offer checks, WHEP request handling through the real
//! routes, HLS file names and playlists, and tokens (headers, query strings, JWTs). Each target
//! runs `LIVEGATE_FUZZ_CASES` generated inputs (100 000 by default; `make fuzz` runs more):
//! nothing may panic, and every rejection must be a clean error.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, Uri};
use livegate::auth::{Access, Auth, Denied, Grant, Role, StreamScope};
use livegate::config::{AccessSettings, ClientLimits, MediaPorts, WebRtcSettings};
use livegate::http::{hls, identity};
use livegate::signalling::limits::{ClientIp, Limits};
use livegate::signalling::session::{Action, Session};
use livegate::signalling::{sdp, Feeds, Signalling};
use livegate::webrtc::candidates::CandidatePolicy;
use livegate::webrtc::{Feed, WebRtc};
use proptest::prelude::*;
use tower::ServiceExt;

fn cases() -> u32 {
    std::env::var("LIVEGATE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

const OFFER_LINES: [&str; 16] = [
    "v=0",
    "o=- 1 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 102",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=recvonly",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
    "a=setup:actpass",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=candidate:1 1 udp 2130706431 10.99.0.2 40000 typ host",
];

/// Offers near the valid one: its lines, dropped, repeated, reordered or replaced by noise.
fn offer_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        6 => proptest::sample::select(OFFER_LINES.to_vec()).prop_map(str::to_owned),
        1 => "[a-z]=[ -~]{0,60}",
        1 => "a=(rtpmap|fmtp|candidate|mid|sendonly|inactive):[ -~]{0,40}",
        1 => "m=(video|audio|application) [0-9]{1,5} [A-Z/]{0,20}( [0-9]{1,3}){0,4}",
        1 => any::<String>(),
    ];
    (proptest::collection::vec(line, 0..24), prop_oneof!["\r\n", "\n", ""])
        .prop_map(|(lines, end)| lines.iter().map(|l| format!("{l}{end}")).collect())
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        offer_like(),
        "candidate:[0-9] 1 (udp|tcp|UDP) [0-9]{1,10} [0-9a-f.:]{1,40} [0-9]{1,5} typ (host|srflx|relay)[ -~]{0,30}"
    ]
}

/// Signalling messages: arbitrary text, and JSON objects with known and unknown fields.
fn ws_message() -> impl Strategy<Value = String> {
    let typ = prop_oneof![
        Just("offer".to_owned()),
        Just("candidate".to_owned()),
        Just("auth".to_owned()),
        Just("answer".to_owned()),
        "[a-z]{0,8}"
    ];
    let field = prop_oneof![
        Just("sdp".to_owned()),
        Just("candidate".to_owned()),
        Just("sdpMid".to_owned()),
        Just("sdpMLineIndex".to_owned()),
        Just("token".to_owned()),
        Just("usernameFragment".to_owned()),
        "[a-zA-Z]{1,8}"
    ];
    let value = prop_oneof![
        json_string().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    let object = (typ, proptest::collection::vec((field, value), 0..5)).prop_map(|(typ, fields)| {
        let mut map = serde_json::Map::new();
        map.insert("type".into(), typ.into());
        for (key, value) in fields {
            map.insert(key, value);
        }
        serde_json::Value::Object(map).to_string()
    });
    prop_oneof![3 => object, 1 => any::<String>(), 1 => "\\{[ -~]{0,80}"]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn websocket_messages(messages in proptest::collection::vec(ws_message(), 1..4), needs_auth in any::<bool>()) {
        let mut session = Session::new(needs_auth);
        let policy = CandidatePolicy::from_local_sdp("a=candidate:1 1 udp 1 10.99.0.1 5000 typ host\r\n");
        for message in &messages {
            match session.on_text(message) {
                Ok(Action::Answer { sdp, .. }) => prop_assert!(sdp::check_offer(&sdp).is_ok()),
                Ok(Action::AddCandidate { candidate, .. }) => {
                    let _ = policy.refuses(&candidate);
                }
                Ok(Action::Authenticate { .. }) => session.authenticated(),
                Ok(Action::Nothing) => {}
                Err(err) => {
                    prop_assert!(!err.to_string().is_empty());
                    prop_assert!([1008, 1009].contains(&err.close_code()));
                }
            }
        }
    }

    #[test]
    fn sdp_offer_checks(offer in offer_like()) {
        match sdp::check_offer(&offer) {
            Ok(video) => prop_assert!(offer.contains("m=video") && !video.mid.is_empty() || offer.contains("m=video")),
            Err(err) => prop_assert!(err.to_string().contains("livegate sends H.264")),
        }
    }

    #[test]
    fn hls_file_names_and_playlists(file in prop_oneof!["[a-z0-9./\\\\-]{0,30}(\\.ts|\\.m3u8)?", any::<String>()], token in any::<String>()) {
        if hls::classify(&file).is_ok() {
            let plain = file.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            prop_assert!(plain && !file.starts_with('.'), "{file:?}");
        }
        let playlist = format!("#EXTM3U\n#EXTINF:1.0,\n{file}\n");
        let rewritten = hls::with_token(&playlist, &token);
        prop_assert_eq!(rewritten.lines().count(), playlist.lines().count(), "no line is added or lost");
    }

    #[test]
    fn tokens_in_headers_and_queries(
        authorization in prop_oneof![any::<String>(), "(Bearer|bearer|Basic|) [ -~]{0,40}"],
        query in prop_oneof![any::<String>(), "(token=[ -~&%+=]{0,40})?(&[a-z]{1,5}=[a-z%0-9+]{0,10}){0,3}"],
        jwt in prop_oneof!["[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}", any::<String>()],
    ) {
        let mut headers = axum::http::HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&authorization) {
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        if let Ok(uri) = format!("/hls/live/index.m3u8?{query}").parse::<Uri>() {
            let _ = identity::request_token(&headers, &uri);
        }
        let access = runtime().block_on(jwt_auth().check(Some(&jwt)));
        let refused = matches!(access.grant(), Err(Denied::BadCredential(_) | Denied::NoCredential));
        prop_assert!(refused, "random text is never a valid credential: {jwt:?}");
    }
}

fn jwt_auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let secret = dir.join("secret");
        let jwks = dir.join("jwks.json");
        std::fs::write(&secret, "fuzz-secret-0123456789abcdef").unwrap();
        std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
        let settings = AccessSettings {
            jwt_secret_file: Some(secret),
            jwks_file: Some(jwks),
            viewer_tokens: vec!["fuzz-viewer-token".parse().unwrap()],
            ..Default::default()
        };
        runtime().block_on(Auth::start(&settings, tokio_util::sync::CancellationToken::new())).unwrap()
    })
}

struct SilentFeed;
impl Feed for SilentFeed {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<rtc::rtp::Packet> {
        tokio::sync::broadcast::channel(1).1
    }
    fn subscribe_audio(&self) -> tokio::sync::broadcast::Receiver<rtc::rtp::Packet> {
        tokio::sync::broadcast::channel(1).1
    }
    fn carries(&self) -> livegate::webrtc::Carried {
        livegate::webrtc::Carried { h264_profile_level_id: None, audio: true }
    }
    fn request_keyframe(&self) {}
    fn request_keyframe_for_joiner(&self) {}
}

struct OneStream;
impl Feeds for OneStream {
    fn feed(&self, stream: &str) -> Option<Arc<dyn Feed>> {
        (stream == "live").then(|| Arc::new(SilentFeed) as Arc<dyn Feed>)
    }
}

/// The real WHEP routes, with the extensions the HTTP layer would add.
fn whep_app() -> axum::Router {
    static APP: OnceLock<axum::Router> = OnceLock::new();
    APP.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = WebRtcSettings {
            ports: MediaPorts::Shared { udp: 0, tcp: Some(0) },
            bind: "127.0.0.1".parse().unwrap(),
            public_ip: None,
            ice_servers: vec![],
            max_viewers: 4,
        };
        let webrtc = runtime().block_on(async { Arc::new(WebRtc::new(settings, Default::default()).unwrap()) });
        let limits = ClientLimits { max_pending_per_ip: 8, signalling_rate: 1_000_000, trusted_proxies: vec![] };
        let signalling = Arc::new(Signalling {
            webrtc,
            feeds: Arc::new(OneStream),
            ice_servers: vec![],
            auth: Arc::new(Auth::open()),
            limits: Limits::new(&limits),
            allowed_origins: vec![],
        });
        livegate::http::signalling_routes(signalling)
    })
    .clone()
}

/// Method, path, headers, body, whether the caller is granted access, and its IPv4 address.
type WhepRequest = (String, String, Vec<(String, String)>, String, bool, [u8; 4]);

fn whep_request() -> impl Strategy<Value = WhepRequest> {
    let method = prop_oneof![
        Just("POST".to_owned()),
        Just("DELETE".to_owned()),
        Just("PATCH".to_owned()),
        Just("OPTIONS".to_owned()),
        Just("GET".to_owned()),
        "[A-Z]{1,7}"
    ];
    let path = prop_oneof![
        Just("/whep/live".to_owned()),
        "/whep/[a-z0-9_%.-]{0,12}",
        "/whep/live/[a-f0-9-]{0,36}",
        "/[ -~]{0,30}",
    ];
    let header = (
        prop_oneof![
            Just("content-type".to_owned()),
            Just("authorization".to_owned()),
            Just("origin".to_owned()),
            Just("content-length".to_owned()),
            "[a-z-]{1,12}"
        ],
        prop_oneof![
            Just("application/sdp".to_owned()),
            Just("application/SDP; charset=utf-8".to_owned()),
            "[ -~]{0,30}"
        ],
    );
    let body = prop_oneof![offer_like(), any::<String>()];
    (method, path, proptest::collection::vec(header, 0..4), body, any::<bool>(), any::<[u8; 4]>())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn whep_requests((method, path, headers, body, allowed, ip) in whep_request()) {
        let Ok(uri) = path.parse::<Uri>() else { return Ok(()) };
        let mut request = Request::builder().method(method.as_str()).uri(uri);
        for (name, value) in &headers {
            if name == "content-length" {
                continue;
            }
            request = request.header(name.as_str(), value.as_str());
        }
        let Ok(mut request) = request.body(Body::from(body)) else { return Ok(()) };
        let access = if allowed {
            Access::new(Ok(Grant { role: Role::Viewer, streams: StreamScope::All, holder: "fuzz".into() }))
        } else {
            Access::new(Err(Denied::NoCredential))
        };
        request.extensions_mut().insert(access);
        request.extensions_mut().insert(ClientIp(IpAddr::from(ip)));
        let response = runtime().block_on(whep_app().oneshot(request)).unwrap();
        let status = response.status();
        prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}: 500");
        if status.is_client_error() {
            let body = runtime().block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).unwrap();
            // Only the router's own "no such route/method" answers are bare.
            let routing = [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&status);
            prop_assert!(!body.is_empty() || routing, "{method} {path}: {status} says why");
        }
    }
}
