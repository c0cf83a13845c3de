//! The web console: static assets built into the binary (no CDN, works offline), served under
//! `/console`. The assets hold no data; every figure they show comes from the authenticated API
//! with the key the user signs in with, so the pages themselves need no key.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// (path, content type, body).
const ASSETS: [(&str, &str, &str); 6] = [
    ("/console", "text/html; charset=utf-8", include_str!("../console/index.html")),
    ("/console/console.css", "text/css; charset=utf-8", include_str!("../console/console.css")),
    ("/console/app.js", "text/javascript; charset=utf-8", include_str!("../console/app.js")),
    ("/console/chart.js", "text/javascript; charset=utf-8", include_str!("../console/chart.js")),
    ("/console/limits.js", "text/javascript; charset=utf-8", include_str!("../console/limits.js")),
    ("/console/format.js", "text/javascript; charset=utf-8", include_str!("../console/format.js")),
];

/// Only the console's own scripts and styles run; nothing is framed or sent elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
        // Revalidated on every load, so an upgrade's assets are seen at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// `/console` and its assets; `/` leads to `/console`.
pub fn router() -> Router {
    let mut router = Router::new().route("/", get(|| async { Redirect::to("/console") }));
    for (path, content_type, body) in ASSETS {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router.route("/console/", get(|| async { Redirect::to("/console") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_the_page_imports_is_served() {
        for (_, _, body) in ASSETS {
            for import in body.lines().filter_map(|line| line.split(" from \"./").nth(1)) {
                let file = import.split('"').next().unwrap_or_default();
                let path = format!("/console/{file}");
                assert!(ASSETS.iter().any(|(served, _, _)| *served == path), "{path} is imported but not served");
            }
        }
        let page = ASSETS[0].2;
        for reference in ["/console/console.css", "/console/app.js"] {
            assert!(page.contains(reference), "{reference}");
        }
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "the page loads nothing from elsewhere");
    }
}
