//! The learner's chat page and the API docs in a real browser: headless Chromium driven through
//! chromedriver against the real server on port 0 with gemini-sim, and through a real nginx at a
//! sub-path. Every phase checks the console (no errors, no failed requests) and
//! Content-Security-Policy violations; axe-core audits the page at desktop and phone sizes.
//!
//! Needs Debian's `chromium` and `chromium-driver` (./scripts/test.sh installs them).
//! `UPDATE_SCREENSHOTS=1` also writes the screenshots to docs/screenshots/ (shown in README.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

mod console;
mod driver;
mod flows;
#[path = "../support/mod.rs"]
pub mod support;

use driver::Browser;
use flows::{
    answer_meta, ask, assert_accessible, conversation_id, execute_in_docs, screenshot_paths,
    start_subpath_nginx,
};
use gemini_sim::SimConfig;
use serde_json::Value;
use std::process::Command;
use support::{settings_for, spawn_app, start_sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_asks_follows_up_deletes_and_rides_out_an_overload_in_a_real_browser() {
    // Long enough answers for the whole tutor layout (text, example, numbered steps).
    let sim = start_sim(SimConfig {
        answer_tokens: 300,
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    // A model 429 goes straight to the learner as 503 + Retry-After (no retries in the server),
    // which is what the page must ride out.
    settings.upstream.max_retries = 0;
    let app = spawn_app(settings).await;
    let browser = Browser::start(1280, 900).await;

    // The tutor picker lists every agent with its description.
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "the tutors",
            "document.querySelector('#tutor option[value=\"math\"]')",
        )
        .await;
    let names = browser
        .js("return Array.from(document.querySelectorAll('#tutor option')).map(o => o.textContent);")
        .await;
    assert!(names.to_string().contains("Science Tutor"), "{names}");
    let tutor = browser
        .client
        .find(fantoccini::Locator::Css("#tutor"))
        .await
        .expect("picker");
    tutor
        .select_by_value("science")
        .await
        .expect("choose a tutor");
    let description = browser
        .wait_for(
            "a description",
            "document.getElementById('tutor-description').textContent",
        )
        .await;
    assert!(!description.as_str().unwrap_or_default().is_empty());
    assert!(
        browser
            .js("return document.getElementById('offline-banner').hidden;")
            .await
            == Value::Bool(true),
        "a server with a Gemini key shows no offline banner"
    );
    browser.assert_clean("loading the page", &[]).await;

    // Ask: the answer appears, rendered as Markdown (the numbered steps become a list).
    let first = ask(&browser, "What is photosynthesis?", 1).await;
    assert!(first.contains("photosynthesis"), "{first}");
    let list_items = browser
        .js("return document.querySelectorAll('#messages .msg.answer .body ol li').length;")
        .await;
    assert!(
        list_items.as_u64().unwrap_or(0) >= 3,
        "Markdown lists rendered: {list_items}"
    );
    let (cached, time) = answer_meta(&browser, 1).await;
    assert!(!cached, "a new question is not from the cache");
    assert!(
        time.starts_with("answered in ") && time.ends_with(" ms"),
        "{time}"
    );
    let first_conversation = conversation_id(&browser).await.expect("a conversation id");

    // The same question in a new conversation: from the cache, no second model call.
    browser.click("#new-conversation").await;
    let calls_before = sim.stats().requests;
    let again = ask(&browser, "What is photosynthesis?", 1).await;
    let (cached, _) = answer_meta(&browser, 1).await;
    assert!(
        cached,
        "the repeated question is marked from cache: {again}"
    );
    assert_eq!(
        sim.stats().requests,
        calls_before,
        "no model call for a cached answer"
    );
    assert_ne!(
        conversation_id(&browser).await.as_deref(),
        Some(first_conversation.as_str())
    );

    // A follow-up stays in the same conversation (the server has both exchanges).
    let conversation = conversation_id(&browser).await.expect("a conversation id");
    ask(&browser, "And why are leaves green?", 2).await;
    assert_eq!(
        conversation_id(&browser).await.as_deref(),
        Some(conversation.as_str())
    );
    let stored = app
        .get_json(&format!("/api/v1/conversations/{conversation}"))
        .await;
    assert_eq!(
        stored["turns"].as_array().map(Vec::len),
        Some(4),
        "{stored}"
    );
    browser.assert_clean("asking and following up", &[]).await;

    // Thumbs under each answer: a thumb up on the follow-up's answer is stored with its turn
    // and shown pressed; a thumb down on the same answer replaces it.
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#messages .msg.answer .thumb').length;")
            .await,
        4,
        "two thumbs under each of the two answers"
    );
    let thumb = |n: usize, rating: &str| {
        format!("document.querySelectorAll('#messages .msg.answer')[{}].querySelector('.thumb-{rating}')", n - 1)
    };
    for rating in ["up", "down"] {
        browser
            .js(&format!("{}.click(); return true;", thumb(2, rating)))
            .await;
        browser
            .wait_for(
                "the thumb pressed",
                &format!(
                    "{}.getAttribute('aria-pressed') === 'true'",
                    thumb(2, rating)
                ),
            )
            .await;
        let stored = app
            .get_json(&format!("/api/v1/conversations/{conversation}"))
            .await;
        assert_eq!(
            stored["feedback"],
            serde_json::json!([{
                "turn": 2, "rater": "learner", "rating": rating, "comment": "",
                "at": stored["feedback"][0]["at"],
            }]),
            "{stored}"
        );
    }
    let other = browser
        .js(&format!(
            "return {}.getAttribute('aria-pressed');",
            thumb(2, "up")
        ))
        .await;
    assert_eq!(other, "false", "only the last choice is pressed");
    assert_eq!(
        browser
            .js("return document.getElementById('status').textContent;")
            .await,
        "Thanks for your feedback."
    );
    browser.assert_clean("rating an answer", &[]).await;

    // Accessible at desktop width, and at phone width; screenshots of both.
    assert_accessible(&browser, "the chat page (desktop)").await;
    browser.js("window.scrollTo(0, 0); return true;").await;
    for path in screenshot_paths("chat-desktop.png") {
        browser.screenshot(&path).await;
    }
    browser.emulate_phone().await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        .await;
    assert_eq!(
        overflow.as_i64(),
        Some(0),
        "no sideways scrolling on a phone"
    );
    assert_accessible(&browser, "the chat page (phone)").await;
    for path in screenshot_paths("chat-phone.png") {
        browser.screenshot(&path).await;
    }
    browser
        .cdp(
            "Emulation.clearDeviceMetricsOverride",
            serde_json::json!({}),
        )
        .await;

    // Keyboard only: Tab from the picker reaches every control in reading order.
    browser
        .js("document.getElementById('tutor').focus(); return true;")
        .await;
    let mut order = Vec::new();
    for _ in 0..8 {
        let focused = browser
            .client
            .active_element()
            .await
            .expect("a focused element");
        focused
            .send_keys(&fantoccini::key::Key::Tab)
            .await
            .expect("Tab");
        order.push(
            browser
                .js("var e = document.activeElement; return e.id || e.getAttribute('aria-label');")
                .await,
        );
    }
    assert_eq!(
        order,
        [
            "new-conversation",
            "delete-conversation",
            "Helpful",
            "Not helpful",
            "Helpful",
            "Not helpful",
            "message",
            "send"
        ],
        "focus order after the tutor picker: the controls, each answer's thumbs, the question"
    );

    // Delete: the page starts afresh and the server has forgotten the conversation.
    browser.click("#delete-conversation").await;
    browser
        .wait_for(
            "the deletion",
            "document.getElementById('status').textContent === 'Conversation deleted.'",
        )
        .await;
    let gone = app
        .client
        .get(app.url(&format!("/api/v1/conversations/{conversation}")))
        .send()
        .await
        .expect("request");
    assert_eq!(gone.status(), 404);
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#messages li').length;")
            .await,
        0
    );
    assert_eq!(conversation_id(&browser).await, None);
    browser.assert_clean("deleting", &[]).await;

    // A blocked prompt: the learner reads why.
    ask(&browser, "[[block]] tell me something", 1).await;
    let blocked = browser
        .js("return document.querySelector('#messages .msg.answer.failed').innerText;")
        .await;
    assert!(blocked.to_string().contains("blocked"), "{blocked}");
    browser
        .assert_clean("a blocked prompt", &["status of 422"])
        .await;

    // Overload: the model's quota is used up (429 -> 503 + Retry-After); the page says so,
    // counts down and retries by itself, and the answer arrives once the quota is back.
    browser.click("#new-conversation").await;
    sim.update_config(|c| {
        c.faults.error_429 = 1.0;
        c.faults.error_429_retry_delay_ms = 2_000;
    });
    browser
        .type_into("#message", "How do volcanoes form?\n")
        .await;
    let busy = browser
        .wait_for("the busy message", "/busy, retrying in \\d+ s/.test(document.getElementById('status').textContent) && document.getElementById('status').textContent")
        .await;
    assert!(
        busy.to_string()
            .contains("The tutors are busy, retrying in"),
        "{busy}"
    );
    sim.update_config(|c| c.faults.error_429 = 0.0);
    browser
        .wait_for(
            "the answer after the retry",
            "document.querySelector('#messages .msg.answer:not(.pending) .answer-time')",
        )
        .await;
    browser
        .assert_clean("an overload", &["status of 503"])
        .await;

    // The interactive docs: "Try it out" runs a request against this server.
    let body = execute_in_docs(&browser, &app.url("/docs")).await;
    assert!(body.contains("\"math\""), "{body}");
    browser.assert_clean("the API docs", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_docs_work_at_a_sub_path_behind_nginx() {
    let sim = start_sim(SimConfig::default()).await;
    let app = spawn_app(settings_for(&sim)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nginx = start_subpath_nginx(dir.path(), &app);
    let base = format!("http://127.0.0.1:{}/chat/", nginx.port);
    let browser = Browser::start(1280, 900).await;

    browser.goto(&base).await;
    browser
        .wait_for(
            "the tutors",
            "document.querySelector('#tutor option[value=\"math\"]')",
        )
        .await;
    let answer = ask(&browser, "What is a prime number?", 1).await;
    assert!(answer.contains("prime"), "{answer}");
    browser.assert_clean("the chat page at /chat/", &[]).await;

    browser.click("a[href=\"docs\"]").await;
    let body = execute_in_docs(&browser, &format!("{base}docs")).await;
    assert!(body.contains("\"history\""), "{body}");
    browser.assert_clean("the docs at /chat/docs", &[]).await;

    // Every request went through the prefix: nothing asked nginx for a path outside /chat/.
    let log = std::fs::read_to_string(dir.path().join("access.log")).expect("access log");
    for needed in [
        "GET /chat/ ",
        "GET /chat/web/app.js",
        "POST /chat/api/v1/agents/",
        "GET /chat/docs",
        "GET /chat/openapi.json",
    ] {
        assert!(log.contains(needed), "nginx saw no {needed:?}:\n{log}");
    }
    let outside: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("\"GET /chat/") && !l.contains("\"POST /chat/"))
        .collect();
    assert!(outside.is_empty(), "requests outside /chat/: {outside:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_server_with_keys_required_shows_the_banner_and_asks_for_a_key() {
    const PEPPER: &str = "browser-test-pepper-0123456789";
    let dir = tempfile::tempdir().expect("temp dir");
    let database = learning_chat_testkit::process::sqlite_url(dir.path());
    let created = Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        // The page must name its learner: a key that requires it refuses requests without one.
        .args([
            "keys",
            "create",
            "--name",
            "browser-test",
            "--require-learner",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LEARNING_CHAT_AUTH__MODE", "required")
        .env("LEARNING_CHAT_AUTH__PEPPER", PEPPER)
        .env("LEARNING_CHAT_DATABASE__URL", &database)
        .output()
        .expect("learning-chat keys create runs");
    let out = String::from_utf8_lossy(&created.stdout).into_owned();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no secret in {out:?} {:?}", created));

    let mut settings = support::offline_settings();
    settings.auth.mode = learning_chat::config::AuthMode::Required;
    settings.auth.pepper = learning_chat::config::Secret::new(PEPPER);
    settings.database.url = learning_chat::config::DatabaseUrl::new(database);
    let app = spawn_app(settings).await;
    let browser = Browser::start(1280, 900).await;

    // No key yet: the agents list is refused, so the key field shows with the reason.
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "the key field",
            "!document.getElementById('auth').hidden && document.activeElement.id === 'api-key'",
        )
        .await;
    browser
        .wait_for(
            "the offline banner",
            "!document.getElementById('offline-banner').hidden",
        )
        .await;
    assert_accessible(&browser, "the chat page asking for a key").await;
    browser
        .assert_clean("the key prompt", &["status of 401"])
        .await;

    // With the key (typed, then Enter): the tutors load and the learner can ask.
    browser.type_into("#api-key", &format!("{secret}\n")).await;
    browser
        .wait_for(
            "the tutors",
            "document.querySelector('#tutor option[value=\"math\"]')",
        )
        .await;
    let stored = browser
        .js("return sessionStorage.getItem('learning-chat.api-key');")
        .await;
    assert_eq!(
        stored.as_str(),
        Some(secret.as_str()),
        "the key is kept in session storage"
    );
    let answer = ask(&browser, "What is 2+2?", 1).await;
    assert!(!answer.is_empty());
    assert!(
        browser
            .js("return document.querySelector('#messages .msg.answer .answer-time') !== null;")
            .await
            == Value::Bool(true)
    );
    browser.assert_clean("asking with a key", &[]).await;
    // The learner id is random, kept in local storage, and the same after a reload.
    let learner = browser
        .js("return localStorage.getItem('learning-chat.learner-id');")
        .await;
    let learner = learner.as_str().unwrap_or_default().to_owned();
    assert!(learner.len() >= 32, "a random learner id: {learner:?}");
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "the tutors after a reload",
            "document.querySelector('#tutor option[value=\"math\"]')",
        )
        .await;
    let again = browser
        .js("return localStorage.getItem('learning-chat.learner-id');")
        .await;
    assert_eq!(
        again.as_str(),
        Some(learner.as_str()),
        "a stable learner id"
    );
}

#[tokio::test]
async fn the_pages_carry_a_strict_csp_and_web_ui_false_removes_them() {
    let app = spawn_app(support::offline_settings()).await;
    for path in [
        "/",
        "/docs",
        "/web/app.js",
        "/web/vendor/swagger-ui-dist/swagger-ui-bundle.js",
    ] {
        let response = app.client.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let csp = response
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            csp.contains("script-src 'self';") && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    let missing = app
        .client
        .get(app.url("/web/nope.js"))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);
    let html = app
        .client
        .get(app.url("/"))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );
    assert!(
        !html.contains("src=\"/") && !html.contains("href=\"/"),
        "relative URLs only"
    );

    // The docs page's "Authorize" button: both ways of sending a key, optional on /api/ paths.
    let doc = app.get_json("/openapi.json").await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["api_key"]["name"], "x-api-key", "{schemes}");
    let security = &doc["paths"]["/api/v1/agents"]["get"]["security"];
    assert_eq!(
        security,
        &serde_json::json!([{"bearer": []}, {"api_key": []}, {}])
    );
    assert!(doc["paths"]["/health"]["get"].get("security").is_none());

    let mut settings = support::offline_settings();
    settings.server.web_ui = false;
    let off = spawn_app(settings).await;
    for path in ["/", "/docs", "/web/app.js"] {
        let response = off.client.get(off.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 404, "{path} with web_ui = false");
    }
    let api = off
        .client
        .get(off.url("/api/v1/agents"))
        .send()
        .await
        .expect("request");
    assert_eq!(api.status(), 200);
}
