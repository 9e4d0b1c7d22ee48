//! Page steps and checks shared by the tests of tests/browser.rs.

use crate::driver::Browser;
use crate::support::cluster::Proc;
use crate::support::processes::free_port;
use crate::support::TestApp;
use std::path::{Path, PathBuf};

/// Asks `question` through the page (real key presses: Enter sends) and waits for the answer
/// number `n` (1-based) to be complete; returns its text.
pub async fn ask(browser: &Browser, question: &str, n: usize) -> String {
    browser
        .type_into("#message", &format!("{question}\n"))
        .await;
    let done = format!(
        "document.querySelectorAll('#messages .msg.answer:not(.pending)').length >= {n} \
         && document.querySelectorAll('#messages .msg.answer')[{i}].innerText",
        i = n - 1
    );
    browser
        .wait_for(&format!("answer {n}"), &done)
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The `cached` marker and answer time of answer `n` (1-based): (marker shown, time text).
pub async fn answer_meta(browser: &Browser, n: usize) -> (bool, String) {
    let meta = browser
        .js(&format!(
            "var a = document.querySelectorAll('#messages .msg.answer')[{}];\
             return [!!a.querySelector('.cached-marker'), a.querySelector('.answer-time').textContent];",
            n - 1
        ))
        .await;
    (
        meta[0].as_bool().unwrap_or(false),
        meta[1].as_str().unwrap_or_default().to_owned(),
    )
}

pub async fn conversation_id(browser: &Browser) -> Option<String> {
    browser
        .js("var c = sessionStorage.getItem('learning-chat.conversation'); return c && JSON.parse(c).id;")
        .await
        .as_str()
        .map(str::to_owned)
}

pub fn screenshot_paths(name: &str) -> Vec<PathBuf> {
    let mut paths = vec![Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)];
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        paths.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs/screenshots")
                .join(name),
        );
    }
    paths
}

pub async fn assert_accessible(browser: &Browser, what: &str) {
    let violations = browser.axe_violations().await;
    assert!(
        violations.is_empty(),
        "axe-core finds accessibility violations on {what}: {violations:#?}"
    );
}

/// Opens the docs page at `docs_url`, runs "Try it out" on `GET /api/v1/agents` and returns
/// the response body Swagger UI shows.
pub async fn execute_in_docs(browser: &Browser, docs_url: &str) -> String {
    browser.goto(docs_url).await;
    let block = "document.querySelector('.opblock-summary-path[data-path=\"/api/v1/agents\"]')";
    browser.wait_for("the operations", block).await;
    browser
        .js(&format!("{block}.closest('.opblock').querySelector('.opblock-summary-control').click(); return true;"))
        .await;
    let in_block = |css: &str| format!("{block}.closest('.opblock').querySelector('{css}')");
    browser
        .wait_for("Try it out", &in_block(".try-out__btn"))
        .await;
    browser
        .js(&format!(
            "{}.click(); return true;",
            in_block(".try-out__btn")
        ))
        .await;
    browser.wait_for("Execute", &in_block(".execute")).await;
    browser
        .js(&format!("{}.click(); return true;", in_block(".execute")))
        .await;
    let status = browser
        .wait_for(
            "the live response",
            &format!(
                "{} && {}.textContent.trim()",
                in_block(".live-responses-table tr.response .response-col_status"),
                in_block(".live-responses-table tr.response .response-col_status")
            ),
        )
        .await;
    assert_eq!(status, "200", "Try it out got {status}");
    browser
        .js(&format!(
            "return {}.textContent;",
            in_block(".live-responses-table tr.response .response-col_description")
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// nginx serving the app at `/chat/`, the rest of its paths 404.
pub fn start_subpath_nginx(dir: &Path, app: &TestApp) -> Proc {
    let port = free_port();
    let http = format!(
        "  access_log {d}/access.log;\n  server {{\n    listen 127.0.0.1:{port};\n    \
         location /chat/ {{\n      proxy_pass http://{upstream}/;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n    \
         location / {{ return 404; }}\n  }}\n",
        d = dir.display(),
        upstream = app.addr,
    );
    learning_chat_testkit::nginx::run(dir, &http, port)
}
