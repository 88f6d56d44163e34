//! The operator's web console: static files compiled into the binary (`console/`: one HTML
//! page, one script, one style sheet; no build step, nothing fetched at run time), served
//! under `/ui/` by `cairn serve` and `cairn mirror`. The page needs no token; the script reads
//! the API with the bearer token the operator signs in with (kept in `sessionStorage`).
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy (scripts and styles from
//! this origin only, no inline code, Trusted Types required so that no string can become
//! HTML, no framing) and `X-Content-Type-Options: nosniff`. Files are revalidated on each use
//! (`Cache-Control: no-cache`) against an `ETag` made from a hash of their bytes: an unchanged
//! file costs a 304, and a new binary's files are used at once.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy every `/ui` answer carries. `require-trusted-types-for 'script'` with no policy
/// allowed makes the browser refuse every string assigned to `innerHTML` and its kin, so the
/// console can only build its page from elements and text nodes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

/// How browsers may cache a console file: keep it, but ask again (with `If-None-Match`)
/// before each use.
pub const CACHE_CONTROL: &str = "no-cache";

/// One file of the console.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The console's files. `index.html` is also the answer to `/ui/`.
const ASSETS: [Asset; 3] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../console/index.html"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../console/console.css"),
    },
];

/// The `ETag` of each asset (same order as [`ASSETS`]): a quoted prefix of its blake3 hash.
fn etags() -> &'static [String; ASSETS.len()] {
    static ETAGS: OnceLock<[String; ASSETS.len()]> = OnceLock::new();
    ETAGS.get_or_init(|| ASSETS.map(|a| format!("\"{}\"", &blake3::hash(a.bytes).to_hex()[..32])))
}

/// The console's routes: `/ui` (redirected to `/ui/`), `/ui/` (the page) and `/ui/{file}`.
/// They take no state and no token.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(redirect))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(file))
}

/// The headers every `/ui` answer carries.
fn guarded(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `/ui` → `/ui/`, relative so that it also works behind a proxy that adds a path prefix (the
/// page links its files and the API relative to `/ui/`).
async fn redirect() -> Response {
    guarded((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "ui/")]).into_response())
}

async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn file(
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(i, &headers),
        None => guarded(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "no console file {}\n",
                    cairn::kernel::echo::echo_bare(&name)
                ),
            )
                .into_response(),
        ),
    }
}

/// Asset `i`, or 304 when the client's `If-None-Match` names its current `ETag`.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
        });
    let common = [
        (header::ETAG, etag.as_str()),
        (header::CACHE_CONTROL, CACHE_CONTROL),
    ];
    if cached {
        return guarded((StatusCode::NOT_MODIFIED, common).into_response());
    }
    guarded(
        (
            StatusCode::OK,
            common,
            [(header::CONTENT_TYPE, asset.content_type)],
            asset.bytes,
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_no_inline_code_and_no_framing() {
        let p = CONTENT_SECURITY_POLICY;
        assert!(!p.contains("unsafe"), "{p}");
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(p.contains(part), "{part} missing from {p}");
        }
    }

    #[test]
    fn etags_differ_between_files_and_are_quoted() {
        let e = etags();
        assert!(e.iter().all(|t| t.starts_with('"') && t.ends_with('"')));
        assert_ne!(e[0], e[1]);
        assert_ne!(e[1], e[2]);
    }

    #[test]
    fn the_files_hold_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for bad in [
            "<script>",
            "style=",
            "<style",
            "onclick",
            "onload=",
            "javascript:",
        ] {
            assert!(!html.contains(bad), "index.html contains {bad}");
        }
        let js = std::str::from_utf8(ASSETS[1].bytes).unwrap();
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(bad), "console.js uses {bad}");
        }
    }
}
