//! Headless Chromium driven through chromedriver (WebDriver, fantoccini) for tests/browser.rs,
//! with what every check needs: waiting on the page's state, the browser's console log,
//! Content-Security-Policy violations and an axe-core accessibility audit.

use crate::support::processes::{free_port, wait_for_port};
use axum::http::Method;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// axe-core, vendored from the npm registry (tests/assets/axe-core/README.md).
const AXE: &str = include_str!("../assets/axe-core/axe.min.js");

/// Installed before any script of every page: collects CSP violations the page would not
/// report anywhere else.
const CSP_LISTENER: &str = "window.__cspViolations = [];\
    document.addEventListener('securitypolicyviolation', function (e) {\
      window.__cspViolations.push(e.violatedDirective + ' blocked ' + e.blockedURI +\
        ' at ' + e.sourceFile + ':' + e.lineNumber);\
    });";

/// How long a page may take to reach an expected state (generous: the machine is shared).
pub const WAIT: Duration = Duration::from_secs(60);

/// A WebDriver command the client has no method for (Chrome's CDP bridge, the browser log).
#[derive(Debug)]
struct SessionCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or(""),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(self.body.to_string()))
    }
}

/// chromedriver and a Chromium session, both stopped on drop.
pub struct Browser {
    pub client: Client,
    _driver: DriverGroup,
    _profile: tempfile::TempDir,
}

/// chromedriver and the browsers it started (one process group), killed on drop.
struct DriverGroup(Child);

impl Drop for DriverGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session of this window size.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromedriver = ["/usr/bin/chromedriver", "chromedriver"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("chromedriver is required: run ./scripts/test.sh, which installs it");
        let port = free_port();
        // A process group of its own, so Chromium (its child) is stopped with it even when a
        // test fails half-way.
        let driver = DriverGroup(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts"),
        );
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "chromedriver did not listen"
        );
        let profile = tempfile::tempdir().expect("temp dir");
        let args = vec![
            "--lang=en-US".to_owned(),
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut options = json!({ "args": args });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}/"))
            .await
            .expect("a Chromium session");
        let browser = Browser {
            client,
            _driver: driver,
            _profile: profile,
        };
        browser
            .cdp(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": CSP_LISTENER }),
            )
            .await;
        browser
    }

    /// Runs a Chrome DevTools Protocol command.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(SessionCommand {
                path: "goog/cdp/execute",
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// A phone-sized viewport (390 x 844 CSS pixels, touch, mobile layout).
    pub async fn emulate_phone(&self) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true }),
        )
        .await;
    }

    /// Opens `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls the expression `expr` until it is truthy and returns its value; on time-out fails
    /// with `what` and the page's status line.
    pub async fn wait_for(&self, what: &str, expr: &str) -> Value {
        let until = Instant::now() + WAIT;
        let script = format!("return ({expr});");
        loop {
            let value = self.js(&script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > until {
                let status = self
                    .js("var s = document.getElementById('status'); return s ? s.textContent : document.body.innerText.slice(0, 2000);")
                    .await;
                panic!("timed out waiting for {what} ({expr}); page says: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types into the element matching `css` (real key events: Enter sends).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The browser's console and network log since the last call (read once, then cleared).
    pub async fn take_log(&self) -> Vec<Value> {
        let log = self
            .client
            .issue_cmd(SessionCommand {
                path: "se/log",
                body: json!({ "type": "browser" }),
            })
            .await
            .expect("the browser log");
        log.as_array().cloned().unwrap_or_default()
    }

    /// Fails on any console error or failed network load (unless its message contains one of
    /// `expected`, e.g. "status of 503" while a 503 is provoked) and on any CSP violation.
    pub async fn assert_clean(&self, phase: &str, expected: &[&str]) {
        let unexpected: Vec<String> = self
            .take_log()
            .await
            .into_iter()
            .filter(|entry| entry["level"] == "SEVERE" || entry["level"] == "WARNING")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .filter(|message| !expected.iter().any(|e| message.contains(e)))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{phase}: console errors or failed requests: {unexpected:#?}"
        );
        let csp = self
            .js("return window.__cspViolations || ['the CSP listener is missing'];")
            .await;
        assert_eq!(
            csp,
            json!([]),
            "{phase}: Content-Security-Policy violations"
        );
    }

    /// Runs axe-core on the page; returns its violations (WCAG 2.1 A/AA and best practices).
    pub async fn axe_violations(&self) -> Vec<Value> {
        self.js(&format!("{AXE}\n;return typeof window.axe;")).await;
        let result = self
            .client
            .execute_async(
                "var done = arguments[arguments.length - 1];\
                 window.axe.run(document, { resultTypes: ['violations'] }).then(function (r) {\
                   done(r.violations.map(function (v) {\
                     return { id: v.id, impact: v.impact, help: v.help,\
                       nodes: v.nodes.map(function (n) { return n.target.join(' ') + ' :: ' + n.failureSummary; }) };\
                   }));\
                 }, function (e) { done([{ id: 'axe-error', help: String(e) }]); });",
                vec![],
            )
            .await
            .expect("axe runs");
        result.as_array().cloned().unwrap_or_default()
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
