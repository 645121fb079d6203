//! Cross-origin access for ChatKit.js pages served from another origin: the
//! CORS middleware of the `/chatkit` routes, and the checks of the origins
//! and base path it is configured with.
//!
//! Only `POST /chatkit`, the viewer streams and the attachment routes (all
//! under `/chatkit`) are opened, and only to the exact origins listed; the
//! page, the probes and the `/v1` API never are. With no origins listed the
//! middleware adds nothing, and every preflight is refused.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use super::ApiError;

/// Seconds a browser may cache a preflight answer (Chromium caps it at 7,200).
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;
/// The methods of the opened routes.
const ALLOWED_METHODS: &str = "GET, POST, PUT";
/// Response headers a cross-origin page may read beyond the safelisted ones:
/// `retry-after` tells it when a rate-limited session may try again, and
/// `x-request-id` names the request to quote in a report, streams included.
const EXPOSED_HEADERS: &str = "retry-after, x-request-id";

/// Which origins may call the `/chatkit` routes, and how to answer them.
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<String>,
    allowed_headers: String,
    base_path: String,
}

impl Cors {
    /// `origins` are checked with [`parse_origin`]; `base_path` with [`parse_base_path`].
    pub fn new(origins: Vec<String>, user_header: &HeaderName, base_path: String) -> Self {
        let allowed_headers = format!("authorization, content-type, last-event-id, {}", user_header.as_str());
        Cors { origins, allowed_headers, base_path }
    }

    /// Whether `path` is one of the opened routes: `/chatkit` and what lies under it.
    fn opens(&self, path: &str) -> bool {
        path.strip_prefix(self.base_path.as_str())
            .and_then(|rest| rest.strip_prefix("/chatkit"))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|allowed| allowed == origin)
    }
}

/// The middleware (`actix_web::middleware::from_fn`): answers preflights of
/// the opened routes and marks their answers to allowed origins.
pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(cors) = request.app_data::<web::Data<Cors>>().cloned() else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    if !cors.opens(request.path()) {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    let origin = request.headers().get(header::ORIGIN).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && origin.is_some();
    if preflight {
        let origin = origin.unwrap_or_default();
        let response = if cors.allows(&origin) {
            HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, cors.allowed_headers.as_str()))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE_SECS.to_string()))
                .insert_header((header::VARY, "Origin"))
                .finish()
        } else {
            // Without allow headers the browser refuses the request; the body
            // tells whoever reads the network log why.
            ApiError::forbidden(
                "origin_not_allowed",
                format!("cross-origin requests from `{origin}` are not allowed: list it in CHATKIT_ALLOWED_ORIGINS"),
            )
            .error_response()
        };
        return Ok(request.into_response(response));
    }
    let mut response = next.call(request).await?.map_into_boxed_body();
    if cors.origins.is_empty() {
        return Ok(response);
    }
    let headers = response.headers_mut();
    // The answer depends on the origin, so caches must key on it.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin.filter(|origin| cors.allows(origin)) {
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
        }
    }
    Ok(response)
}

/// Checks one entry of `CHATKIT_ALLOWED_ORIGINS` and writes it as browsers
/// send it: `scheme://host[:port]`, lower case, without the scheme's default port.
pub fn parse_origin(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    let problem = |why: &str| {
        format!("`{entry}` in CHATKIT_ALLOWED_ORIGINS is not an origin ({why}); write scheme://host[:port], e.g. https://app.example.com")
    };
    let lower = entry.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(|| problem("no scheme"))?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(problem("the scheme must be http or https")),
    };
    if rest.contains(['/', '?', '#', '@', '*']) {
        return Err(problem("only scheme, host and port: no path, query, user or wildcard"));
    }
    let (host, port, host_ok) = if let Some(after) = rest.strip_prefix('[') {
        // An IPv6 literal holds colons of its own.
        let (inner, tail) = after.split_once(']').ok_or_else(|| problem("an unclosed `[`"))?;
        let port = match tail {
            "" => None,
            _ => Some(tail.strip_prefix(':').ok_or_else(|| problem("text after the host"))?),
        };
        let ok = !inner.is_empty() && inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        (&rest[..inner.len() + 2], port, ok)
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        (host, port, !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
    };
    if !host_ok {
        return Err(problem("the host is not a name or an IP address"));
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(port) if port == default_port => Ok(format!("{scheme}://{host}")),
        Some(port) if port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(format!("{scheme}://{host}:{port}")),
        Some(_) => Err(problem("the port is not a number from 1 to 65535")),
    }
}

/// Checks `CHATKIT_BASE_PATH` and writes it as routes use it: `""` for the
/// root, else one leading slash and none trailing (`chat/` becomes `/chat`).
pub fn parse_base_path(path: &str) -> Result<String, String> {
    let trimmed = path.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        let valid = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
        if !valid {
            return Err(format!(
                "CHATKIT_BASE_PATH `{path}` is not a path prefix: write segments of letters, digits, `-`, `_`, `.` and `~` separated by single slashes, e.g. /chat"
            ));
        }
    }
    Ok(format!("/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_normalized() {
        assert_eq!(parse_origin("https://App.Example.com").unwrap(), "https://app.example.com");
        assert_eq!(parse_origin(" http://localhost:3000 ").unwrap(), "http://localhost:3000");
        assert_eq!(parse_origin("https://a.example:443").unwrap(), "https://a.example");
        assert_eq!(parse_origin("http://127.0.0.1:80").unwrap(), "http://127.0.0.1");
        assert_eq!(parse_origin("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(parse_origin("http://[::1]").unwrap(), "http://[::1]");
        for bad in [
            "app.example.com",
            "ftp://a.example",
            "https://a.example/",
            "https://a.example/chat",
            "https://*.example.com",
            "https://user@a.example",
            "https://a.example:0",
            "https://a.example:99999",
            "https://",
            "https://a_b.example",
        ] {
            let error = parse_origin(bad).unwrap_err();
            assert!(error.contains("CHATKIT_ALLOWED_ORIGINS") && error.contains(bad.trim()), "{error}");
        }
    }

    #[test]
    fn base_paths_are_normalized() {
        assert_eq!(parse_base_path("").unwrap(), "");
        assert_eq!(parse_base_path("/").unwrap(), "");
        assert_eq!(parse_base_path("chat").unwrap(), "/chat");
        assert_eq!(parse_base_path("/chat/").unwrap(), "/chat");
        assert_eq!(parse_base_path("/apps/chat-1").unwrap(), "/apps/chat-1");
        for bad in ["/chat//x", "/a/../b", "/{id}", "/chat?x=1", "/ch at"] {
            assert!(parse_base_path(bad).unwrap_err().contains("CHATKIT_BASE_PATH"), "{bad}");
        }
    }

    #[test]
    fn only_the_chatkit_routes_are_opened() {
        let cors = Cors::new(vec![], &HeaderName::from_static("x-user-id"), "/chat".into());
        for path in ["/chat/chatkit", "/chat/chatkit/events", "/chat/chatkit/attachments/a/upload"] {
            assert!(cors.opens(path), "{path}");
        }
        for path in ["/chatkit", "/chat/chatkit-live.js", "/chat/v1/chatkit/threads", "/chat/", "/chat/chatkitx"] {
            assert!(!cors.opens(path), "{path}");
        }
    }
}
