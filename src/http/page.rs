//! The chat page at `GET /` (or `GET <base path>/`) and its assets, embedded in the binary.
//!
//! The page speaks only the public protocol (`POST /chatkit` and the viewer
//! streams), so it doubles as a worked example for integrators. Its script is
//! a graph of ES modules by concern, entered at `app.js`, served with its
//! style sheets and the widget renderer's modules under `/page/`;
//! `/chatkit-live.js` is the small classic script that gives a ChatKit.js page
//! live multi-tab sync, and the page loads it first and uses it for its own
//! streams too. Every URL the page uses is relative, so it works unchanged
//! under `CHATKIT_BASE_PATH`.

use actix_web::body::MessageBody;
use actix_web::http::header::{CacheControl, CacheDirective, LOCATION};
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::AuthMode;
use super::State;

const INDEX: &str = include_str!("page/index.html");
const LIVE: &str = include_str!("page/chatkit-live.js");

/// The page's scripts and style sheets under `/page/`: the chat's modules (`index.html` loads
/// `app.js`, which imports the rest), and the widget renderer's modules, which `items.js` imports.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JAVASCRIPT, include_str!("page/app.js")),
    ("api.js", JAVASCRIPT, include_str!("page/api.js")),
    ("state.js", JAVASCRIPT, include_str!("page/state.js")),
    ("history.js", JAVASCRIPT, include_str!("page/history.js")),
    ("thread.js", JAVASCRIPT, include_str!("page/thread.js")),
    ("items.js", JAVASCRIPT, include_str!("page/items.js")),
    ("composer.js", JAVASCRIPT, include_str!("page/composer.js")),
    ("attachments.js", JAVASCRIPT, include_str!("page/attachments.js")),
    ("attachment-chips.js", JAVASCRIPT, include_str!("page/attachment-chips.js")),
    ("attachments.css", CSS, include_str!("page/attachments.css")),
    ("thread-actions.js", JAVASCRIPT, include_str!("page/thread-actions.js")),
    ("hooks.js", JAVASCRIPT, include_str!("page/hooks.js")),
    ("time.js", JAVASCRIPT, include_str!("page/time.js")),
    ("chat.css", CSS, include_str!("page/chat.css")),
    ("widgets.js", JAVASCRIPT, include_str!("page/widgets.js")),
    ("widgets-forms.js", JAVASCRIPT, include_str!("page/widgets-forms.js")),
    ("widgets-chart.js", JAVASCRIPT, include_str!("page/widgets-chart.js")),
    ("widgets.css", CSS, include_str!("page/widgets.css")),
    ("markdown.js", JAVASCRIPT, include_str!("page/markdown.js")),
    ("content.js", JAVASCRIPT, include_str!("page/content.js")),
    ("content.css", CSS, include_str!("page/content.css")),
    ("turn-controls.js", JAVASCRIPT, include_str!("page/turn-controls.js")),
    ("interactive-items.js", JAVASCRIPT, include_str!("page/interactive-items.js")),
    ("message-actions.js", JAVASCRIPT, include_str!("page/message-actions.js")),
    ("interact.css", CSS, include_str!("page/interact.css")),
    // Vendored as npm ships them (versions and checksums in vendor/README.md, licenses beside them).
    ("vendor/marked.esm.js", JAVASCRIPT, include_str!("page/vendor/marked.esm.js")),
    ("vendor/purify.es.mjs", JAVASCRIPT, include_str!("page/vendor/purify.es.mjs")),
];

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Where the page may load from and connect to: this origin only, no inline code.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                           img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page, told how this gateway authenticates (the user header
/// in dev mode, client secrets otherwise).
pub async fn index(state: web::Data<State>) -> HttpResponse {
    let auth = match state.auth {
        AuthMode::Header => "header",
        AuthMode::Session => "session",
    };
    // Header names are HTTP tokens, which need no escaping in an HTML attribute.
    let html = INDEX.replace("{{auth}}", auth).replace("{{user_header}}", state.user_header.as_str());
    asset(HTML, Some(PAGE_POLICY), html)
}

/// `GET <prefix>` under a base path: the page lives at `<prefix>/`, where its
/// relative URLs resolve under the prefix.
pub async fn to_folder(request: HttpRequest) -> HttpResponse {
    let query = request.query_string();
    let location =
        if query.is_empty() { format!("{}/", request.path()) } else { format!("{}/?{query}", request.path()) };
    HttpResponse::PermanentRedirect().insert_header((LOCATION, location)).finish()
}

/// `GET /page/{name}`: one of the page's assets, or a 404 that names the path.
pub async fn page_asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match ASSETS.iter().find(|(asset_name, _, _)| *asset_name == name.as_str()) {
        Some((_, content_type, body)) => Ok(asset(content_type, None, *body)),
        None => Err(ApiError::not_found(format!("the page has no asset `{}`", name.as_str()))),
    }
}

/// `GET /chatkit-live.js`.
pub async fn live() -> HttpResponse {
    asset(JAVASCRIPT, None, LIVE)
}

/// An asset, revalidated on every load so that a new binary's page is seen at once.
fn asset(content_type: &'static str, policy: Option<&'static str>, body: impl MessageBody + 'static) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response
        .content_type(content_type)
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .insert_header(("x-content-type-options", "nosniff"));
    if let Some(policy) = policy {
        response.insert_header(("content-security-policy", policy));
    }
    response.body(body)
}
