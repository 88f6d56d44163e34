//! The console's HTTP answers, without a browser: `/ui/` and its files from a real `cairn
//! serve` and a real `cairn mirror`, with no token; the Content-Security-Policy, nosniff and
//! cache headers on each; 304 for a file the client has; 404 for one that does not exist.

mod common;
#[path = "common/console.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Ws;

/// An answer: status, headers (lowercase names; repeated ones joined with ", "), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// `GET url` with extra headers and no token, redirects not followed.
fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .build();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let mut map = BTreeMap::new();
    for name in resp.headers_names() {
        let values: Vec<&str> = resp.all(&name);
        map.insert(name.to_ascii_lowercase(), values.join(", "));
    }
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    Answer {
        status,
        headers: map,
        body,
    }
}

/// The policy's directives: name → sources.
fn directives(csp: &str) -> BTreeMap<String, Vec<String>> {
    csp.split(';')
        .filter_map(|d| {
            let mut parts = d.split_whitespace();
            let name = parts.next()?.to_ascii_lowercase();
            Some((name, parts.map(str::to_string).collect()))
        })
        .collect()
}

/// What every `/ui` answer carries: a strict policy, nosniff, no framing.
#[track_caller]
fn assert_guarded(what: &str, a: &Answer) {
    let csp = a.header("content-security-policy");
    let d = directives(csp);
    let sources = |name: &str| d.get(name).cloned().unwrap_or_default();
    assert!(
        matches!(sources("default-src").as_slice(), [s] if s == "'self'" || s == "'none'"),
        "{what}: default-src is 'self' or 'none': {csp:?}"
    );
    for name in ["script-src", "style-src"] {
        let s = sources(name);
        assert!(!s.is_empty(), "{what}: {name} is set: {csp:?}");
        assert!(
            s.iter().all(|x| x == "'self'" || x == "'none'"),
            "{what}: {name} allows only this origin (no inline code, no eval, no other host): {csp:?}"
        );
    }
    assert_eq!(sources("frame-ancestors"), ["'none'"], "{what}: {csp:?}");
    assert_eq!(sources("object-src"), ["'none'"], "{what}: {csp:?}");
    assert_eq!(sources("base-uri"), ["'none'"], "{what}: {csp:?}");
    assert_eq!(
        sources("require-trusted-types-for"),
        ["'script'"],
        "{what}: {csp:?}"
    );
    assert!(!csp.contains("unsafe"), "{what}: {csp:?}");
    assert!(!csp.contains('*'), "{what}: {csp:?}");
    assert_eq!(a.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(a.header("x-frame-options"), "DENY", "{what}");
}

/// The page and its files from the node at `base`: without a token, with their types, guarded
/// and cacheable; returns each file's ETag.
fn check_files(base: &str) -> BTreeMap<&'static str, String> {
    let mut etags = BTreeMap::new();
    let page = get(&format!("{base}/ui/"), &[]);
    assert_eq!(page.status, 200, "{base}/ui/ without a token");
    assert_guarded("/ui/", &page);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let html = String::from_utf8(page.body.clone()).unwrap();
    // The page loads its code and styles as files; it holds none inline.
    assert!(html.contains("<script src=\"console.js\""), "{html}");
    assert!(
        html.contains("<link rel=\"stylesheet\" href=\"console.css\">"),
        "{html}"
    );
    assert!(
        !html.contains("<script>") && !html.contains("<style"),
        "{html}"
    );
    assert!(html.contains("<input name=\"token\""), "{html}");
    for id in [
        "status", "mirrors", "packages", "features", "daemons", "changes", "log", "audit",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "panel #{id}: {html}"
        );
    }
    for (file, kind) in [
        ("index.html", "text/html; charset=utf-8"),
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    ] {
        let a = get(&format!("{base}/ui/{file}"), &[]);
        assert_eq!(a.status, 200, "{file}");
        assert_guarded(file, &a);
        assert_eq!(a.header("content-type"), kind, "{file}");
        assert_eq!(a.header("cache-control"), "no-cache", "{file}");
        let etag = a.header("etag").to_string();
        assert!(
            etag.len() > 10 && etag.starts_with('"') && etag.ends_with('"'),
            "{file}: {etag:?}"
        );
        assert!(!a.body.is_empty(), "{file}");
        etags.insert(file, etag);
    }
    assert_eq!(
        page.header("etag"),
        etags["index.html"],
        "/ui/ is index.html"
    );
    // `/ui` sends the browser to `/ui/`, relative, so a proxy's path prefix is kept.
    let bare = get(&format!("{base}/ui"), &[]);
    assert_eq!(bare.status, 308);
    assert_eq!(bare.header("location"), "ui/");
    assert_guarded("/ui", &bare);
    etags
}

#[test]
fn leader_and_mirror_serve_the_console_without_a_token_under_a_strict_policy() {
    let cluster = fixture::Cluster::start();
    let leader = check_files(&cluster.leader.url);
    let mirror = check_files(&cluster.mirror.url);
    assert_eq!(leader, mirror, "the same files on both");
    // The API the page reads still needs a token.
    let status = get(&format!("{}/v1/status", cluster.leader.url), &[]);
    assert_eq!(status.status, 401);
}

#[test]
fn a_file_the_browser_has_is_answered_304_and_a_changed_one_in_full() {
    let ws = Ws::init();
    let server = ws.serve();
    let url = format!("{}/ui/console.js", server.url);
    let first = get(&url, &[]);
    let etag = first.header("etag").to_string();
    for sent in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
    ] {
        let again = get(&url, &[("if-none-match", &sent)]);
        assert_eq!(again.status, 304, "If-None-Match: {sent}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), etag);
        assert_eq!(again.header("cache-control"), "no-cache");
        assert_guarded("a 304", &again);
    }
    // HEAD: the same headers, no body.
    let head = ureq::head(&url).call().unwrap();
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert!(head.header("content-security-policy").is_some());
    assert_eq!(head.into_string().unwrap(), "");
    let stale = get(&url, &[("if-none-match", "\"an-older-version\"")]);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, first.body);
    // Another file's tag is not this one's.
    let css = get(&format!("{}/ui/console.css", server.url), &[]);
    let cross = get(&url, &[("if-none-match", css.header("etag"))]);
    assert_eq!(cross.status, 200);
    assert!(server.stop().success());
}

#[test]
fn an_unknown_console_file_is_404_and_the_api_is_not_reachable_through_ui() {
    let ws = Ws::init();
    let server = ws.serve();
    for path in [
        "/ui/nope.js",
        "/ui/index.htm",
        "/ui/..%2Fv1%2Fstatus",
        "/ui/%3Cscript%3E",
    ] {
        let a = get(&format!("{}{path}", server.url), &[]);
        assert_eq!(a.status, 404, "{path}");
        assert_guarded(path, &a);
        assert_eq!(
            a.header("content-type"),
            "text/plain; charset=utf-8",
            "{path}"
        );
        assert!(a.header("etag").is_empty(), "{path}");
    }
    // Deeper paths are no console file either (the API's JSON 404).
    let deeper = get(&format!("{}/ui/a/console.js", server.url), &[]);
    assert_eq!(deeper.status, 404);
    assert!(server.stop().success());
}
