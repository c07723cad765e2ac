//! TLS as an operator meets it: certificate files that a Kubernetes Secret mount swaps under a
//! running gateway.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Gateway;
use livegate::http::tls::fingerprint;

/// Lays out `dir` the way the kubelet mounts a Secret: the files are symlinks through `..data`,
/// which points at a timestamped folder and is swapped atomically on update.
fn mount_secret(dir: &Path, version: &str, names: &[&str]) -> String {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let folder = dir.join(format!("..{version}"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("tls.crt"), generated.cert.pem()).unwrap();
    std::fs::write(folder.join("tls.key"), generated.signing_key.serialize_pem()).unwrap();
    let staging = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &staging).unwrap();
    std::fs::rename(&staging, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("..data/{file}"), link).unwrap();
        }
    }
    fingerprint(generated.cert.pem().as_bytes())
}

/// The SHA-256 fingerprint of the certificate the gateway presents.
async fn served_fingerprint(gateway: &Gateway) -> String {
    common::install_crypto();
    let seen = Arc::new(Mutex::new(String::new()));
    let verifier = Arc::new(common::peer::AcceptAnyCertificate { seen: Some(seen.clone()) });
    let config =
        rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let _tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let fingerprint = seen.lock().unwrap().clone();
    fingerprint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_secret_is_served_without_a_restart() {
    let secret = tempfile::tempdir().unwrap();
    let first = mount_secret(secret.path(), "2026_11_27_01", &["first.example"]);
    let cert = secret.path().join("tls.crt");
    let key = secret.path().join("tls.key");
    let gateway = Gateway::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert_eq!(served_fingerprint(&gateway).await, first);
    // A real certificate: browsers are told to insist on HTTPS.
    let page = common::client().get(gateway.url("/player.js")).send().await.unwrap();
    assert_eq!(page.headers()["strict-transport-security"], "max-age=31536000");

    let second = mount_secret(secret.path(), "2026_11_27_02", &["second.example"]);
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_fingerprint(&gateway).await != second {
        assert!(Instant::now() < deadline, "still serving the old certificate 10 s after the swap");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gateway.log_text().contains("TLS certificate reloaded"));

    // A broken update keeps the working certificate.
    let broken = secret.path().join("..2026_11_27_03");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("tls.crt"), "garbage").unwrap();
    std::fs::write(broken.join("tls.key"), "garbage").unwrap();
    std::os::unix::fs::symlink("..2026_11_27_03", secret.path().join("..data_tmp")).unwrap();
    std::fs::rename(secret.path().join("..data_tmp"), secret.path().join("..data")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served_fingerprint(&gateway).await, second);
    assert!(gateway.log_text().contains("keeping the old one"));
}
