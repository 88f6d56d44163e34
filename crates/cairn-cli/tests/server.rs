//! The HTTP API of a real `cairn serve`: the role matrix for every endpoint, bad input that
//! leaves the state digest unchanged, metrics, and SIGTERM during a burst of writes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_server::api::Request;
use cairn_server::drive::DriveRequest;
use common::*;
use serde_json::Value;

struct Tokens {
    read: String,
    write: String,
    admin: String,
    mirror: String,
    revoked: String,
}

fn setup() -> (Ws, Tokens) {
    let ws = Ws::init();
    let router = ws.example("router.toml");
    let netmon = ws.example("netmon.toml");
    ws.local(&["pkg", "install", &router]).ok();
    ws.local(&["pkg", "install", &netmon]).ok();
    // A local install waits for the package's onload too (this process runs it).
    assert_eq!(
        ws.local(&["pkg", "show", "netmon", "--json"]).json()["onload"],
        "succeeded"
    );
    let mk = |name: &str, role: &str| {
        ws.local(&["token", "create", name, "--role", role])
            .ok()
            .trim()
            .to_string()
    };
    let tokens = Tokens {
        read: mk("r", "read"),
        write: mk("w", "write"),
        admin: std::fs::read_to_string(ws.admin_token())
            .unwrap()
            .trim()
            .to_string(),
        mirror: mk("m", "mirror"),
        revoked: mk("gone", "admin"),
    };
    ws.local(&["token", "revoke", "gone"]).ok();
    (ws, tokens)
}

/// One request of every kind, touching entities that do not exist where a write would
/// otherwise change state, so every allowed call is answered without 401/403.
fn every_request() -> Vec<Request> {
    let s = |x: &str| x.to_string();
    vec![
        Request::Status,
        Request::PkgInstall {
            manifest: s("name = \"Bad Name\"\nversion = \"1\"\n"),
            wait: true,
        },
        Request::PkgUninstall {
            name: s("nosuch"),
            keep: vec![],
            strict: false,
            wait: true,
        },
        Request::PkgList,
        Request::PkgShow { name: s("netmon") },
        Request::VarSet {
            pkg: s("nosuch"),
            key: s("k"),
            value: s("v"),
            expect_revision: None,
        },
        Request::VarGet {
            pkg: s("netmon"),
            key: s("threshold"),
        },
        Request::VarDel {
            pkg: s("nosuch"),
            key: s("k"),
        },
        Request::VarList { pkg: s("netmon") },
        Request::QueuePut {
            pkg: s("nosuch"),
            queue: s("q"),
            items: vec![s("x")],
        },
        Request::QueueRead {
            pkg: s("netmon"),
            queue: s("events"),
            from: 1,
            limit: 10,
        },
        Request::QueueAck {
            pkg: s("nosuch"),
            queue: s("q"),
            upto: 1,
        },
        Request::VaultSet {
            pkg: s("nosuch"),
            vault: s("v"),
            secret: s("x"),
        },
        Request::VaultGet {
            pkg: s("netmon"),
            vault: s("api-token"),
        },
        Request::DaemonList,
        Request::DaemonSet {
            pkg: s("nosuch"),
            name: s("d"),
            state: s("enabled"),
        },
        Request::DaemonRestart {
            pkg: s("nosuch"),
            name: s("d"),
        },
        Request::DaemonLogs {
            pkg: s("netmon"),
            name: s("collector"),
        },
        Request::FeatureList,
        Request::FeatureSet {
            name: s("nosuch"),
            state: s("enabled"),
            expect_revision: None,
        },
        Request::FeatureReport {
            name: s("nosuch"),
            state: s("enabled"),
        },
        Request::IfaceConnect {
            plug: s("nosuch:p"),
            slot: s("router:net"),
            wait: true,
        },
        Request::IfaceDisconnect {
            plug: s("nosuch:p"),
            slot: s("router:net"),
            wait: true,
        },
        Request::IfaceList,
        Request::ChangeList,
        Request::ChangeShow {
            id: uuid::Uuid::nil().to_string(),
        },
        Request::ChangeAbort {
            id: uuid::Uuid::nil().to_string(),
        },
        Request::LogShow {
            from: 1,
            limit: 5,
            kind: None,
        },
        Request::StateDigest,
        Request::AuditVerify,
        Request::TokenCreate {
            name: s("Bad Name"),
            role: s("read"),
        },
        Request::TokenRevoke { name: s("nosuch") },
        Request::TokenList,
        Request::Drive(DriveRequest::Add {
            path: s("nosuch/x"),
            type_name: Some(s("Bad Type")),
        }),
        Request::Drive(DriveRequest::Show { path: s("nosuch") }),
        Request::Drive(DriveRequest::List {
            path: None,
            after: None,
            limit: None,
        }),
        Request::Drive(DriveRequest::List {
            path: Some(s("nosuch")),
            after: None,
            limit: None,
        }),
        Request::Drive(DriveRequest::Move {
            from: s("nosuch"),
            to: s("Bad"),
        }),
        Request::Drive(DriveRequest::Rm { path: s("Bad") }),
        Request::Drive(DriveRequest::Put {
            path: s("nosuch"),
            data: serde_json::Value::Null,
            version: Some(s("bad")),
        }),
        Request::Drive(DriveRequest::Get {
            path: s("nosuch"),
            version: None,
        }),
        Request::Drive(DriveRequest::RmVersion {
            path: s("nosuch"),
            version: s("bad"),
        }),
        Request::Drive(DriveRequest::Versions { path: s("nosuch") }),
        Request::Drive(DriveRequest::PermSet {
            path: s("nosuch"),
            who: s("nobody"),
            level: s("edit"),
        }),
        Request::Drive(DriveRequest::TypeSet {
            name: s("Bad"),
            version: 1,
            schema: serde_json::json!({}),
            migration: None,
        }),
        Request::Drive(DriveRequest::TypeList),
        Request::Drive(DriveRequest::TypeShow { name: s("nosuch") }),
    ]
}

/// The status of a call (the body is not read: `/v1/log/tail` never ends).
fn call(url: &str, token: Option<&str>, method: &str, path: &str, body: Option<String>) -> u16 {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut req = agent.request(method, &format!("{url}{path}"));
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    let resp = match body {
        Some(b) => req.set("content-type", "application/json").send_string(&b),
        None => req.call(),
    };
    match resp {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[test]
fn every_endpoint_allows_and_denies_each_role_as_documented() {
    let (ws, t) = setup();
    let server = ws.serve();
    let url = server.url.clone();
    // The server starts netmon's collector and records that it runs: before the snapshot.
    wait_daemon_running(&url, &t.read, "netmon", "collector");
    let digest_before = http(
        "GET",
        &format!("{url}/v1/state/digest"),
        Some(&t.read),
        None,
    )
    .1;

    // The documented table (docs/http-api.md), written out here rather than taken from the
    // code under test: (method, path with query, body, least role). Every write touches an
    // entity that does not exist or carries a bad argument, so an allowed call changes nothing.
    let nil = uuid::Uuid::nil();
    let endpoints: Vec<(&str, String, Option<&str>, &str)> = vec![
        ("GET", "/metrics".into(), None, "read"),
        ("GET", "/v1/status".into(), None, "read"),
        (
            "POST",
            "/v1/packages".into(),
            Some(r#"{"manifest": "name = \"Bad Name\""}"#),
            "write",
        ),
        ("GET", "/v1/packages".into(), None, "read"),
        ("GET", "/v1/packages/netmon".into(), None, "read"),
        (
            "POST",
            "/v1/packages/nosuch/uninstall".into(),
            Some("{}"),
            "write",
        ),
        ("GET", "/v1/vars/netmon".into(), None, "read"),
        ("GET", "/v1/vars/netmon/threshold".into(), None, "read"),
        (
            "PUT",
            "/v1/vars/nosuch/k".into(),
            Some(r#"{"value": "v"}"#),
            "write",
        ),
        ("DELETE", "/v1/vars/nosuch/k".into(), None, "write"),
        (
            "GET",
            "/v1/queues/netmon/events/items?from=1".into(),
            None,
            "read",
        ),
        (
            "POST",
            "/v1/queues/nosuch/q/items".into(),
            Some(r#"{"items": ["x"]}"#),
            "write",
        ),
        (
            "POST",
            "/v1/queues/nosuch/q/ack".into(),
            Some(r#"{"upto": 1}"#),
            "write",
        ),
        (
            "PUT",
            "/v1/vaults/nosuch/v".into(),
            Some(r#"{"secret": "x"}"#),
            "write",
        ),
        ("GET", "/v1/vaults/netmon/api-token".into(), None, "admin"),
        ("GET", "/v1/daemons".into(), None, "read"),
        (
            "PUT",
            "/v1/daemons/nosuch/d/state".into(),
            Some(r#"{"state": "enabled"}"#),
            "write",
        ),
        (
            "POST",
            "/v1/daemons/nosuch/d/restart".into(),
            Some("{}"),
            "write",
        ),
        (
            "GET",
            "/v1/daemons/netmon/collector/logs".into(),
            None,
            "read",
        ),
        ("GET", "/v1/features".into(), None, "read"),
        (
            "PUT",
            "/v1/features/nosuch/state".into(),
            Some(r#"{"state": "enabled"}"#),
            "write",
        ),
        (
            "PUT",
            "/v1/features/nosuch/observed".into(),
            Some(r#"{"state": "enabled"}"#),
            "write",
        ),
        ("GET", "/v1/connections".into(), None, "read"),
        (
            "POST",
            "/v1/connections".into(),
            Some(r#"{"plug": "nosuch:p", "slot": "router:net"}"#),
            "write",
        ),
        (
            "POST",
            "/v1/connections/disconnect".into(),
            Some(r#"{"plug": "nosuch:p", "slot": "router:net"}"#),
            "write",
        ),
        ("GET", "/v1/changes".into(), None, "read"),
        ("GET", format!("/v1/changes/{nil}"), None, "read"),
        (
            "POST",
            format!("/v1/changes/{nil}/abort"),
            Some("{}"),
            "write",
        ),
        (
            "GET",
            "/v1/log?from=1&limit=5&kind=package.".into(),
            None,
            "read",
        ),
        ("GET", "/v1/log/tail?from=1".into(), None, "read"),
        ("GET", "/v1/state/digest".into(), None, "read"),
        ("GET", "/v1/audit/verify".into(), None, "read"),
        ("POST", "/v1/backup".into(), Some("{}"), "admin"),
        (
            "POST",
            "/v1/replay".into(),
            Some(r#"{"until": 1}"#),
            "admin",
        ),
        ("POST", "/v1/rebuild".into(), Some("{}"), "admin"),
        ("GET", "/v1/tokens".into(), None, "admin"),
        (
            "POST",
            "/v1/tokens".into(),
            Some(r#"{"name": "Bad Name", "role": "read"}"#),
            "admin",
        ),
        ("DELETE", "/v1/tokens/nosuch".into(), None, "admin"),
        // Drive commands pass with any token but a mirror's: the drive's own permissions
        // decide what a token may do there (`docs/drive.md`).
        (
            "POST",
            "/v1/drive/items/nosuch/x".into(),
            Some(r#"{"type": "Bad Type"}"#),
            "read",
        ),
        ("GET", "/v1/drive/items/nosuch".into(), None, "read"),
        ("DELETE", "/v1/drive/items/Bad".into(), None, "read"),
        ("GET", "/v1/drive/children".into(), None, "read"),
        ("GET", "/v1/drive/children/nosuch".into(), None, "read"),
        (
            "POST",
            "/v1/drive/move".into(),
            Some(r#"{"from": "nosuch", "to": "Bad"}"#),
            "read",
        ),
        (
            "PUT",
            "/v1/drive/data/nosuch".into(),
            Some(r#"{"data": null, "version": "bad"}"#),
            "read",
        ),
        ("GET", "/v1/drive/data/nosuch".into(), None, "read"),
        (
            "DELETE",
            "/v1/drive/data/nosuch?version=bad".into(),
            None,
            "read",
        ),
        ("GET", "/v1/drive/versions/nosuch".into(), None, "read"),
        (
            "PUT",
            "/v1/drive/perms/nosuch".into(),
            Some(r#"{"who": "nobody", "level": "edit"}"#),
            "read",
        ),
        (
            "PUT",
            "/v1/drive/types/Bad".into(),
            Some(r#"{"version": 1, "schema": {}}"#),
            "admin",
        ),
        ("GET", "/v1/drive/types".into(), None, "read"),
        ("GET", "/v1/drive/types/nosuch".into(), None, "read"),
    ];
    // Every request the CLI can send is in the table.
    for r in every_request() {
        let h = r.http();
        assert!(
            endpoints.iter().any(|(m, p, _, _)| *m == h.method
                && p.split('?').next() == Some(h.path.as_str())
                || (*m == h.method
                    && h.path.starts_with("/v1/changes/")
                    && p.starts_with("/v1/changes/"))),
            "{} {} is not in the documented table",
            h.method,
            h.path
        );
    }
    // Roles as documented: read ⊂ write ⊂ admin; mirror is for the replication stream only.
    let allowed = |role: &str, needed: &str| {
        matches!(
            (role, needed),
            ("admin", _) | ("write", "read" | "write") | ("read", "read")
        )
    };
    for (method, path, body, needed) in &endpoints {
        let body = body.map(str::to_string);
        let status = call(&url, None, method, path, body.clone());
        assert_eq!(status, 401, "{method} {path} without a token");
        let status = call(&url, Some(&t.revoked), method, path, body.clone());
        assert_eq!(status, 401, "{method} {path} with a revoked token");
        let status = call(&url, Some("cairn_not-a-token"), method, path, body.clone());
        assert_eq!(status, 401, "{method} {path} with an unknown token");
        for (role, token) in [
            ("read", &t.read),
            ("write", &t.write),
            ("admin", &t.admin),
            ("mirror", &t.mirror),
        ] {
            let status = call(&url, Some(token), method, path, body.clone());
            if allowed(role, needed) {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} as {role} (needs {needed}): {status}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role} (needs {needed})");
            }
        }
    }
    // The health check needs no token; an unknown endpoint is a JSON 404.
    assert_eq!(call(&url, None, "GET", "/v1/health", None), 200);
    // The console's page and files need no token (the table's role "none"): every caller gets
    // them, and what the page shows comes from the endpoints above, with the operator's token.
    for path in [
        "/ui",
        "/ui/",
        "/ui/index.html",
        "/ui/console.js",
        "/ui/console.css",
    ] {
        for token in [
            None,
            Some(&t.revoked),
            Some(&t.read),
            Some(&t.mirror),
            Some(&t.admin),
        ] {
            let status = call(&url, token.map(String::as_str), "GET", path, None);
            assert_eq!(status, 200, "GET {path} with {token:?}");
        }
    }
    let (status, body) = http("GET", &format!("{url}/v1/nope"), Some(&t.read), None);
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    // Every allowed write above touched a missing entity: nothing changed, except the
    // admin's token create (refused: bad name), so the digest is the same.
    let digest_after = http(
        "GET",
        &format!("{url}/v1/state/digest"),
        Some(&t.read),
        None,
    )
    .1;
    assert_eq!(digest_before, digest_after);
    assert!(server.stop().success());
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let (ws, t) = setup();
    let server = ws.serve();
    let url = server.url.clone();
    // The server starts netmon's collector and records that it runs: before the snapshot.
    wait_daemon_running(&url, &t.read, "netmon", "collector");
    let digest = || {
        http(
            "GET",
            &format!("{url}/v1/state/digest"),
            Some(&t.read),
            None,
        )
        .1
    };
    let before = digest();

    let check = |method: &str, path: &str, body: &str, status: u16, code: &str, says: &str| {
        let (got, text) = http(method, &format!("{url}{path}"), Some(&t.admin), Some(body));
        assert_eq!(got, status, "{method} {path} {body:.80}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(v["error"]["code"], code, "{text}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(says),
            "{method} {path}: {msg:?} should mention {says:?}"
        );
    };
    // Malformed JSON, wrong shapes, unknown fields.
    check(
        "POST",
        "/v1/packages",
        "{not json",
        400,
        "bad_request",
        "not the expected JSON",
    );
    check(
        "POST",
        "/v1/packages",
        "{\"manifest\": 3}",
        400,
        "bad_request",
        "invalid type",
    );
    check(
        "PUT",
        "/v1/vars/netmon/threshold",
        "{\"value\": \"1\", \"colour\": \"red\"}",
        400,
        "bad_request",
        "unknown field",
    );
    // Malformed TOML and bad manifests name the field.
    check(
        "POST",
        "/v1/packages",
        "{\"manifest\": \"name = [\"}",
        400,
        "bad_manifest",
        "",
    );
    check(
        "POST",
        "/v1/packages",
        &serde_json::json!({"manifest": "name = \"ok\"\nversion = \"1\"\nbogus = 1\n"}).to_string(),
        400,
        "bad_manifest",
        "bogus",
    );
    // A feature another package owns.
    check(
        "POST",
        "/v1/packages",
        &serde_json::json!({"manifest": "name = \"thief\"\nversion = \"1\"\n[[features]]\nname = \"netmon\"\nstate = \"enabled\"\n"}).to_string(),
        409,
        "invalid_state",
        "already owned by package \"netmon\"",
    );
    // Oversized body.
    let huge = format!(
        "{{\"value\": \"{}\"}}",
        "x".repeat(cairn_server::REQUEST_BODY_BYTES_MAX)
    );
    check(
        "PUT",
        "/v1/vars/netmon/threshold",
        &huge,
        413,
        "too_large",
        "over the limit",
    );
    // A value over the variable limit, inside the body limit.
    let big =
        serde_json::json!({"value": "y".repeat(cairn::kernel::command::VAR_VALUE_BYTES_MAX + 1)});
    check(
        "PUT",
        "/v1/vars/netmon/threshold",
        &big.to_string(),
        400,
        "invalid",
        "",
    );
    // Invalid names, states, keep values, ends, ids, roles.
    check(
        "PUT",
        "/v1/vars/netmon/bad%20key",
        "{\"value\": \"1\"}",
        400,
        "invalid",
        "bad key",
    );
    check(
        "PUT",
        "/v1/features/netmon/state",
        "{\"state\": \"on\"}",
        400,
        "invalid",
        "unknown feature state",
    );
    check(
        "PUT",
        "/v1/daemons/netmon/collector/state",
        "{\"state\": \"running\"}",
        400,
        "invalid",
        "unknown daemon state \"running\"",
    );
    check(
        "POST",
        "/v1/daemons/netmon/nosuch/restart",
        "{}",
        409,
        "invalid_state",
        "is not wanted running",
    );
    check(
        "GET",
        "/v1/daemons/netmon/nosuch/logs",
        "",
        404,
        "not_found",
        "daemon \"netmon\":\"nosuch\" does not exist",
    );
    check(
        "POST",
        "/v1/packages/netmon/uninstall",
        "{\"keep\": [\"vars\", \"bogus\"]}",
        400,
        "invalid",
        "unknown keep value \"bogus\"",
    );
    check(
        "POST",
        "/v1/connections",
        "{\"plug\": \"netmon\", \"slot\": \"router:net\"}",
        400,
        "invalid",
        "PKG:NAME",
    );
    check(
        "POST",
        "/v1/changes/not-a-uuid/abort",
        "{}",
        400,
        "invalid",
        "not a uuid",
    );
    check(
        "POST",
        "/v1/tokens",
        "{\"name\": \"x\", \"role\": \"root\"}",
        400,
        "invalid",
        "unknown role",
    );
    check(
        "POST",
        "/v1/tokens",
        "{\"name\": \"../x\", \"role\": \"read\"}",
        400,
        "invalid",
        "not a valid name",
    );
    check("GET", "/v1/log?from=abc", "", 400, "bad_request", "from");
    check(
        "POST",
        "/v1/queues/netmon/events/ack",
        "{\"upto\": -1}",
        400,
        "bad_request",
        "",
    );
    assert_eq!(digest(), before, "nothing was written by any bad request");

    // The same through the CLI: a malformed manifest file, exit 1, digest unchanged.
    let bad = ws.file("bad.toml", "name = \"x\"\nversion = 1\n");
    let out = server
        .remote(&ws.admin_token(), &["pkg", "install", &bad])
        .expect(1);
    assert!(out.stderr.contains("version"), "{}", out.stderr);
    let out = server
        .remote(&ws.admin_token(), &["queue", "put", "netmon", "x"])
        .expect(2);
    assert!(out.stderr.contains("PKG:NAME"), "{}", out.stderr);
    assert_eq!(digest(), before);
    assert!(server.stop().success());
}

#[test]
fn metrics_report_commits_latency_rejections_and_hooks() {
    let (ws, t) = setup();
    let server = ws.serve();
    let url = server.url.clone();
    // Netmon's collector starts with the server (its record is then one commit, not a command).
    wait_daemon_running(&url, &t.read, "netmon", "collector");
    let put = |v: &str| {
        http(
            "PUT",
            &format!("{url}/v1/vars/netmon/threshold"),
            Some(&t.write),
            Some(&format!("{{\"value\": \"{v}\"}}")),
        )
        .0
    };
    assert_eq!(put("1"), 200);
    assert_eq!(put("2"), 200);
    let (s, _) = http(
        "PUT",
        &format!("{url}/v1/features/nosuch/state"),
        Some(&t.write),
        Some("{\"state\": \"enabled\"}"),
    );
    assert_eq!(s, 404);
    let (s, _) = http(
        "POST",
        &format!("{url}/v1/connections"),
        Some(&t.write),
        Some("{\"plug\": \"netmon:net\", \"slot\": \"router:net\"}"),
    );
    assert_eq!(s, 200);
    let (s, text) = http("GET", &format!("{url}/metrics"), Some(&t.read), None);
    assert_eq!(s, 200);
    let metric = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let applied: u64 = ws_applied(&url, &t.read);
    assert_eq!(metric("cairn_applied_offset ") as u64, applied);
    assert!(metric("cairn_commit_groups_total ") >= 3.0);
    assert!(metric("cairn_committed_entries_total ") >= 3.0);
    assert_eq!(metric("cairn_command_duration_seconds_count "), 4.0);
    assert_eq!(
        metric("cairn_command_duration_seconds_bucket{le=\"+Inf\"} "),
        4.0
    );
    assert_eq!(metric("cairn_rejections_total{reason=\"not_found\"} "), 1.0);
    // The connect ran router's connect-slot-net and netmon's connect-plug-net hooks.
    assert_eq!(metric("cairn_hook_runs_total{outcome=\"succeeded\"} "), 2.0);
    // Daemons: the collector started once and runs.
    assert_eq!(metric("cairn_daemon_starts_total "), 1.0);
    assert_eq!(metric("cairn_daemon_exits_total "), 0.0);
    assert_eq!(metric("cairn_daemon_restarts_total "), 0.0);
    assert_eq!(metric("cairn_daemons_failed "), 0.0);

    // A daemon that always fails is restarted by its policy until the crash-loop limit marks
    // it failed; the counters say so.
    let crashy = serde_json::json!({"manifest": "name = \"crashy\"\nversion = \"1\"\n\
        [[daemons]]\nname = \"d\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 3\"]\n\
        restart = \"on-failure\"\n"});
    let (s, body) = http(
        "POST",
        &format!("{url}/v1/packages"),
        Some(&t.write),
        Some(&crashy.to_string()),
    );
    assert_eq!(s, 200, "{body}");
    let failed = poll(Duration::from_secs(60), || {
        let v = common::metric(&server, &t.read, "cairn_daemons_failed");
        (v == "1")
            .then_some(v)
            .ok_or_else(|| "crashy:d is not failed yet".to_string())
    });
    assert_eq!(failed, "1");
    let n = |name: &str| -> u64 { common::metric(&server, &t.read, name).parse().unwrap() };
    let limit = cairn::supervise::DAEMON_CRASH_LOOP_MAX as u64;
    assert_eq!(n("cairn_daemon_starts_total"), 1 + limit);
    assert_eq!(n("cairn_daemon_exits_total"), limit);
    assert_eq!(n("cairn_daemon_restarts_total"), limit - 1);
    assert!(server.stop().success());
}

fn ws_applied(url: &str, token: &str) -> u64 {
    let (_, body) = http("GET", &format!("{url}/v1/status"), Some(token), None);
    serde_json::from_str::<Value>(&body).unwrap()["applied_offset"]
        .as_u64()
        .unwrap()
}

#[test]
fn sigterm_during_a_burst_of_writes_loses_no_acknowledged_write() {
    let (ws, t) = setup();
    let server = ws.serve();
    let url = server.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, token, stop, acked) =
                (url.clone(), t.write.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                for i in 1u64.. {
                    if stop.load(Ordering::Relaxed) || i > 100_000 {
                        return;
                    }
                    let r = agent
                        .put(&format!("{url}/v1/vars/netmon/w{w}"))
                        .set("authorization", &format!("Bearer {token}"))
                        .send_string(&format!("{{\"value\": \"{i}\"}}"));
                    match r {
                        Ok(_) => acked.lock().unwrap().push((w, i)),
                        // The server is going away: refused or cut connections.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Let the burst run, then SIGTERM mid-burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writers never got 200 writes acknowledged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = server.stop();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    // After restart, every writer's variable holds at least its last acknowledged value.
    let vars = ws.local(&["var", "list", "netmon", "--json"]).json();
    for w in 0..4 {
        let Some(last) = acked.iter().filter(|(x, _)| *x == w).map(|(_, i)| *i).max() else {
            continue;
        };
        let stored: u64 = vars
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["key"] == format!("w{w}"))
            .unwrap_or_else(|| panic!("w{w} is missing after restart"))["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            stored >= last,
            "writer {w}: acknowledged {last}, stored {stored}"
        );
    }
    ws.local(&["audit", "verify"]).ok();
}

#[test]
fn sigterm_answers_requests_waiting_for_a_change_and_the_change_resumes_later() {
    let (ws, t) = setup();
    // A plug whose connect hook outlives the server: the waiting request must not hold the
    // shutdown (Server::stop gives up after 30 s; the hook sleeps 120 s).
    let marker = ws.path("hook-runs");
    let slow = ws.file(
        "slow.toml",
        &format!(
            "name = \"slow\"\nversion = \"1\"\n[hooks.connect-plug-net]\n\
             run = \"echo run >> {}; sleep 120\"\n\
             [[plugs]]\nname = \"net\"\ninterface = \"network\"\n",
            marker.display()
        ),
    );
    ws.local(&["pkg", "install", &slow]).ok();
    let server = ws.serve();
    let url = server.url.clone();
    let token = t.write.clone();
    let waiter = std::thread::spawn(move || {
        http(
            "POST",
            &format!("{url}/v1/connections"),
            Some(&token),
            Some("{\"plug\": \"slow:net\", \"slot\": \"router:net\"}"),
        )
    });
    // Wait until the hook runs (recorded as started, and its first command done: the entry
    // is written before the process starts, so a SIGTERM right after it could come before the
    // hook wrote anything), then SIGTERM.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, log) = http(
            "GET",
            &format!("{}/v1/log?kind=hook.started", server.url),
            Some(&t.read),
            None,
        );
        let ran = std::fs::read_to_string(&marker).is_ok_and(|m| m == "run\n");
        if log.contains("connect-plug-net") && ran {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hook never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = server.stop();
    assert!(status.success(), "{status}");
    let (code, body) = waiter.join().unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("continues when the workspace is next opened"),
        "{body}"
    );
    // The change was recorded and is still in progress; reading it locally does not start
    // its hook again (reads open the workspace without the change engine).
    let changes = ws.local(&["change", "list", "--json"]).json();
    let last = changes.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "connect");
    assert_eq!(last["status"], "doing");
    ws.local(&["pkg", "list"]).ok();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\n");
    // Aborting it (which drives the change) undoes it.
    let aborted = ws
        .local(&["change", "abort", last["id"].as_str().unwrap(), "--json"])
        .json();
    assert_eq!(aborted["status"], "undone", "{aborted}");
}

#[test]
fn a_write_retried_with_the_same_idempotency_key_is_committed_once() {
    let (ws, t) = setup();
    let server = ws.serve();
    let put = |key: &str, value: &str| -> Value {
        let agent = ureq::AgentBuilder::new().build();
        let r = agent
            .put(&format!("{}/v1/vars/netmon/threshold", server.url))
            .set("authorization", &format!("Bearer {}", t.write))
            .set("idempotency-key", key)
            .send_string(&format!("{{\"value\": \"{value}\"}}"))
            .unwrap();
        r.into_json().unwrap()
    };
    let first = put("retry-1", "7");
    assert_eq!(first["replayed"], false);
    let again = put("retry-1", "8");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["offsets"], first["offsets"]);
    let (_, v) = http(
        "GET",
        &format!("{}/v1/vars/netmon/threshold", server.url),
        Some(&t.read),
        None,
    );
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["value"], "7", "the retry wrote nothing");
    assert_eq!(put("retry-2", "9")["replayed"], false);
    // The same key on a different command is refused, not taken for a retry.
    let reused = ureq::AgentBuilder::new()
        .build()
        .post(&format!("{}/v1/connections", server.url))
        .set("authorization", &format!("Bearer {}", t.write))
        .set("idempotency-key", "retry-1")
        .send_string(r#"{"plug": "netmon:net", "slot": "router:net"}"#);
    match reused {
        Err(ureq::Error::Status(400, r)) => {
            let body = r.into_string().unwrap();
            assert!(
                body.contains("already used by a different command"),
                "{body}"
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // Another token's identical key is its own.
    let (status, body) = {
        let r = ureq::AgentBuilder::new()
            .build()
            .put(&format!("{}/v1/vars/netmon/threshold", server.url))
            .set("authorization", &format!("Bearer {}", t.admin))
            .set("idempotency-key", "retry-1")
            .send_string(r#"{"value": "10"}"#)
            .unwrap();
        (r.status(), r.into_string().unwrap())
    };
    assert_eq!(status, 200);
    assert!(body.contains("\"replayed\":false"), "{body}");
    assert!(server.stop().success());
}

#[test]
fn vault_secrets_stay_out_of_the_server_log() {
    let (ws, t) = setup();
    let log = ws.path("server.log");
    let server = Server::start_with(
        &ws.data,
        "debug",
        std::fs::File::create(&log).unwrap().into(),
    );
    // A failing set (no such package: logged at info) and a successful one (debug).
    for (pkg, status) in [("nosuch", 404), ("netmon", 200)] {
        let (got, body) = http(
            "PUT",
            &format!("{}/v1/vaults/{pkg}/api-token", server.url),
            Some(&t.write),
            Some(r#"{"secret": "hunter2-do-not-log"}"#),
        );
        assert_eq!(got, status, "{body}");
    }
    assert!(server.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("VaultSet"),
        "the requests were logged: {text}"
    );
    assert!(
        !text.contains("hunter2"),
        "a secret reached the log:\n{text}"
    );
    // And from stdin through the CLI (an argument would be visible in the process list).
    let out = run_with_stdin(
        &[
            "--data",
            ws.data.to_str().unwrap(),
            "vault",
            "set",
            "netmon",
            "api-token",
        ],
        "from-stdin\n",
    );
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        ws.local(&["vault", "get", "netmon", "api-token"]).ok(),
        "from-stdin\n"
    );
}
