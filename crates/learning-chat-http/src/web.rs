//! The learner's chat page (`/`), the teacher/admin console (`/console`) and the interactive
//! API docs (`/docs`), embedded in the binary
//! at build time from `crates/learning-chat-http/web/`. No Node at build time, no CDN at run time.
//!
//! Every URL the pages use is relative, so they work at any sub-path behind a proxy
//! (`location /chat/ { proxy_pass http://app/; }`), and every page and asset carries a strict
//! Content-Security-Policy: scripts and styles only from this origin, nothing inline.

use crate::api::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy on every page and asset: nothing from other origins, no inline script or style,
/// no eval, no framing. `data:` images only for the icons inside Swagger UI's stylesheet.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Path under `/web/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Vendored files change only with their pinned version (and so with the binary): the
    /// browser may keep them a day. The project's own files are revalidated on every load.
    vendored: bool,
}

macro_rules! asset {
    ($path:literal, $type:expr, $vendored:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../web/", $path)),
            vendored: $vendored,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("app.js", JS, false),
    asset!("app.css", CSS, false),
    asset!("console.js", JS, false),
    asset!("console.css", CSS, false),
    asset!("docs.js", JS, false),
    asset!("docs.css", CSS, false),
    asset!("favicon.svg", "image/svg+xml", false),
    asset!("vendor/marked/marked.umd.js", JS, true),
    asset!("vendor/dompurify/purify.min.js", JS, true),
    asset!("vendor/swagger-ui-dist/swagger-ui-bundle.js", JS, true),
    asset!("vendor/swagger-ui-dist/swagger-ui.css", CSS, true),
];

static INDEX_HTML: &[u8] = include_bytes!("../web/index.html");
static DOCS_HTML: &[u8] = include_bytes!("../web/docs.html");
static CONSOLE_HTML: &[u8] = include_bytes!("../web/console.html");

/// The page and asset routes, merged into the router when `server.web_ui = true`.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(index))
        .route("/docs", get(docs))
        .route(crate::routes::CONSOLE, get(console))
        .route("/web/{*path}", get(asset))
}

async fn index() -> Response {
    page(INDEX_HTML)
}

async fn docs() -> Response {
    page(DOCS_HTML)
}

async fn console() -> Response {
    page(CONSOLE_HTML)
}

fn page(body: &'static [u8]) -> Response {
    respond("text/html; charset=utf-8", body, false)
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => respond(a.content_type, a.body, a.vendored),
        None => ApiError::not_found().into_response(),
    }
}

fn respond(content_type: &'static str, body: &'static [u8], vendored: bool) -> Response {
    let cache = if vendored {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}
