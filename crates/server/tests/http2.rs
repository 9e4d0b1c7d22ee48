//! HTTP/2 against the real service on port 0: h2c with prior knowledge next to HTTP/1.1 on the
//! plain port, many streams on one connection (coalescing still one model call), the bounds and
//! the drain on an HTTP/2 connection, TLS with ALPN `h2` and certificate reload (file change in
//! process, SIGHUP on the real binary), and nginx terminating TLS with HTTP/2 in front.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

mod common;

use axum::body::Bytes;
use common::cluster::Proc;
use common::processes::{free_port, wait_for_port};
use common::{offline_settings, settings_for, spawn_app, start_sim, TestApp};
use futures::future::join_all;
use gemini_sim::SimConfig;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Hang guard only; nothing here is timed.
const GUARD: Duration = Duration::from_secs(30);

fn chat_body(message: &str) -> String {
    serde_json::json!({ "message": message }).to_string()
}

fn chat_request(message: &str) -> Request<Full<Bytes>> {
    Request::post("http://test/api/v1/agents/math")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(message))))
        .expect("request")
}

fn get_request(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://test{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// An HTTP/2 client connection over `io`; the task driving it ends when the connection does.
async fn h2_handshake<I>(io: I) -> (SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    // Pings from the client: bytes between streams, which must not count as a request head.
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true);
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

/// h2c with prior knowledge: one TCP connection, HTTP/2 from the first byte.
async fn h2c(app: &TestApp) -> (SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(app.addr).await.expect("connects");
    h2_handshake(tcp).await
}

/// Sends `request` on an HTTP/2 connection; status, version and body.
async fn send(
    sender: &SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, Version, String) {
    let mut sender = sender.clone();
    let response = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .expect("hang guard")
        .expect("response");
    let status = response.status();
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl` POSTing a chat message; the body, then `status version` on the last line.
fn curl_chat(url: &str, extra: &[&str], message: &str) -> (u16, String, String) {
    let body = chat_body(message);
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        "-w",
        "\n%{http_code} %{http_version}",
        url,
    ]);
    let (out, _) = curl(&args);
    let (body, last) = out.rsplit_once('\n').expect("status line");
    let (status, version) = last.split_once(' ').expect("status and version");
    (
        status.parse().expect("status"),
        version.to_owned(),
        body.to_owned(),
    )
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| {
            let (n, v) = line.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_prior_knowledge_speaks_h2c_and_http1_still_works_on_the_same_port() {
    let app = spawn_app(offline_settings()).await;
    let url = app.url("/api/v1/agents/math");
    let (status, version, body) = tokio::task::spawn_blocking(move || {
        curl_chat(
            &url,
            &["--http2-prior-knowledge"],
            "What is a prime number?",
        )
    })
    .await
    .expect("curl task");
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains("\"response\""), "{body}");

    let url = app.url("/api/v1/agents/math");
    let (status, version, _) = tokio::task::spawn_blocking(move || {
        curl_chat(&url, &["--http1.1"], "What is a prime number?")
    })
    .await
    .expect("curl task");
    assert_eq!((status, version.as_str()), (200, "1.1"));
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_connection_are_each_answered_and_identical_questions_cost_one_call() {
    let sim = start_sim(SimConfig {
        // Long enough that every stream is open while the model answers.
        latency: common::fixed_latency(800),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    settings.server.http2_max_concurrent_streams = 256;
    let app = spawn_app(settings).await;
    let (sender, _driver) = h2c(&app).await;

    const SAME: usize = 192;
    const DISTINCT: usize = 8;
    let mut requests = Vec::new();
    for _ in 0..SAME {
        requests.push(send(&sender, chat_request("Why is the sky blue?")));
    }
    for i in 0..DISTINCT {
        requests.push(send(
            &sender,
            chat_request(&format!("What is {i} times {i}, and why?")),
        ));
    }
    let answers = join_all(requests).await;
    for (status, version, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(*version, Version::HTTP_2);
    }
    assert_eq!(answers.len(), SAME + DISTINCT);
    assert_eq!(
        sim.stats().requests,
        (1 + DISTINCT) as u64,
        "one model call per distinct question"
    );
    // All of it over the one connection (the /metrics request below is a second one).
    assert_eq!(
        metric(&app, "learning_chat_http_connections_total").await,
        2.0
    );
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_is_closed_by_the_idle_bound_but_not_by_the_header_bound_between_streams()
{
    let mut settings = offline_settings();
    // Pings every 100 ms arrive between streams: under HTTP/1.1 rules they would start a
    // request head and the connection would be cut at the header bound.
    settings.server.header_read_timeout_ms = 300;
    settings.server.keep_alive_idle_timeout_ms = 8_000;
    let app = spawn_app(settings).await;
    let (sender, driver) = h2c(&app).await;
    let (status, _, _) = send(&sender, get_request("/health")).await;
    assert_eq!(status, StatusCode::OK);
    // Several header bounds, well within the idle bound.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, _, _) = send(&sender, get_request("/health")).await;
    assert_eq!(status, StatusCode::OK, "the connection survived its pings");
    // Idle: the server sends GOAWAY and closes, the client's driver ends.
    tokio::time::timeout(GUARD, driver)
        .await
        .expect("closed by the idle bound")
        .expect("driver");
    assert!(
        metric(
            &app,
            "learning_chat_http_connection_timeouts_total{phase=\"idle\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            &app,
            "learning_chat_http_connection_timeouts_total{phase=\"header\"}"
        )
        .await,
        0.0
    );
    app.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_lets_streams_in_flight_finish_then_closes_the_h2_connection() {
    let sim = start_sim(SimConfig {
        latency: common::fixed_latency(1_000),
        ..SimConfig::default()
    })
    .await;
    let mut app = spawn_app(settings_for(&sim)).await;
    let (sender, driver) = h2c(&app).await;
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let sender = sender.clone();
            tokio::spawn(async move { send(&sender, chat_request(&format!("Drain {i}?"))).await })
        })
        .collect();
    // Every stream has reached the model before the drain begins.
    let until = Instant::now() + GUARD;
    while sim.stats().requests < 4 {
        assert!(Instant::now() < until, "requests never reached the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.signal_stop();
    for request in in_flight {
        let (status, _, body) = request.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    tokio::time::timeout(GUARD, driver)
        .await
        .expect("GOAWAY, then closed")
        .expect("driver");
    tokio::time::timeout(GUARD, app.handle)
        .await
        .expect("the server exits")
        .expect("server task")
        .expect("server result");
}

/// A self-signed certificate for `localhost` and 127.0.0.1, as PEM files in `dir`.
fn write_certificate(dir: &Path) -> CertificateDer<'static> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen");
    std::fs::write(dir.join("tls.crt"), generated.cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key"), generated.key_pair.serialize_pem()).expect("write key");
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
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
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
    let client = reqwest::Client::builder()
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
    let plain = reqwest::Client::new()
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
    settings.server.tls_reload_check_ms = 50;
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
    let mut server = Proc {
        child: Command::new(env!("CARGO_BIN_EXE_learning-chat"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LEARNING_CHAT_BIND", format!("127.0.0.1:{port}"))
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
    };
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

/// nginx with deploy/nginx/learning-chat.conf and deploy/nginx/learning-chat-tls.conf, only the
/// server lines, ports, log and certificate paths replaced.
fn start_tls_nginx(dir: &Path, upstream_port: u16) -> Proc {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx");
    let port = free_port();
    let mut site = String::new();
    let mut replaced_servers = false;
    for file in ["learning-chat.conf", "learning-chat-tls.conf"] {
        let shipped = std::fs::read_to_string(deploy.join(file)).expect("shipped nginx config");
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server app") {
                if !replaced_servers {
                    site.push_str(&format!(
                        "    server 127.0.0.1:{upstream_port} max_fails=3 fail_timeout=10s;\n"
                    ));
                    replaced_servers = true;
                }
            } else if trimmed.starts_with("listen ") && trimmed.contains("ssl") {
                site.push_str(&format!("    listen 127.0.0.1:{port} ssl http2;\n"));
            } else if trimmed.starts_with("listen ") {
                site.push_str(&format!("    listen 127.0.0.1:{};\n", free_port()));
            } else if trimmed.starts_with("access_log /var/log") {
                site.push_str(&format!(
                    "    access_log {}/access.log learning_chat;\n",
                    dir.display()
                ));
            } else if trimmed.starts_with("ssl_certificate ") {
                site.push_str(&format!("    ssl_certificate {}/tls.crt;\n", dir.display()));
            } else if trimmed.starts_with("ssl_certificate_key ") {
                site.push_str(&format!(
                    "    ssl_certificate_key {}/tls.key;\n",
                    dir.display()
                ));
            } else {
                site.push_str(line);
                site.push('\n');
            }
        }
    }
    assert!(
        replaced_servers,
        "no `server appN` lines in the shipped config"
    );
    let main = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}}}\n",
        d = dir.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).expect("write nginx.conf");
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("nginx is required: run ./scripts/test.sh, which installs it");
    let check = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx -t");
    assert!(
        check.status.success(),
        "nginx rejects the shipped TLS config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    assert!(wait_for_port(port, GUARD), "nginx did not listen");
    Proc { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_terminates_tls_with_http2_and_reuses_its_upstream_connections() {
    let app = spawn_app(offline_settings()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = write_certificate(dir.path());
    let nginx = start_tls_nginx(dir.path(), app.addr.port());

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

    // At most one upstream connection per concurrent request (plus this /metrics one): with
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
