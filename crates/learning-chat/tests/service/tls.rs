//! TLS on the real service: ALPN `h2` next to HTTP/1.1 clients, certificate checks at start,
//! reload on a file change (in process) and on SIGHUP (the real binary), and nginx terminating
//! TLS with HTTP/2 in front (deploy/nginx/learning-chat-tls.conf).

use super::connections::{
    ask_long_then_read_nothing, long_answer_settings, small_window_connection,
};
use super::h2c::{chat_request, curl_chat, get_request, h2_handshake, metric, send, GUARD};
use crate::support::cluster::Proc;
use crate::support::processes::{free_port, wait_for_port};
use crate::support::{offline_settings, spawn_app};
use futures::future::join_all;
use hyper::{StatusCode, Version};
use learning_chat_testkit::nginx::{self, Site};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost` and 127.0.0.1, as PEM files in `dir`.
fn write_certificate(dir: &Path) -> CertificateDer<'static> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen");
    std::fs::write(dir.join("tls.crt"), generated.cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key"), generated.signing_key.serialize_pem()).expect("write key");
    generated.cert.der().clone()
}

fn tls_settings(dir: &Path) -> learning_chat::config::Settings {
    let mut settings = offline_settings();
    settings.server.tls_cert = dir.join("tls.crt").display().to_string();
    settings.server.tls_key = dir.join("tls.key").display().to_string();
    settings
}

/// A TLS client trusting the certificates in `trusted`, offering `alpn`.
async fn tls_connect(
    port: u16,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    tls_over(tcp, trusted, alpn).await
}

/// TLS over `tcp`, trusting the certificates in `trusted`, offering `alpn`.
async fn tls_over(
    tcp: TcpStream,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).expect("trust anchor");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

fn served_certificate(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("certificates")[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_negotiates_h2_by_alpn_and_still_serves_http1_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = write_certificate(dir.path());
    let app = spawn_app(tls_settings(dir.path())).await;
    let port = app.addr.port();

    let tls = tls_connect(port, std::slice::from_ref(&cert), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, _driver) = h2_handshake(tls).await;
    let (status, version, body) = send(&sender, chat_request("What is a tangent?")).await;
    assert_eq!(
        (status, version),
        (StatusCode::OK, Version::HTTP_2),
        "{body}"
    );

    // A client offering only HTTP/1.1 (reqwest here is built without HTTP/2).
    let client = learning_chat_testkit::http::client_builder()
        .add_root_certificate(reqwest::Certificate::from_der(&cert).expect("cert"))
        .build()
        .expect("client");
    let response = client
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .expect("HTTPS over HTTP/1.1");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    // And curl: ALPN h2 against the CA file.
    let ca = dir.path().join("tls.crt").display().to_string();
    let url = format!("https://localhost:{port}/api/v1/agents/math");
    let (status, version, _) = tokio::task::spawn_blocking(move || {
        curl_chat(&url, &["--http2", "--cacert", &ca], "What is a tangent?")
    })
    .await
    .expect("curl task");
    assert_eq!((status, version.as_str()), (200, "2"));

    // Plain text on the TLS port is not served.
    let plain = learning_chat_testkit::http::client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn the_service_refuses_to_start_with_a_missing_or_mismatched_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = tls_settings(dir.path());
    assert!(learning_chat::app::Application::build(settings.clone())
        .await
        .is_err());
    write_certificate(dir.path());
    let other = tempfile::tempdir().expect("temp dir");
    write_certificate(other.path());
    std::fs::copy(other.path().join("tls.key"), dir.path().join("tls.key")).expect("copy key");
    let error = learning_chat::app::Application::build(settings)
        .await
        .err()
        .expect("a key of another certificate is refused");
    assert!(format!("{error:#}").contains("key pair"), "{error:#}");
}

/// Opens TLS connections until one is served `want`, at most for the hang guard.
async fn wait_for_served(
    port: u16,
    trusted: &[CertificateDer<'static>],
    want: &CertificateDer<'_>,
) {
    let until = Instant::now() + GUARD;
    loop {
        let tls = tls_connect(port, trusted, &[b"h2"]).await;
        if served_certificate(&tls) == *want {
            return;
        }
        assert!(
            Instant::now() < until,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_served_to_new_connections_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_certificate(dir.path());
    let mut settings = tls_settings(dir.path());
    settings.server.tls_reload_check = Duration::from_millis(50);
    let app = spawn_app(settings).await;
    let port = app.addr.port();
    let open = tls_connect(port, std::slice::from_ref(&first), &[b"h2"]).await;
    assert_eq!(served_certificate(&open), first);
    let (sender, driver) = h2_handshake(open).await;

    // A broken file is refused: the first certificate is still served.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = tls_connect(port, std::slice::from_ref(&first), &[b"h2"]).await;
    assert_eq!(served_certificate(&still), first);

    let staging = tempfile::tempdir().expect("temp dir");
    let second = write_certificate(staging.path());
    // Key first, then certificate (the usual order of a renewal writing files in place).
    std::fs::copy(staging.path().join("tls.key"), dir.path().join("tls.key")).expect("key");
    std::fs::copy(staging.path().join("tls.crt"), dir.path().join("tls.crt")).expect("cert");
    wait_for_served(port, &[first.clone(), second.clone()], &second).await;

    let (status, version, _) = send(&sender, get_request("/health")).await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert!(!driver.is_finished(), "the open connection was kept");
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_real_binary_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_certificate(dir.path());
    let port = free_port();
    let mut server = Proc::new(
        Command::new(env!("CARGO_BIN_EXE_learning-chat"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LEARNING_CHAT_BIND", format!("127.0.0.1:{port}"))
            .env("LEARNING_CHAT_METRICS__BIND", "off")
            // Nothing here is stored: not the default ./learning-chat.db.
            .env("LEARNING_CHAT_DATABASE__URL", "none")
            .env("LEARNING_CHAT_SERVER__TLS_CERT", dir.path().join("tls.crt"))
            .env("LEARNING_CHAT_SERVER__TLS_KEY", dir.path().join("tls.key"))
            // SIGHUP only: the file check is off.
            .env("LEARNING_CHAT_SERVER__TLS_RELOAD_CHECK_MS", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("learning-chat starts"),
        port,
    );
    assert!(wait_for_port(port, GUARD), "learning-chat did not listen");
    let open = tls_connect(port, std::slice::from_ref(&first), &[b"h2"]).await;
    let (sender, driver) = h2_handshake(open).await;
    let (status, _, _) = send(&sender, get_request("/health")).await;
    assert_eq!(status, StatusCode::OK);

    let staging = tempfile::tempdir().expect("temp dir");
    let second = write_certificate(staging.path());
    std::fs::copy(staging.path().join("tls.key"), dir.path().join("tls.key")).expect("key");
    std::fs::copy(staging.path().join("tls.crt"), dir.path().join("tls.crt")).expect("cert");
    // Not reloaded without the signal.
    let before = tls_connect(port, &[first.clone(), second.clone()], &[b"h2"]).await;
    assert_eq!(served_certificate(&before), first);

    server.signal("-HUP");
    wait_for_served(port, &[first.clone(), second.clone()], &second).await;
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "SIGHUP must not stop the service"
    );
    let (status, version, _) = send(&sender, get_request("/health")).await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert!(!driver.is_finished(), "the open connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_terminates_tls_with_http2_and_reuses_its_upstream_connections() {
    let app = spawn_app(offline_settings()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = write_certificate(dir.path());
    let nginx = nginx::start(&Site {
        dir: dir.path(),
        files: &["learning-chat.conf", "learning-chat-tls.conf"],
        upstreams: &[app.addr.port()],
        tls: true,
    });

    // Many streams on one client connection to nginx.
    let tls = tls_connect(nginx.port, &[cert], &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, _driver) = h2_handshake(tls).await;
    const REQUESTS: usize = 64;
    let answers = join_all(
        (0..REQUESTS).map(|i| send(&sender, chat_request(&format!("Question {}?", i % 8)))),
    )
    .await;
    for (status, version, body) in &answers {
        assert_eq!(
            (*status, *version),
            (StatusCode::OK, Version::HTTP_2),
            "{body}"
        );
    }
    // Then one after another: each reuses an idle upstream connection.
    for _ in 0..REQUESTS {
        let (status, _, _) = send(&sender, chat_request("Question 0?")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let ca = dir.path().join("tls.crt").display().to_string();
    let url = format!("https://localhost:{}/api/v1/agents/math", nginx.port);
    let (status, version, _) = tokio::task::spawn_blocking(move || {
        curl_chat(&url, &["--http2", "--cacert", &ca], "Question 1?")
    })
    .await
    .expect("curl task");
    assert_eq!((status, version.as_str()), (200, "2"));

    // At most one upstream connection per concurrent request (plus one to spare): with
    // no keep-alive it would be one per request, 2 * REQUESTS + 1.
    let upstream = metric(&app, "learning_chat_http_connections_total").await;
    assert!(
        upstream <= (REQUESTS + 1) as f64,
        "{upstream} upstream connections for {} requests",
        2 * REQUESTS + 1
    );
    drop(nginx);
    app.stop().await.expect("stops");
}

/// Over TLS, a client that asks for an 8 MB answer and then reads nothing is closed at the send
/// stall bound, as in plain text (`connections::a_client_that_reads_nothing_...`): the TLS
/// layer buffers what hyper hands it and meets the full socket in its own writes and flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_reads_nothing_of_a_large_answer_is_closed_at_the_send_stall_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = write_certificate(dir.path());
    let settings = long_answer_settings(tls_settings(dir.path()), dir.path());
    let app = spawn_app(settings).await;
    let tcp = small_window_connection(&app).await;
    let mut tls = tls_over(tcp, &[cert], &[b"http/1.1"]).await;
    ask_long_then_read_nothing(&mut tls, "localhost").await;
}
