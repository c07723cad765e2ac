//! Who may watch, what never shows, and abuse that harms no one: against a real gateway
//! process, with real TLS, WebRTC peers (webrtcbin), ffmpeg and openssl.

mod common;

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peer::{self, Viewer};
use common::{client, client_builder, Gateway};
use futures_util::SinkExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const START: Duration = Duration::from_secs(20);
const VIEWER: &str = "viewer-token-7f3a9c21";
const ADMIN: &str = "admin-token-5be8d410";
/// A small picture keeps the encoders of several gateways cheap on two cores.
const SMALL: [&str; 4] = ["--width", "320", "--height", "180"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    SMALL.iter().copied().chain(extra.iter().copied()).collect()
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// Polls the playlist until it lists a segment; returns its text.
async fn playlist(gateway: &Gateway, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client().get(gateway.url(path)).send().await.unwrap();
        if response.status() == 200 {
            let text = response.text().await.unwrap();
            if text.contains("#EXTINF") {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "no playlist with segments at {path}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The HTTP status a WebSocket upgrade is refused with (0 if it was accepted).
async fn ws_refusal(url: &str) -> u16 {
    ws_refusal_from(url, None).await
}

/// As `ws_refusal`, sending an `Origin` as a browser page would.
async fn ws_refusal_from(url: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    common::install_crypto();
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(peer::AcceptAnyCertificate::default()))
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(config));
    match tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector)).await {
        Ok(_) => 0,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("WebSocket {url}: {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_token_gates_every_viewer_route() {
    let gateway = Gateway::start(&args(&["--viewer-token", VIEWER, "--admin-token", ADMIN])).with_admin_token(ADMIN);
    gateway.wait_for_state("live", "playing", START).await;
    let http = client();
    let get = |path: &str| http.get(gateway.url(path));

    // Probes stay open, and say nothing of why a stream fails.
    assert_eq!(status_of(get("/healthz")).await, 200);
    assert_eq!(status_of(get("/readyz")).await, 200);

    let page = get("/").send().await.unwrap();
    assert_eq!(page.status(), 401);
    assert_eq!(page.headers()["www-authenticate"], r#"Bearer realm="livegate""#);
    assert!(page.text().await.unwrap().contains("<video"), "the player explains the refusal itself");
    let page = get(&format!("/?token={VIEWER}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("media-src 'self' blob:"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert!(page.headers().get("strict-transport-security").is_none(), "no HSTS for a self-signed certificate");
    assert_eq!(status_of(get("/player.js")).await, 200, "the player's code is the same for everyone");

    assert_eq!(status_of(get("/api/config")).await, 401);
    assert_eq!(status_of(get("/api/config").bearer_auth(VIEWER)).await, 200);
    let bad = get("/api/streams").bearer_auth("guess").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    assert!(bad.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let basic = get("/api/streams").header("authorization", format!("Basic {VIEWER}")).send().await.unwrap();
    assert_eq!(basic.status(), 401, "only Bearer carries a token");
    let as_viewer: Vec<Value> = get("/api/streams").bearer_auth(VIEWER).send().await.unwrap().json().await.unwrap();
    assert_eq!(as_viewer[0]["name"], "live");
    assert_eq!(as_viewer[0]["state"], "playing");
    for hidden in ["source", "viewers", "error", "packets_sent"] {
        assert!(as_viewer[0].get(hidden).is_none(), "a viewer does not see {hidden}: {as_viewer:?}");
    }
    let as_admin = gateway.stream("live").await;
    assert_eq!(as_admin["source"], "test");
    assert!(as_admin["viewers"].is_number());

    // HLS from one link: the playlist hands its token on to the segments.
    assert_eq!(status_of(get("/hls/live/index.m3u8")).await, 401);
    let text = playlist(&gateway, &format!("/hls/live/index.m3u8?token={VIEWER}")).await;
    let segment = text.lines().rev().find(|l| l.contains(".ts")).unwrap();
    assert!(segment.ends_with(&format!(".ts?token={VIEWER}")), "{text}");
    let fetched = get(&format!("/hls/live/{segment}")).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.headers()["cache-control"], "private, max-age=60", "no shared cache keeps it");
    let bare = segment.split('?').next().unwrap();
    assert_eq!(status_of(get(&format!("/hls/live/{bare}"))).await, 401);
    // Low-Latency HLS names its files in tag attributes too: each carries the token.
    let text = playlist(&gateway, &format!("/hls/live/ll.m3u8?token={VIEWER}")).await;
    let uris: Vec<&str> = text.split("URI=\"").skip(1).map(|rest| rest.split('"').next().unwrap()).collect();
    assert!(uris.iter().any(|u| u.starts_with("ll-init-")) && uris.len() > 2, "{text}");
    for uri in uris {
        assert!(uri.ends_with(&format!("?token={VIEWER}")), "{uri} in {text}");
        assert_eq!(status_of(get(&format!("/hls/live/{uri}"))).await, 200, "{uri}");
        assert_eq!(status_of(get(&format!("/hls/live/{}", uri.split('?').next().unwrap()))).await, 401);
    }

    // WHEP: the bearer token.
    let post = http.post(gateway.url("/whep/live")).header("content-type", "application/sdp").body("v=0");
    assert_eq!(status_of(post).await, 401, "refused before the offer is even read");
    let over_whep = Viewer::new();
    let location = over_whep.connect_whep_with(&gateway.base, "live", Some(VIEWER)).await;
    over_whep.wait_for_frames(10, Duration::from_secs(20)).await;
    assert_eq!(status_of(http.delete(gateway.url(&location))).await, 401);
    assert_eq!(status_of(http.delete(gateway.url(&location)).bearer_auth(VIEWER)).await, 200);

    // WebSocket: a bad token in the URL is refused at the upgrade; none means auth comes first.
    assert_eq!(ws_refusal(&gateway.ws_url("/ws/live?token=guess")).await, 401);
    let mut socket = peer::ws_connect(&gateway.ws_url("/ws/live")).await;
    let offer = json!({"type": "offer", "sdp": Viewer::new().offer()}).to_string();
    socket.send(Message::Text(offer.into())).await.unwrap();
    let refused = peer::next_message(&mut socket).await.unwrap().unwrap();
    assert!(refused["message"].as_str().unwrap().contains(r#""type":"auth""#), "{refused}");
    assert_eq!(peer::next_message(&mut socket).await, Some(Err(1008)));
    let mut socket = peer::ws_connect(&gateway.ws_url("/ws/live")).await;
    socket.send(Message::Text(json!({"type": "auth", "token": "guess"}).to_string().into())).await.unwrap();
    let refused = peer::next_message(&mut socket).await.unwrap().unwrap();
    assert!(refused["message"].as_str().unwrap().contains("not valid"), "{refused}");

    let by_message = Arc::new(Viewer::new());
    let _signalling = by_message.connect_ws_with(&gateway.ws_url("/ws/live"), Some(VIEWER)).await;
    by_message.wait_for_frames(10, Duration::from_secs(20)).await;
    let by_url = Arc::new(Viewer::new());
    let _signalling = by_url.connect_ws(&gateway.ws_url(&format!("/ws/live?token={VIEWER}"))).await;
    by_url.wait_for_frames(10, Duration::from_secs(20)).await;
    assert!(!gateway.log_text().contains(VIEWER), "tokens never reach the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_protected_hls_from_one_link() {
    let gateway = Gateway::start(&args(&["--viewer-token", VIEWER]));
    let url = gateway.url(&format!("/hls/live/index.m3u8?token={VIEWER}"));
    playlist(&gateway, &format!("/hls/live/index.m3u8?token={VIEWER}")).await;
    let (_, frames) = common::ffmpeg_frames(&url, 2).await;
    assert!(frames >= 50, "ffmpeg decoded {frames} frames in 2 s of a 30 fps stream");
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An ES256 key pair: the signing key and its public JWK.
fn es256_key(kid: &str) -> (EncodingKey, Value) {
    use base64::Engine;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
    (EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(), jwk)
}

fn es256(key: &EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, key).unwrap()
}

/// A JWKS endpoint on loopback serving whatever `keys` holds.
async fn jwks_server(keys: Arc<std::sync::Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(json!({"keys": *keys.lock().unwrap()})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwts_from_a_secret_file_and_a_jwks_endpoint() {
    let secret = "hs256-secret-of-at-least-32-bytes!!";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let (k1, jwk1) = es256_key("k1");
    let (k2, jwk2) = es256_key("k2");
    let keys = Arc::new(std::sync::Mutex::new(vec![jwk1]));
    let jwks_url = jwks_server(keys.clone()).await;
    let gateway = Gateway::start(&args(&[
        "--stream",
        "yard=test",
        "--stream",
        "lobby-1=test",
        "--jwt-secret-file",
        secret_file.to_str().unwrap(),
        "--jwks-url",
        &jwks_url,
        "--jwt-audience",
        "livegate",
    ]));
    let http = client();
    let hs256 = |claims: Value| {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let exp = now() + 300;
    let status = |path: &str, token: String| status_of(http.get(gateway.url(path)).bearer_auth(token));

    let lobby_viewer = hs256(json!({"exp": exp, "aud": "livegate", "livegate": {"streams": ["lobby-*"]}}));
    assert_eq!(status("/api/config", lobby_viewer.clone()).await, 200);
    let listed: Vec<Value> =
        http.get(gateway.url("/api/streams")).bearer_auth(&lobby_viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "lobby-1");
    // The page names the stream a viewer plays when its URL names none: the first they may watch.
    let config: Value =
        http.get(gateway.url("/api/config")).bearer_auth(&lobby_viewer).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["stream"], "lobby-1");
    let page = http.get(gateway.url("/")).bearer_auth(&lobby_viewer).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#""stream":"lobby-1""#), "{page}");
    assert!(![401, 403].contains(&status("/hls/lobby-1/index.m3u8", lobby_viewer.clone()).await));
    let outside = http
        .post(gateway.url("/whep/yard"))
        .bearer_auth(&lobby_viewer)
        .header("content-type", "application/sdp")
        .body("v=0")
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 403, "a stream outside the claim");
    assert!(outside.text().await.unwrap().contains("may not watch stream \"yard\""));
    assert_eq!(status("/api/streams", lobby_viewer.clone()).await, 200);

    let admin = hs256(json!({"exp": exp, "aud": "livegate", "livegate": {"role": "admin"}}));
    let full: Vec<Value> =
        http.get(gateway.url("/api/streams")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(full[0]["source"], "test", "an admin sees sources");
    let config: Value =
        http.get(gateway.url("/api/config")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["stream"], "yard");

    let refused = [
        ("expired", hs256(json!({"exp": now() - 120, "aud": "livegate"}))),
        ("wrong audience", hs256(json!({"exp": exp, "aud": "elsewhere"}))),
        (
            "wrong signature",
            encode(
                &Header::new(Algorithm::HS256),
                &json!({"exp": exp, "aud": "livegate"}),
                &EncodingKey::from_secret(b"another-secret-of-32-bytes-long!!!"),
            )
            .unwrap(),
        ),
        ("unknown kid", es256(&k2, "k2", json!({"exp": exp, "aud": "livegate"}))),
        ("signed by another key under a known kid", es256(&k2, "k1", json!({"exp": exp, "aud": "livegate"}))),
    ];
    for (what, token) in refused {
        let response = http.get(gateway.url("/api/config")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"), "{what}");
    }
    assert_eq!(status("/api/config", es256(&k1, "k1", json!({"exp": exp, "aud": "livegate"}))).await, 200);

    // The identity provider rotates in a new key: a token naming it fetches the set again.
    keys.lock().unwrap().push(jwk2);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(status("/api/config", es256(&k2, "k2", json!({"exp": exp, "aud": "livegate"}))).await, 200);
}

const CAMERA_PASSWORD: &str = "S3cretCamPass";
const TURN_PASSWORD: &str = "TurnPass9921";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_show_in_the_api_logs_errors_or_check_config() {
    let camera = format!("cam=rtsp://admin:{CAMERA_PASSWORD}@127.0.0.1:9/stream");
    let turn = format!("turn:alice:{TURN_PASSWORD}@turn.example.org:3478");
    let gateway = Gateway::start_logging(
        &args(&[
            "--stream",
            "live=test",
            "--stream",
            &camera,
            "--ice-server",
            &turn,
            "--viewer-token",
            VIEWER,
            "--admin-token",
            ADMIN,
        ]),
        "debug",
    )
    .with_admin_token(ADMIN);
    let cam = gateway.wait_for_state("cam", "no-signal", START).await;
    // Let it retry at least once, so the retry path is logged too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let http = client();
    let streams = http.get(gateway.url("/api/streams")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    assert!(streams.contains("rtsp://admin:***@127.0.0.1:9/stream"), "{streams}");
    assert!(cam["error"].as_str().is_some_and(|e| !e.is_empty()), "{cam}");
    let config = http.get(gateway.url("/api/config")).bearer_auth(VIEWER).send().await.unwrap().text().await.unwrap();
    assert!(config.contains(TURN_PASSWORD), "TURN credentials are meant for browsers: {config}");
    // The page brings them to a viewer it admits (its first offer need not ask), never to others.
    let page = |token: Option<&str>| {
        let request = http.get(gateway.url("/"));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    let admitted = page(Some(VIEWER)).await.unwrap().text().await.unwrap();
    assert!(admitted.contains(TURN_PASSWORD), "the page carries the ICE servers for a viewer");
    let refused = page(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused = refused.text().await.unwrap();
    assert!(refused.contains(r#"id="livegate-client">null</script>"#) && !refused.contains(TURN_PASSWORD), "{refused}");
    let readyz = http.get(gateway.url("/readyz")).send().await.unwrap().text().await.unwrap();
    let _ = http.get(gateway.url("/api/streams")).bearer_auth(format!("{ADMIN}x")).send().await.unwrap();

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_livegate"))
        .args(["--check-config", "--stream", &camera, "--ice-server", &turn, "--viewer-token", VIEWER])
        .output()
        .unwrap();
    let check_text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success() && check_text.contains("admin:***@127.0.0.1"), "{check_text}");
    let (_, rejected) =
        common::run_to_exit(&["--jwks-url", &format!("http://admin:{CAMERA_PASSWORD}@example.org/jwks")]);
    assert!(rejected.contains("jwks_url") || rejected.contains("JWKS"), "{rejected}");

    let logs = gateway.log_text();
    assert!(logs.contains("admin:***@127.0.0.1"), "the source is logged, redacted");
    for (place, text) in
        [("API", &streams), ("readyz", &readyz), ("log", &logs), ("check-config", &check_text), ("error", &rejected)]
    {
        for secret in [CAMERA_PASSWORD, VIEWER, ADMIN] {
            assert!(!text.contains(secret), "{secret} shows in the {place}");
        }
    }
    for (place, text) in [("log", &logs), ("check-config", &check_text), ("API", &streams)] {
        assert!(!text.contains(TURN_PASSWORD), "the TURN password shows in the {place}");
    }
}

/// UDP ports of `range` on which the process `pid` holds a socket (from /proc).
fn bound_ports(pid: u32, range: &str) -> Vec<u16> {
    let (low, high) = range.split_once('-').unwrap();
    let (low, high): (u16, u16) = (low.parse().unwrap(), high.parse().unwrap());
    common::udp_ports(pid).into_iter().filter(|port| (low..=high).contains(port)).collect()
}

/// Waits until the stream has `viewers`; returns how long that took.
async fn time_until_viewers(gateway: &Gateway, viewers: u64, within: Duration) -> Duration {
    let started = Instant::now();
    gateway.wait_for_viewers("live", viewers, within).await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_connecting_sessions_and_hang_ups_harm_no_one() {
    // A port per viewer, so what each session holds shows in /proc.
    let ports = common::port_range(40);
    let gateway = Gateway::start_in(&args(&[]), tempfile::tempdir().unwrap(), &ports);
    gateway.wait_for_state("live", "playing", START).await;
    let offer = Viewer::new().offer();
    let whep = gateway.url("/whep/live");
    let post = |client: &reqwest::Client| {
        client.post(&whep).header("content-type", "application/sdp").body(offer.clone()).send()
    };

    // One client posts 150 offers and never connects.
    let attacker = client_builder().local_address(IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let answers = futures_util::future::join_all((0..150).map(|_| post(&attacker))).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
    let answered = statuses.iter().filter(|s| **s == 201).count();
    let limited = answers.iter().flatten().filter(|r| r.status() == 429).collect::<Vec<_>>();
    eprintln!("150 offers from one client: {answered} answered, {} refused with 429", limited.len());
    assert!((1..=8).contains(&answered), "at most --max-pending-per-ip sessions: {statuses:?}");
    assert_eq!(answered + limited.len(), 150, "{statuses:?}");
    assert!(limited.iter().all(|r| r.headers().contains_key("retry-after")));
    let answered_at = Instant::now();

    // Clients that hang up while their offer is being answered.
    for (i, ms) in [1u64, 2, 3, 5, 8, 12, 20, 30, 50, 80].into_iter().enumerate() {
        let quitter = client_builder()
            .local_address(IpAddr::from([127, 0, 0, 10 + i as u8]))
            .timeout(Duration::from_millis(ms))
            .build()
            .unwrap();
        let _ = post(&quitter).await;
    }

    // Meanwhile a real viewer from another address plays within 2 s.
    let viewer = Viewer::new();
    let asked = Instant::now();
    viewer.connect_whep(&gateway.base, "live").await;
    viewer.wait_for_frames(1, Duration::from_secs(2)).await;
    eprintln!("real viewer's first frame {} ms after its offer", asked.elapsed().as_millis());

    // Every unconnected session is released within 10 s of its answer: ports unbound too.
    gateway.wait_for_viewers("live", 1, Duration::from_secs(15)).await;
    let reclaimed = answered_at.elapsed();
    eprintln!("unconnected sessions released {} ms after their answers", reclaimed.as_millis());
    assert!(reclaimed <= Duration::from_millis(11_500), "released after {reclaimed:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bound = bound_ports(gateway.pid(), &ports);
    assert_eq!(bound.len(), 1, "only the real viewer's socket stays bound in {ports}: {bound:?}");
    assert!(!gateway.log_text().contains("no usable UDP port"));
    let before = viewer.seen().frames_with_strip;
    viewer.wait_for_frames(before + 30, Duration::from_secs(10)).await;

    // The attacker's places are free again.
    let again = post(&attacker).await.unwrap();
    assert_eq!(again.status(), 201);
}

/// Not a test on its own: a viewer process for `a_killed_viewer_is_released_within_15_s`.
#[tokio::test]
#[ignore]
async fn viewer_process() {
    let Ok(base) = std::env::var("LIVEGATE_TEST_GATEWAY") else { return };
    let viewer = Viewer::new();
    viewer.connect_whep(&base, "live").await;
    viewer.wait_for_frames(5, Duration::from_secs(20)).await;
    println!("PLAYING");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_viewer_is_released_within_15_s() {
    use std::io::BufRead;
    let gateway = Gateway::start(&args(&[]));
    gateway.wait_for_state("live", "playing", START).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["viewer_process", "--exact", "--ignored", "--nocapture"])
        .env("LIVEGATE_TEST_GATEWAY", &gateway.base)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let playing = tokio::task::spawn_blocking(move || stdout.lines().map_while(Result::ok).any(|l| l == "PLAYING"));
    assert!(tokio::time::timeout(Duration::from_secs(30), playing).await.unwrap().unwrap(), "the viewer never played");
    gateway.wait_for_viewers("live", 1, Duration::from_secs(5)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let released = time_until_viewers(&gateway, 0, Duration::from_secs(20)).await;
    eprintln!("SIGKILLed viewer released after {} ms", released.as_millis());
    assert!(released <= Duration::from_secs(15), "{released:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_silent_and_slow_clients_are_cut_off() {
    let gateway = Gateway::start(&args(&[]));
    gateway.wait_for_state("live", "playing", START).await;
    let big = client()
        .post(gateway.url("/whep/live"))
        .header("content-type", "application/sdp")
        .body("a".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);

    let mut socket = peer::ws_connect(&gateway.ws_url("/ws/live")).await;
    let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(70 * 1024));
    socket.send(Message::Text(huge.into())).await.unwrap();
    let error = peer::next_message(&mut socket).await.unwrap().unwrap();
    assert!(error["message"].as_str().unwrap().contains("65536"), "{error}");
    assert_eq!(peer::next_message(&mut socket).await, Some(Err(1009)));

    let silent = tokio::spawn({
        let url = gateway.ws_url("/ws/live");
        async move {
            let mut socket = peer::ws_connect(&url).await;
            let opened = Instant::now();
            let error = peer::next_message(&mut socket).await.unwrap().unwrap();
            (opened.elapsed(), error, peer::next_message(&mut socket).await)
        }
    });

    // A client that never finishes its request headers is cut off.
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(peer::AcceptAnyCertificate::default()))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await;
    assert!(closed.is_ok(), "a slow client was never cut off");
    eprintln!("slow headers cut off after {} ms", started.elapsed().as_millis());
    assert!(started.elapsed() >= Duration::from_secs(5));

    let (after, error, close) = silent.await.unwrap();
    eprintln!("silent WebSocket closed after {} ms", after.as_millis());
    assert!(error["message"].as_str().unwrap().contains("no offer within 10 s"), "{error}");
    assert_eq!(close, Some(Err(1008)));
    assert!(after >= Duration::from_secs(9) && after <= Duration::from_secs(12), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    let gateway = Gateway::start(&args(&[]));
    let connect = |version: &str| {
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &gateway.addr.to_string(), version, "-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is installed (scripts/install-deps test)")
    };
    let old = connect("-tls1_1");
    let text = String::from_utf8_lossy(&old.stdout).into_owned() + &String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success(), "TLS 1.1 was accepted: {text}");
    // rustls has no TLS 1.1: it answers the hello with an alert (handshake failure).
    assert!(text.contains("Cipher is (NONE)") && text.contains("alert"), "{text}");
    let current = connect("-tls1_2");
    let text = String::from_utf8_lossy(&current.stdout);
    assert!(current.status.success() && text.contains("Protocol  : TLSv1.2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trickled_candidates_are_capped_and_scoped() {
    let gateway = Gateway::start(&args(&[]));
    gateway.wait_for_state("live", "playing", START).await;
    let peer_ip = "10.99.0.2";
    let targets: Vec<UdpSocket> = (0..200).map(|_| UdpSocket::bind((peer_ip, 0)).unwrap()).collect();
    for socket in &targets {
        socket.set_nonblocking(true).unwrap();
    }
    let offer: String =
        Viewer::new().offer().lines().filter(|l| !l.starts_with("a=candidate")).map(|l| format!("{l}\r\n")).collect();
    let mut socket = peer::ws_connect(&gateway.ws_url("/ws/live")).await;
    socket.send(Message::Text(json!({"type": "offer", "sdp": offer}).to_string().into())).await.unwrap();
    let answer = peer::next_json(&mut socket).await.unwrap();
    assert_eq!(answer["type"], "answer", "{answer}");
    let loopback = json!({"type": "candidate", "candidate": "candidate:9 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"});
    socket.send(Message::Text(loopback.to_string().into())).await.unwrap();
    for (i, target) in targets.iter().enumerate() {
        let port = target.local_addr().unwrap().port();
        let candidate = format!("candidate:{i} 1 udp {} {peer_ip} {port} typ host", 2130706431 - i);
        let message = json!({"type": "candidate", "candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0});
        socket.send(Message::Text(message.to_string().into())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut buf = [0u8; 1500];
    let reached = targets.iter().filter(|socket| socket.recv(&mut buf).is_ok()).count();
    eprintln!("200 trickled candidates: STUN reached {reached} of them");
    assert!(reached >= 1, "the admitted candidates are checked");
    assert!(reached <= 15, "at most 16 candidates per session (one was the loopback address): {reached}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_allowed_origins_and_never_offers_admin_answers_to_any() {
    let gateway = Gateway::start(&args(&["--cors-origin", "https://dash.example"]));
    let http = client();
    let from = |origin: &str, path: &str| http.get(gateway.url(path)).header("origin", origin.to_owned()).send();
    let allowed = from("https://dash.example", "/api/config").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://dash.example");
    let other = from("https://evil.example", "/api/config").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let admin = from("https://dash.example", "/api/streams").await.unwrap();
    assert_eq!(admin.headers()["access-control-allow-origin"], "https://dash.example");
    assert!(from("https://evil.example", "/api/streams")
        .await
        .unwrap()
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    // A page from another origin may not open the WebSocket; the gateway's own page and
    // non-browser clients may.
    let refused = ws_refusal_from(&gateway.ws_url("/ws/live"), Some("https://evil.example")).await;
    assert_eq!(refused, 403);
    let own = format!("https://{}", gateway.addr);
    assert_eq!(ws_refusal_from(&gateway.ws_url("/ws/live"), Some(&own)).await, 0);
    assert_eq!(ws_refusal_from(&gateway.ws_url("/ws/live"), Some("https://dash.example")).await, 0);

    // With the default (any origin), the admin answer still carries no CORS header.
    let open = Gateway::start(&args(&[]));
    let response = http.get(open.url("/api/streams")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none(), "never * for the admin API");
    let whep = http.get(open.url("/api/config")).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(whep.headers()["access-control-allow-origin"], "*");
}
