//! The web console in a real browser: headless Chromium driven through WebDriver
//! (chromedriver, started here on a free port; `fantoccini` as the client) against a real
//! `cairn serve` on 127.0.0.1 with a real `cairn mirror` following it. Every wait polls a
//! condition with a deadline, every test has an overall limit, and every process is stopped.
//!
//! Where Chromium or chromedriver cannot be found or started, the tests say so on stderr and
//! are reported as ignored; under `CI=true` they fail instead (CI installs both).
//!
//! `--screenshot PATH` (see `just screenshot`) runs no test: it starts the same leader and
//! mirror, writes for a while so the plots have something to show, and saves the console as
//! a PNG.

mod common;
#[path = "common/console.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_faultfs::harness::{self, Test};
use fantoccini::{Client, ClientBuilder, Locator};
use fixture::{long_value, Cluster, PAYLOAD};
use serde_json::{json, Value};

/// How long one condition may take to show on the page.
const WAIT: Duration = Duration::from_secs(45);
/// How long a whole test may take in the browser.
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// Where the console keeps the token (console.js's `TOKEN_KEY`).
const TOKEN_KEY: &str = "cairn.console.token";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--screenshot") {
        let path = args.get(i + 1).expect("--screenshot PATH");
        screenshot(Path::new(path));
        return;
    }
    harness::main_gated(
        "console",
        &[
            Test {
                name: "signed_in_with_a_read_token_the_panels_show_the_workspace_and_the_mirror",
                run: signed_in_with_a_read_token_the_panels_show_the_workspace_and_the_mirror,
            },
            Test {
                name: "workspace_values_with_markup_render_as_text_and_run_nothing",
                run: workspace_values_with_markup_render_as_text_and_run_nothing,
            },
            Test {
                name: "a_wrong_token_is_refused_and_sign_out_clears_the_token",
                run: a_wrong_token_is_refused_and_sign_out_clears_the_token,
            },
            Test {
                name: "the_live_log_shows_entries_written_after_the_page_loaded",
                run: the_live_log_shows_entries_written_after_the_page_loaded,
            },
            Test {
                name: "the_audit_runs_with_an_admin_token_and_shows_its_result",
                run: the_audit_runs_with_an_admin_token_and_shows_its_result,
            },
        ],
        "headless Chromium and chromedriver",
        browser_available,
    )
}

// ---- the browser ----

/// `name` on `PATH` (or the path in `env`, when set).
fn find_program(env: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "none of {names:?} is on PATH (install Debian's chromium and chromium-driver, as \
         `just prereqs` does, or set {env})"
    ))
}

/// A free port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Headless Chromium under a chromedriver this test started, in a process group of its own
/// (killed whole on drop, so no browser outlives the test).
struct Browser {
    client: Client,
    driver: Driver,
}

struct Driver {
    child: Child,
    _profile: tempfile::TempDir,
    log: PathBuf,
}

impl Driver {
    fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child this test started with
        // process_group(0) (its pid is the group's id); not yet reaped.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn start() -> Result<Browser, String> {
        let chromium = find_program(
            "CAIRN_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?;
        let chromedriver = find_program("CAIRN_CHROMEDRIVER", &["chromedriver"])?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("{} could not be started: {e}", chromedriver.display()))?
        };
        let driver = Driver {
            child,
            _profile: profile,
            log,
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{url}/status")).call().is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "chromedriver did not answer on {url} within 30 s; its log ends:\n{}",
                    driver.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let data_dir = driver._profile.path().join("chromium");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,2000", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", data_dir.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(caps);
        let session = builder.connect(&url);
        let client = match tokio::time::timeout(Duration::from_secs(60), session).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(format!(
                    "chromedriver could not start {}: {e}; its log ends:\n{}",
                    chromium.display(),
                    driver.log_tail()
                ))
            }
            Err(_) => return Err("no browser session within 60 s".into()),
        };
        Ok(Browser { client, driver })
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(20), self.client.close()).await;
        drop(self.driver);
    }
}

/// The gate: a browser session can be opened and closed here.
fn browser_available() -> Result<(), String> {
    runtime().block_on(async {
        let b = Browser::start().await?;
        b.client
            .goto("about:blank")
            .await
            .map_err(|e| format!("the browser could not open a page: {e}"))?;
        b.close().await;
        Ok(())
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the leader and mirror, then a browser, and runs `body` within [`TEST_LIMIT`].
fn with_browser(body: impl AsyncFnOnce(&Cluster, &Client)) {
    let cluster = Cluster::start();
    runtime().block_on(async {
        let browser = Browser::start().await.expect("the gate started a browser");
        let done = tokio::time::timeout(TEST_LIMIT, body(&cluster, &browser.client)).await;
        browser.close().await;
        done.unwrap_or_else(|_| panic!("the test did not finish within {TEST_LIMIT:?}"));
    });
}

// ---- page helpers ----

/// Waits until the page's live log has received the entry at `offset` (shown or held back).
async fn wait_log_received(c: &Client, offset: u64) {
    wait(async || {
        let seen = js(
            c,
            "return Number(document.querySelector('#log').dataset.lastOffset || 0);",
        )
        .await;
        (seen.as_u64() >= Some(offset))
            .then_some(())
            .ok_or(format!("the page received offset {seen}, not yet {offset}"))
    })
    .await;
}

/// Polls `attempt` (every 100 ms) until it gives a value; fails the test with the last reason
/// after [`WAIT`].
async fn wait<T>(mut attempt: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why} (waited {WAIT:?})"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The visible text of the first element matching `css`.
async fn text(c: &Client, css: &str) -> Result<String, String> {
    let e = c
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no element {css}: {e}"))?;
    e.text().await.map_err(|e| format!("text of {css}: {e}"))
}

/// Waits until the visible text of `css` contains every one of `parts`; returns it.
async fn wait_text(c: &Client, css: &str, parts: &[&str]) -> String {
    wait(async || {
        let t = text(c, css).await?;
        match parts.iter().find(|p| !t.contains(**p)) {
            None => Ok(t),
            Some(p) => Err(format!("{css} does not show {p:?}; it shows:\n{t}")),
        }
    })
    .await
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script runs")
}

async fn displayed(c: &Client, css: &str) -> bool {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Opens the console at `base` and submits `token` in the sign-in form.
async fn submit_token(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/"))
        .await
        .expect("open the console");
    wait(async || {
        displayed(c, "#signin")
            .await
            .then_some(())
            .ok_or("the sign-in form is not shown".to_string())
    })
    .await;
    type_into(c, "input[name=token]", token).await;
    click(c, "#signin-form button[type=submit]").await;
}

/// Signs in at `base` and waits until the console is shown.
async fn sign_in(c: &Client, base: &str, token: &str) {
    submit_token(c, base, token).await;
    wait(async || {
        if displayed(c, "#console").await {
            return Ok(());
        }
        Err(format!(
            "the console is not shown after signing in: {:?}",
            text(c, "#signin-error").await
        ))
    })
    .await;
}

async fn stored_token(c: &Client) -> Value {
    js(c, &format!("return sessionStorage.getItem('{TOKEN_KEY}');")).await
}

/// The change of `kind` that involves `package`, from the API.
fn change_of(cluster: &Cluster, kind: &str, package: &str) -> Value {
    let changes = cluster.get(&format!("{}/v1/changes", cluster.leader.url));
    changes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["kind"] == kind
                && c["packages"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|n| n == package))
        })
        .unwrap_or_else(|| panic!("no {kind} change of {package}: {changes}"))
        .clone()
}

// ---- the tests ----

fn signed_in_with_a_read_token_the_panels_show_the_workspace_and_the_mirror() {
    with_browser(async |cluster, c| {
        let leader = &cluster.leader.url;
        let status = cluster.leader_status();
        let id = status["workspace_id"].as_str().unwrap();
        sign_in(c, leader, &cluster.read).await;

        wait_text(
            c,
            "#status",
            &["role", "leader", id, "this node leads", "epoch"],
        )
        .await;
        for (name, version) in [
            ("router", "2.0.1"),
            ("netmon", "1.2.0"),
            ("flaky", "0.1.0"),
            ("xss", "0.1.0"),
        ] {
            wait_text(
                c,
                &format!("#packages tr[data-package={name}]"),
                &[name, version, "installed"],
            )
            .await;
        }
        wait_text(
            c,
            "#packages tr[data-package=netmon]",
            &["threshold", "10", "interval", "30s"],
        )
        .await;
        // Desired and observed; netmon's drift is highlighted, routing's agreement is not.
        wait_text(
            c,
            "#features tr.drift[data-feature=netmon]",
            &[
                "netmon",
                "enabled",
                "disabled",
                "drift: wants on, observed disabled",
            ],
        )
        .await;
        wait_text(
            c,
            "#features tr[data-feature=routing]",
            &["router", "always_enabled", "enabled", "in step"],
        )
        .await;
        assert_eq!(
            js(
                c,
                "return document.querySelectorAll('#features tr.drift').length;"
            )
            .await,
            1
        );
        wait_text(
            c,
            "#daemons tr[data-daemon='netmon:collector']",
            &["collector", "enabled", "running"],
        )
        .await;

        // The finished connect: its five tasks in the API's order, each done, with their hooks.
        let connect = change_of(cluster, "connect", "netmon");
        assert_eq!(connect["status"], "done", "{connect}");
        let article = format!(
            "#changes article[data-change='{}']",
            connect["id"].as_str().unwrap()
        );
        wait_text(c, &article, &["connect", "done"]).await;
        let want: Vec<String> = connect["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(want.len(), 5, "{connect}");
        let shown = wait(async || {
            let names = js(c, &format!(
                "return [...document.querySelectorAll(\"{article} li.task .taskname\")].map(e => e.textContent);"
            ))
            .await;
            let names: Vec<String> = serde_json::from_value(names).map_err(|e| e.to_string())?;
            if names.len() == want.len() { Ok(names) } else { Err(format!("tasks shown: {names:?}")) }
        })
        .await;
        assert_eq!(shown, want, "the tasks in their order");
        for t in &want {
            wait_text(c, &format!("{article} li.task[data-task='{t}']"), &["done"]).await;
        }
        wait_text(
            c,
            &format!("{article} li.task[data-task=connect-plug-net] li.hookrun"),
            &[
                "connect-plug-net",
                "attempt 1",
                "exit 0",
                "netmon: plugged into",
            ],
        )
        .await;

        // The failed connect: the failing hook's exit code and stderr, and undo shown as undo.
        let undone = change_of(cluster, "connect", "flaky");
        // A change whose task failed ends `error`, its done tasks undone.
        assert_eq!(undone["status"], "error", "{undone}");
        let article = format!(
            "#changes article[data-change='{}']",
            undone["id"].as_str().unwrap()
        );
        wait_text(c, &article, &["connect", "error"]).await;
        wait_text(
            c,
            &format!("{article} li.task[data-task=connect-plug-net]"),
            &["error", "exit 3", "flaky: cannot reach the router"],
        )
        .await;
        wait_text(
            c,
            &format!("{article} li.task[data-task=prepare-plug-net]"),
            &[
                "↩ undone",
                "prepare-plug-net attempt 1: exit 0",
                "flaky: preparing",
            ],
        )
        .await;
        wait_text(
            c,
            &format!("{article} li.task[data-task=prepare-plug-net] li.hookrun.undo[data-hook=unprepare-plug-net]"),
            &["↩ undo", "unprepare-plug-net", "exit 0", "flaky: unpreparing"],
        )
        .await;

        // The mirror: its applied offset is the leader's head, no lag, connected; and plotted.
        wait(async || {
            let head = cluster.leader_status()["applied_offset"].as_u64().unwrap();
            let row = text(c, "#mirrors tr[data-mirror=m]").await?;
            let cells: Vec<&str> = row.split_whitespace().collect();
            if cells.first() == Some(&"m")
                && cells.get(1) == Some(&head.to_string().as_str())
                && cells.get(2) == Some(&"0")
                && row.contains("connected")
                && row.contains("ago")
            {
                Ok(())
            } else {
                Err(format!(
                    "the mirror row is {row:?}; the leader's head is {head}"
                ))
            }
        })
        .await;
        wait(async || {
            let n = js(
                c,
                "return document.querySelectorAll('#plot-lag polyline[data-series=m]').length \
                           + document.querySelectorAll('#plot-commits polyline').length;",
            )
            .await;
            (n == 2).then_some(()).ok_or(format!("plots drawn: {n}"))
        })
        .await;
        wait_text(c, "#plot-lag", &["m: 0"]).await;

        // The mirror serves the console too, and says whom it follows.
        sign_in(c, &cluster.mirror.url, &cluster.read).await;
        wait_text(c, "#status", &["mirror", id, leader.as_str()]).await;
        wait_text(
            c,
            "#mirrors",
            &["this node follows", leader.as_str(), "following"],
        )
        .await;
        wait_text(c, "#packages tr[data-package=netmon]", &["1.2.0"]).await;
        wait_text(c, "#daemons", &["Not supervised here", "collector"]).await;
    });
}

fn workspace_values_with_markup_render_as_text_and_run_nothing() {
    with_browser(async |cluster, c| {
        sign_in(c, &cluster.leader.url, &cluster.read).await;
        let note = "#packages tr[data-package=xss] li[data-var=note]";
        // The payload is longer than a value is shown before it is cut.
        wait_text(c, note, &["<script>window.cairnPwned", "show all"]).await;
        click(c, &format!("{note} button.more")).await;
        wait_text(c, note, &[PAYLOAD, "show less"]).await;

        // The onload hook printed the payload: its output is text as well.
        let install = change_of(cluster, "install", "xss");
        let onload = format!(
            "#changes article[data-change='{}'] .onload",
            install["id"].as_str().unwrap()
        );
        wait_text(c, &onload, &["onload attempt 1", "exit 0", PAYLOAD]).await;
        // And in the log, inside the var.set entry's event.
        wait_text(c, "#log-rows", &["var.set.v1", "<script>window.cairnPwned"]).await;

        // Nothing ran and no element was made from it.
        assert_eq!(js(c, "return typeof window.cairnPwned;").await, "undefined");
        assert_eq!(js(c, "return document.title;").await, "cairn console");
        assert_eq!(
            js(
                c,
                "return document.querySelectorAll('#console img, #console script').length;"
            )
            .await,
            0
        );

        // A long value is cut, and shown whole on demand.
        let long = "#packages tr[data-package=xss] li[data-var=long]";
        let value = long_value();
        let whole = format!("show all ({} characters)", value.chars().count());
        let cut = wait_text(c, long, &["chunk-000", &whole]).await;
        assert!(
            !cut.contains(value.trim_end()),
            "the long value is cut: {cut}"
        );
        click(c, &format!("{long} button.more")).await;
        wait_text(c, long, &[value.trim_end(), "show less"]).await;
        click(c, &format!("{long} button.more")).await;
        wait(async || {
            let t = text(c, long).await?;
            (!t.contains(value.trim_end()) && t.contains("show all"))
                .then_some(())
                .ok_or(format!("not cut again: {t}"))
        })
        .await;
    });
}

fn a_wrong_token_is_refused_and_sign_out_clears_the_token() {
    with_browser(async |cluster, c| {
        let leader = &cluster.leader.url;
        let bogus = format!("cairn_{}", "0".repeat(64));
        submit_token(c, leader, &bogus).await;
        wait_text(
            c,
            "#signin-error",
            &["refused this token", "unknown or revoked token"],
        )
        .await;
        assert!(!displayed(c, "#console").await);
        assert_eq!(stored_token(c).await, Value::Null);

        // A mirror token is a valid token that may not read.
        submit_token(c, leader, &cluster.mirror_token).await;
        wait_text(c, "#signin-error", &["may not read", "has role mirror"]).await;
        assert_eq!(stored_token(c).await, Value::Null);

        sign_in(c, leader, &cluster.read).await;
        assert_eq!(stored_token(c).await, Value::String(cluster.read.clone()));
        assert_eq!(js(c, "return localStorage.length;").await, 0);
        assert_eq!(js(c, "return document.cookie;").await, "");
        // A reload keeps the tab signed in (sessionStorage).
        c.refresh().await.unwrap();
        wait(async || {
            displayed(c, "#console")
                .await
                .then_some(())
                .ok_or("not signed in after a reload".to_string())
        })
        .await;
        wait_text(c, "#status", &["leader"]).await;

        click(c, "#signout").await;
        wait(async || {
            displayed(c, "#signin")
                .await
                .then_some(())
                .ok_or("no sign-in form after sign-out".to_string())
        })
        .await;
        assert_eq!(stored_token(c).await, Value::Null);
        assert!(!displayed(c, "#console").await);
        c.refresh().await.unwrap();
        wait(async || {
            displayed(c, "#signin")
                .await
                .then_some(())
                .ok_or("signed in again after a reload".to_string())
        })
        .await;
        assert!(!displayed(c, "#console").await);
        assert_eq!(stored_token(c).await, Value::Null);
    });
}

/// The first offset of a write's answer (`offsets: [FIRST, LAST]`).
fn write_offset(cluster: &Cluster, key: &str, value: &str) -> u64 {
    let body = json!({ "value": value }).to_string();
    let (status, answer) = common::http(
        "PUT",
        &format!("{}/v1/vars/xss/{key}", cluster.leader.url),
        Some(&cluster.admin),
        Some(&body),
    );
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    v["offsets"][1].as_u64().unwrap()
}

fn the_live_log_shows_entries_written_after_the_page_loaded() {
    with_browser(async |cluster, c| {
        sign_in(c, &cluster.leader.url, &cluster.read).await;
        wait(async || {
            let s = js(
                c,
                "return document.querySelector('#log').dataset.stream || '';",
            )
            .await;
            (s == "live")
                .then_some(())
                .ok_or(format!("the log stream is {s}"))
        })
        .await;
        let first = format!("written-after-load-{}", uuid::Uuid::new_v4());
        cluster.set_var("note", &first);
        wait_text(c, "#log-rows", &[&first]).await;
        let row = text(c, "#log-rows tr:first-child").await.unwrap();
        assert!(
            row.contains("var.set.v1") && row.contains(&first),
            "newest first: {row}"
        );

        // Paused: an entry that arrives is held back, and shown on resume.
        click(c, "#log-pause").await;
        let held = format!("written-while-paused-{}", uuid::Uuid::new_v4());
        let offset = write_offset(cluster, "note", &held);
        wait_log_received(c, offset).await;
        let rows = text(c, "#log-rows").await.unwrap();
        assert!(
            !rows.contains(&held),
            "a paused log shows nothing new: {rows}"
        );
        wait_text(c, "#log-state", &["paused", "waiting"]).await;
        click(c, "#log-pause").await;
        wait_text(c, "#log-rows", &[&held]).await;

        // The kind filter: only entries whose kind starts with the prefix.
        type_into(c, "#log-controls input[name=kind]", "hook.").await;
        wait(async || {
            let kinds = js(
                c,
                "return [...document.querySelectorAll('#log-rows tr')].map(r => r.dataset.kind);",
            )
            .await;
            let kinds: Vec<String> = serde_json::from_value(kinds).unwrap();
            let rows = text(c, "#log-rows").await?;
            (kinds.iter().all(|k| k.starts_with("hook.")) && !rows.contains(&held))
                .then_some(())
                .ok_or(format!("filtered rows: {kinds:?}"))
        })
        .await;
        let third = format!("written-while-filtered-{}", uuid::Uuid::new_v4());
        let offset = write_offset(cluster, "note", &third);
        wait_log_received(c, offset).await;
        assert!(!text(c, "#log-rows").await.unwrap().contains(&third));
        type_into(c, "#log-controls input[name=kind]", "var.").await;
        wait_text(c, "#log-rows", &[&held, &third]).await;
    });
}

fn the_audit_runs_with_an_admin_token_and_shows_its_result() {
    with_browser(async |cluster, c| {
        sign_in(c, &cluster.leader.url, &cluster.read).await;
        // A token that is not one: refused, with the server's reason.
        type_into(c, "input[name=audit-token]", "cairn_not-a-token").await;
        click(c, "#audit-run").await;
        wait_text(
            c,
            "#audit-state",
            &["Audit refused", "unknown or revoked token"],
        )
        .await;

        type_into(c, "input[name=audit-token]", &cluster.admin).await;
        click(c, "#audit-run").await;
        let result = wait_text(c, "#audit-state", &["Verified", "replayed"]).await;
        let head = wait(async || {
            let facts = text(c, "#audit-result").await?;
            let mut lines = facts.lines();
            let mut head = None;
            while let Some(l) = lines.next() {
                if l.trim() == "head offset" {
                    head = lines.next().and_then(|v| v.trim().parse::<u64>().ok());
                }
            }
            head.map(|h| (h, facts.clone()))
                .ok_or(format!("no head offset in {facts:?} ({result})"))
        })
        .await;
        // The hash shown is the leader's entry at that offset.
        let entry = cluster.get(&format!(
            "{}/v1/log?from={}&limit=1",
            cluster.leader.url, head.0
        ));
        let hash = entry[0]["hash"].as_str().unwrap();
        assert!(head.1.contains(hash), "{} shows the hash {hash}", head.1);
        assert_eq!(
            js(
                c,
                "return document.querySelector('input[name=audit-token]').value;"
            )
            .await,
            ""
        );
        // The admin token went nowhere but that request.
        assert_eq!(stored_token(c).await, Value::String(cluster.read.clone()));
        assert_eq!(
            js(c, "return sessionStorage.length + localStorage.length;").await,
            1
        );
    });
}

// ---- the screenshot ----

/// The console of a leader with a mirror, after a minute of writes, as a PNG at `path`.
fn screenshot(path: &Path) {
    let cluster = Cluster::start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A bounded write load, so the plots show commits and the mirror's lag.
    let writer = {
        let stop = stop.clone();
        let url = cluster.leader.url.clone();
        let admin = cluster.admin.clone();
        std::thread::spawn(move || {
            for i in 0..3000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let body = json!({ "value": format!("sample {i}") }).to_string();
                let _ = common::http(
                    "PUT",
                    &format!("{url}/v1/vars/netmon/threshold"),
                    Some(&admin),
                    Some(&body),
                );
                std::thread::sleep(Duration::from_millis(20 + (i % 7) * 15));
            }
        })
    };
    runtime().block_on(async {
        let browser = Browser::start()
            .await
            .unwrap_or_else(|e| panic!("no browser: {e}"));
        let c = &browser.client;
        sign_in(c, &cluster.leader.url, &cluster.read).await;
        wait_text(c, "#daemons", &["running"]).await;
        // A minute of samples (the console polls every 2 s).
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let n = js(
                c,
                "const p = document.querySelector('#plot-commits polyline'); \
                           return p ? p.getAttribute('points').split(' ').length : 0;",
            )
            .await;
            if n.as_u64() >= Some(30) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the plots have {n} samples after 90 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let png = c.screenshot().await.expect("a screenshot");
        assert!(
            png.len() < 300_000,
            "the screenshot has {} bytes; keep it under 300 KB",
            png.len()
        );
        std::fs::write(path, &png).unwrap();
        println!("wrote {} ({} bytes)", path.display(), png.len());
        browser.close().await;
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}
