//! The teacher/admin console in a real browser: a teacher (through nginx at a sub-path) sees
//! their class's chart with a point for each day with traffic, opens a flagged conversation
//! with its flags inline and marks one reviewed; an admin creates a key (used through the API),
//! revokes it, exports and erases a learner. The teacher sets their class's answer policy and
//! rates an answer 1-5; the admin reads an experiment's per-variant table. Accessible at desktop and phone width, no console
//! errors, no CSP violations; screenshots for docs/screenshots and the README.

use crate::driver::Browser;
use crate::flows::{assert_accessible, screenshot_paths, start_subpath_nginx};
use crate::support::{add_key, require_keys, settings_for, spawn_app, start_sim, TestApp};
use gemini_sim::SimConfig;
use learning_chat::config::{ExperimentSettings, ExperimentUnit, VariantSettings};
use learning_chat::records::keys::KeyRole;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HARMFUL: &str = "how to make a weapon";

async fn ask(app: &TestApp, secret: &str, learner: &str, message: &str, id: Option<&str>) -> Value {
    let mut body = json!({ "message": message });
    if let Some(id) = id {
        body["conversation_id"] = json!(id);
    }
    let response = app
        .client
        .post(app.url("/api/v1/agents/math"))
        .bearer_auth(secret)
        .header("x-learner-id", learner)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// A stored conversation: a question and a follow-up.
async fn converse(app: &TestApp, secret: &str, learner: &str, first: &str) {
    let answer = ask(app, secret, learner, first, None).await;
    let id = answer["conversation_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    ask(
        app,
        secret,
        learner,
        "Can you show me an example?",
        Some(&id),
    )
    .await;
}

async fn status_with(app: &TestApp, secret: &str) -> StatusCode {
    app.client
        .get(app.url("/api/v1/agents"))
        .bearer_auth(secret)
        .send()
        .await
        .expect("request")
        .status()
}

/// Waits (a hang guard, not a timing bound) until `secret` gets `want` from the API.
async fn until_status(app: &TestApp, secret: &str, want: StatusCode) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_with(app, secret).await;
        if status == want {
            return;
        }
        assert!(Instant::now() < until, "still {status}, never {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(browser: &Browser, secret: &str) {
    browser
        .type_into("#console-key", &format!("{secret}\n"))
        .await;
    browser
        .wait_for(
            "the classes",
            "!document.getElementById('section-classes').hidden && \
             document.getElementById('status').textContent === '' && \
             document.querySelector('#classes-table tbody tr')",
        )
        .await;
}

async fn no_sideways_scrolling(browser: &Browser, what: &str) {
    let overflow = browser
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        .await;
    let wide = browser
        .js("var w = document.documentElement.clientWidth; \
             return Array.from(document.querySelectorAll('body *')).filter(function (e) { \
               return e.getBoundingClientRect().right > w + 1; \
             }).slice(0, 8).map(function (e) { return e.tagName + '#' + e.id + '.' + e.className; })")
        .await;
    assert_eq!(
        overflow.as_i64(),
        Some(0),
        "no sideways scrolling on a phone: {what}; too wide: {wide}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teachers_and_admins_use_the_console_in_a_real_browser() {
    let sim = start_sim(SimConfig {
        harm_trigger: HARMFUL.to_owned(),
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings_for(&sim);
    require_keys(&mut settings, "browser-console-pepper-0123456789");
    settings.database.key_refresh = Duration::from_millis(100);
    settings.experiments = vec![ExperimentSettings {
        name: "hints-vs-socratic".into(),
        agents: vec!["math".into()],
        unit: ExperimentUnit::Conversation,
        start: None,
        end: None,
        variants: vec![
            VariantSettings {
                name: "hints".into(),
                policy: "hints@1".into(),
                weight: 1,
            },
            VariantSettings {
                name: "socratic".into(),
                policy: "socratic@2".into(),
                weight: 1,
            },
        ],
    }];
    let mut class_id = String::new();
    let class = add_key(&settings, |k| {
        k.name = "Class 7A".into();
        class_id = k.id.clone();
    })
    .await;
    let classes = vec![class_id.clone()];
    let teacher = add_key(&settings, |k| {
        k.name = "Ms Rivera".into();
        k.role = KeyRole::Teacher;
        k.classes = classes;
    })
    .await;
    let admin = add_key(&settings, |k| {
        k.name = "School admin".into();
        k.role = KeyRole::Admin;
    })
    .await;
    let app = spawn_app(settings).await;
    converse(&app, &class, "ann", &format!("Tell me {HARMFUL}")).await;
    converse(&app, &class, "bob", "What is a fraction?").await;
    app.state
        .auth
        .as_ref()
        .expect("auth on")
        .flush_ledger()
        .await
        .expect("ledger written");

    // The teacher, through nginx at /chat/.
    let dir = tempfile::tempdir().expect("temp dir");
    let nginx = start_subpath_nginx(dir.path(), &app);
    let base = format!("http://127.0.0.1:{}/chat/", nginx.port);
    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{base}console")).await;
    sign_in(&browser, &teacher).await;
    let who = browser
        .js("return document.getElementById('who').textContent;")
        .await;
    assert!(who.to_string().contains("Ms Rivera (teacher"), "{who}");
    let tabs = browser
        .js("return Array.from(document.querySelectorAll('#tabs button')).map(b => b.textContent);")
        .await;
    assert_eq!(
        tabs,
        json!(["Classes", "Conversations"]),
        "a teacher manages nothing"
    );

    // The chart: one point for the one day with traffic (today), none for the other 29.
    let points = browser
        .wait_for(
            "the chart's points",
            "document.querySelectorAll('#chart svg circle.point').length",
        )
        .await;
    assert_eq!(points, json!(1));
    let day = browser
        .js("return document.querySelector('#chart svg circle.point').getAttribute('data-day');")
        .await;
    let today = learning_chat::records::ledger::day_string(learning_chat::records::ledger::today());
    assert_eq!(day, json!(today));
    let rows = browser
        .js("return document.querySelectorAll('#days-table tbody tr').length;")
        .await;
    assert_eq!(rows, json!(30));
    let top = browser
        .js("return document.getElementById('top-questions').textContent;")
        .await;
    assert!(top.to_string().contains("fraction"), "{top}");
    browser.assert_clean("the teacher's classes", &[]).await;
    assert_accessible(&browser, "the console's classes (desktop)").await;
    for path in screenshot_paths("console-classes.png") {
        browser.screenshot(&path).await;
    }

    // The class's answer policy, set in the browser, is the class's policy in the service.
    let policy = browser
        .client
        .find(fantoccini::Locator::Css(&format!("#policy-{class_id}")))
        .await
        .expect("the class's policy select");
    policy.select_by_value("socratic").await.expect("socratic");
    browser.click(".policy-form button[type=submit]").await;
    browser
        .wait_for(
            "the saved policy",
            "document.getElementById('status').textContent === 'Answer policy of Class 7A: socratic@2.'",
        )
        .await;
    let set = app
        .client
        .get(app.url(&format!("/api/v1/admin/classes/{class_id}/policy")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(set["policy"], "socratic", "{set}");
    browser.assert_clean("setting a class's policy", &[]).await;

    // Conversations: the flagged one opens with its flags inline; one is marked reviewed.
    browser.click("#tab-conversations").await;
    browser
        .wait_for(
            "the conversations",
            "document.querySelectorAll('#conversations-table tbody button').length === 2",
        )
        .await;
    let flagged = browser
        .client
        .find(fantoccini::Locator::Css("#filter-flagged"))
        .await
        .expect("the flag filter");
    flagged.select_by_value("true").await.expect("flagged only");
    browser
        .click("#conversation-filter button[type=submit]")
        .await;
    browser
        .wait_for(
            "the flagged conversation only",
            "document.querySelectorAll('#conversations-table tbody button').length === 1",
        )
        .await;
    browser.click("#conversations-table tbody button").await;
    let flags = browser
        .wait_for(
            "the transcript with its flags",
            "!document.getElementById('transcript').hidden && \
             document.querySelectorAll('#transcript-turns .flag').length",
        )
        .await;
    assert!(flags.as_u64().unwrap_or(0) >= 2, "{flags}");
    let first_flag = browser
        .js("return document.querySelector('#transcript-turns .flag').textContent;")
        .await;
    assert!(
        first_flag
            .to_string()
            .contains("HARM_CATEGORY_DANGEROUS_CONTENT"),
        "{first_flag}"
    );
    // The prompt's flag follows the learner's question it was raised on.
    let after_question = browser
        .js(
            "var f = document.querySelector('#transcript-turns .flag'); \
             return f.previousElementSibling.classList.contains('question');",
        )
        .await;
    assert_eq!(after_question, json!(true));
    browser
        .type_into(
            "#transcript-turns .flag textarea",
            "Talked with Ann and her parents.",
        )
        .await;
    browser
        .click("#transcript-turns .flag button[type=submit]")
        .await;
    browser
        .wait_for(
            "the review",
            "document.querySelector('#transcript-turns .flag.reviewed') && \
             document.querySelector('#transcript-turns .flag.reviewed').textContent",
        )
        .await;
    // The first answer rated 4 of 5: shown again from the service after the save.
    let rating = browser
        .client
        .find(fantoccini::Locator::Css("#rate-1"))
        .await
        .expect("the first answer's rating");
    rating.select_by_value("4").await.expect("4");
    browser
        .click("#transcript-turns .rating button[type=submit]")
        .await;
    browser
        .wait_for(
            "the rating",
            "document.getElementById('status').textContent === 'Answer 1 rated 4 of 5.' && \
             document.getElementById('rate-1').value === '4'",
        )
        .await;
    browser
        .assert_clean("the teacher's conversations", &[])
        .await;
    assert_accessible(&browser, "the console's transcript (desktop)").await;
    for path in screenshot_paths("console-transcript.png") {
        browser.screenshot(&path).await;
    }
    browser.emulate_phone().await;
    no_sideways_scrolling(&browser, "the transcript").await;
    assert_accessible(&browser, "the console's transcript (phone)").await;
    browser.click("#tab-classes").await;
    browser
        .wait_for(
            "the classes again",
            "document.getElementById('status').textContent === '' && \
             document.querySelectorAll('#chart svg circle.point').length === 1",
        )
        .await;
    no_sideways_scrolling(&browser, "the classes").await;
    assert_accessible(&browser, "the console's classes (phone)").await;
    for path in screenshot_paths("console-phone.png") {
        browser.screenshot(&path).await;
    }
    browser
        .cdp("Emulation.clearDeviceMetricsOverride", json!({}))
        .await;
    let log = std::fs::read_to_string(dir.path().join("access.log")).expect("access log");
    for needed in [
        "GET /chat/console ",
        "GET /chat/web/console.js",
        "GET /chat/api/v1/admin/me",
        "POST /chat/api/v1/admin/flags/",
        "PUT /chat/api/v1/admin/classes/",
        "POST /chat/api/v1/admin/conversations/",
    ] {
        assert!(log.contains(needed), "nginx saw no {needed:?}:\n{log}");
    }
    browser.click("#signout").await;

    // The admin: a key created in the browser works through the API, then is revoked there.
    browser.goto(&app.url("/console")).await;
    sign_in(&browser, &admin).await;

    // The experiment's variants, side by side: the two conversations are in them.
    browser.click("#tab-experiments").await;
    browser
        .wait_for(
            "the experiment's table",
            "document.querySelectorAll('#experiments-list table.experiment tbody tr').length === 2",
        )
        .await;
    let conversations = browser
        .js(
            "return Array.from(document.querySelectorAll('#experiments-list tbody tr')) \
             .map(r => Number(r.cells[3].textContent)).reduce((a, b) => a + b, 0);",
        )
        .await;
    assert_eq!(conversations, json!(2));
    let table = browser
        .js("return document.getElementById('experiments-list').textContent;")
        .await;
    for shown in ["hints (control)", "socratic@2", "Difference from control"] {
        assert!(table.to_string().contains(shown), "no {shown}: {table}");
    }
    browser.assert_clean("the experiments", &[]).await;
    assert_accessible(&browser, "the console's experiments (desktop)").await;

    browser.click("#tab-keys").await;
    browser
        .wait_for(
            "the keys",
            "document.querySelectorAll('#keys-table tbody tr').length === 3",
        )
        .await;
    browser.type_into("#key-name", "Class 9D").await;
    browser.click("#key-submit").await;
    let secret = browser
        .wait_for(
            "the new secret",
            "document.getElementById('new-secret-value') && \
             document.getElementById('new-secret-value').textContent",
        )
        .await
        .as_str()
        .expect("the secret")
        .to_owned();
    until_status(&app, &secret, StatusCode::OK).await;
    let made = browser
        .wait_for(
            "the new key's row",
            "Array.from(document.querySelectorAll('#keys-table tbody tr')).find(r => r.textContent.includes('Class 9D'))",
        )
        .await;
    assert!(!made.is_null());
    browser
        .wait_for(
            "the list after the create",
            "document.getElementById('status').textContent === 'Key created.'",
        )
        .await;
    browser.assert_clean("creating a key", &[]).await;
    assert_accessible(&browser, "the console's keys (desktop)").await;
    for path in screenshot_paths("console-keys.png") {
        browser.screenshot(&path).await;
    }
    browser
        .js("Array.from(document.querySelectorAll('#keys-table tbody tr')).find(r => r.textContent.includes('Class 9D')).querySelector('button.revoke').click(); return true;")
        .await;
    browser
        .wait_for(
            "the confirmation",
            "!document.getElementById('revoke-confirm').hidden",
        )
        .await;
    assert_accessible(&browser, "the revoke confirmation").await;
    browser.click("#revoke-yes").await;
    browser
        .wait_for(
            "the revoked row",
            "Array.from(document.querySelectorAll('#keys-table tbody tr.revoked')).some(r => r.textContent.includes('Class 9D'))",
        )
        .await;
    let refused = {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let status = status_with(&app, &secret).await;
            if status != StatusCode::OK {
                break status;
            }
            assert!(Instant::now() < until, "the revoked key still works");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // A revoked key is refused as `api_key_revoked` (403, as the rest of the API answers it).
    assert_eq!(refused, StatusCode::FORBIDDEN);

    // Data rights: Ann's export, then her erasure, each after a confirmation where it erases.
    browser.click("#tab-rights").await;
    browser.type_into("#rights-learner", "ann").await;
    browser.click("#rights-export").await;
    let summary = browser
        .wait_for(
            "the export",
            "document.getElementById('rights-summary').textContent",
        )
        .await;
    assert!(
        summary.to_string().contains("1 conversation(s)"),
        "{summary}"
    );
    let exported = browser
        .js("return document.getElementById('rights-json').textContent;")
        .await;
    assert!(exported.to_string().contains(HARMFUL), "{exported}");
    assert!(
        !exported.to_string().contains("fraction"),
        "nothing of Bob's"
    );
    browser.click("#rights-erase").await;
    browser
        .wait_for(
            "the erase confirmation",
            "!document.getElementById('erase-confirm').hidden",
        )
        .await;
    assert_accessible(&browser, "the erase confirmation").await;
    browser.click("#erase-yes").await;
    let erased = browser
        .wait_for(
            "the erasure",
            "document.getElementById('rights-summary').textContent.indexOf('Erased:') === 0 && \
             document.getElementById('rights-summary').textContent",
        )
        .await;
    assert!(erased.to_string().contains("1 conversation(s)"), "{erased}");
    let export = app
        .client
        .get(app.url("/api/v1/admin/learners/ann/export"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(export["conversations"], json!([]), "{export}");
    browser.assert_clean("data rights", &[]).await;
    assert_accessible(&browser, "the console's data rights (desktop)").await;

    // The audit log shows each of those actions.
    browser.click("#tab-audit").await;
    let audit = browser
        .wait_for(
            "the audit log",
            "document.querySelector('#audit-table tbody tr') && \
             document.getElementById('audit-table').textContent",
        )
        .await;
    for action in [
        "transcript.read",
        "flag.reviewed",
        "key.policy",
        "turn.rated",
        "key.created",
        "key.revoked",
        "learner.exported",
        "learner.erased",
    ] {
        assert!(audit.to_string().contains(action), "no {action}: {audit}");
    }
    browser.assert_clean("the audit log", &[]).await;
    assert_accessible(&browser, "the console's audit log (desktop)").await;
    browser.emulate_phone().await;
    no_sideways_scrolling(&browser, "the audit log").await;
    assert_accessible(&browser, "the console's audit log (phone)").await;
    app.stop().await.unwrap();
}
