//! The Drive through the `cairn` binary and a real `cairn serve`: the same output in both
//! modes, path tricks and bad data over HTTP refused with the reason and nothing written, and
//! every read and write checked against the token and the drive's permissions.

mod common;

use common::*;
use serde_json::{json, Value};

/// A workspace with a type, a folder and an item with two data versions, and a read token
/// `ann` (in `ann.token`) and a mirror token `m` (in `m.token`).
fn setup() -> Ws {
    let ws = Ws::init();
    let v1 = ws.example("note-v1.json");
    ws.local(&["drive", "type", "set", "note", &v1, "--version", "1"])
        .ok();
    ws.local(&["drive", "add", "notes"]).ok();
    ws.local(&["drive", "add", "notes/first", "--type", "note"])
        .ok();
    ws.local(&["drive", "put", "notes/first", r#"{"text": "one"}"#])
        .ok();
    ws.local(&["drive", "put", "notes/first", r#"{"text": "two"}"#])
        .ok();
    ws.token("ann", "read");
    ws.token("m", "mirror");
    ws
}

#[test]
fn drive_reads_print_the_same_in_both_modes() {
    let ws = setup();
    let v2 = ws.example("note-v2.json");
    ws.local(&[
        "drive",
        "type",
        "set",
        "note",
        &v2,
        "--version",
        "2",
        "--migration",
        "fill-defaults",
    ])
    .ok();
    ws.local(&["drive", "perm", "set", "notes", "token:ann", "edit"])
        .ok();
    ws.local(&["drive", "add", "other"]).ok();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let reads = [
        v(&["drive", "ls"]),
        v(&["drive", "ls", "--json"]),
        v(&["drive", "ls", "--limit", "1"]),
        v(&["drive", "ls", "--limit", "1", "--after", "notes", "--json"]),
        v(&["drive", "ls", "notes"]),
        v(&["drive", "ls", "notes", "--json"]),
        v(&["drive", "show", "notes"]),
        v(&["drive", "show", "notes", "--json"]),
        v(&["drive", "get", "notes/first"]),
        v(&[
            "drive",
            "get",
            "notes/first",
            "--version",
            "1.0.0",
            "--json",
        ]),
        v(&["drive", "versions", "notes/first"]),
        v(&["drive", "versions", "notes/first", "--json"]),
        v(&["drive", "type", "list"]),
        v(&["drive", "type", "list", "--json"]),
        v(&["drive", "type", "show", "note"]),
        v(&["log", "show", "--kind", "drive.", "--json"]),
        // Refusals print the same message too.
        v(&["drive", "get", "notes/none"]),
        v(&["drive", "get", "notes/first", "--version", "9.0.0"]),
        v(&["drive", "show", "Notes"]),
        v(&["drive", "type", "show", "nosuch"]),
    ];
    let local: Vec<Out> = reads
        .iter()
        .map(|a| ws.local(&a.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    // One page, and where the next one starts.
    assert!(local[2].stdout.contains("notes "), "{local:?}");
    assert!(!local[2].stdout.contains("other"), "{local:?}");
    assert_eq!(local[2].stderr, "(more: cairn drive ls --after notes)\n");
    let page: Value = serde_json::from_str(&local[3].stdout).unwrap();
    assert_eq!(page["items"][0]["path"], "other");
    assert_eq!(page["next"], Value::Null);
    // What the migration wrote: every version got the new property's default.
    let got: Value = serde_json::from_str(&local[8].stdout).unwrap();
    assert_eq!(got, json!({"text": "two", "tags": []}));
    let old: Value = serde_json::from_str(&local[9].stdout).unwrap();
    assert_eq!(old["data"], json!({"text": "one", "tags": []}));
    assert_eq!(local[10].stdout, "1.0.0\n1.0.1 *\n");
    assert!(local[16].stderr.contains("does not exist"), "{local:?}");
    let server = ws.serve();
    for (args, here) in reads.iter().zip(&local) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let there = server.remote(&ws.admin_token(), &args);
        assert_eq!(
            (here.code, &here.stdout, &here.stderr),
            (there.code, &there.stdout, &there.stderr),
            "cairn {args:?} in local and remote mode"
        );
    }
    server.stop();
}

#[test]
fn path_tricks_and_bad_data_over_http_are_refused_naming_why_and_write_nothing() {
    let ws = setup();
    let server = ws.serve();
    let admin = read_token(&ws.admin_token());
    let digest = |server: &Server| {
        http(
            "GET",
            &format!("{}/v1/state/digest", server.url),
            Some(&admin),
            None,
        )
        .1
    };
    let before = digest(&server);
    let long = "a".repeat(65);
    let big = format!(r#"{{"data": {{"text": "{}"}}}}"#, "x".repeat(300 * 1024));
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        ("GET", "/v1/drive/items/notes%2Ffirst".into(), None, "%2F"),
        (
            "PUT",
            "/v1/drive/data/notes%2ffirst".into(),
            Some(r#"{"data": {}}"#.into()),
            "%2F",
        ),
        (
            "POST",
            "/v1/drive/items/notes/../x".into(),
            Some("{}".into()),
            "\"..\"",
        ),
        (
            "POST",
            "/v1/drive/items/notes/./x".into(),
            Some("{}".into()),
            "\".\"",
        ),
        (
            "POST",
            "/v1/drive/items/notes//x".into(),
            Some("{}".into()),
            "not valid",
        ),
        (
            "POST",
            "/v1/drive/items//x".into(),
            Some("{}".into()),
            "absolute",
        ),
        (
            "POST",
            "/v1/drive/items/notes/x/".into(),
            Some("{}".into()),
            "not valid",
        ),
        (
            "POST",
            "/v1/drive/items/Notes".into(),
            Some("{}".into()),
            "\"Notes\"",
        ),
        (
            "POST",
            "/v1/drive/items/a%20b".into(),
            Some("{}".into()),
            "\"a b\"",
        ),
        (
            "POST",
            format!("/v1/drive/items/{long}"),
            Some("{}".into()),
            "not valid",
        ),
        (
            "POST",
            "/v1/drive/items/notes/x%zz".into(),
            Some("{}".into()),
            "hex",
        ),
        (
            "POST",
            "/v1/drive/items/x".into(),
            Some(r#"{"type": "Bad Type"}"#.into()),
            "type name",
        ),
        (
            "POST",
            "/v1/drive/items/x".into(),
            Some(r#"{"kind": "note"}"#.into()),
            "unknown field",
        ),
        (
            "PUT",
            "/v1/drive/data/notes/first".into(),
            Some(r#"{"data": {"text": 42}}"#.into()),
            "does not match type note",
        ),
        (
            "PUT",
            "/v1/drive/data/notes/first".into(),
            Some(big),
            "DRIVE_DATA_BYTES_MAX",
        ),
        (
            "PUT",
            "/v1/drive/data/notes/first".into(),
            Some(r#"{"data": {"text": "z"}, "version": "1.0"}"#.into()),
            "1.0",
        ),
        (
            "PUT",
            "/v1/drive/data/notes/first".into(),
            Some(r#"{"data": {"text": "z"}, "version": "1.0.0"}"#.into()),
            "backwards",
        ),
        (
            "DELETE",
            "/v1/drive/data/notes/first".into(),
            None,
            "?version=",
        ),
        (
            "PUT",
            "/v1/drive/perms/notes".into(),
            Some(r#"{"who": "ann", "level": "edit"}"#.into()),
            "token:NAME",
        ),
        (
            "PUT",
            "/v1/drive/perms/notes".into(),
            Some(r#"{"who": "token:ann", "level": "write"}"#.into()),
            "inherit",
        ),
        (
            "PUT",
            "/v1/drive/types/Note".into(),
            Some(r#"{"version": 2, "schema": {}}"#.into()),
            "type name",
        ),
        (
            "PUT",
            "/v1/drive/types/note".into(),
            Some(r#"{"version": 2, "schema": {}, "migration": "nope"}"#.into()),
            "not registered",
        ),
        (
            "PUT",
            "/v1/drive/types/note".into(),
            Some(r#"{"version": 0, "schema": {}}"#.into()),
            "version",
        ),
        (
            "POST",
            "/v1/drive/move".into(),
            Some(r#"{"from": "notes", "to": "notes/first/notes"}"#.into()),
            "under itself",
        ),
    ];
    for (method, path, body, why) in &cases {
        let (status, text) = raw_http(&server.url, method, path, Some(&admin), body.as_deref());
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: a JSON error, got {status} {text}"));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            (400..500).contains(&status) && status != 401 && status != 403,
            "{method} {path}: {status} {text}"
        );
        assert!(
            message.contains(why),
            "{method} {path}: {message:?} should say {why:?}"
        );
    }
    assert_eq!(
        before,
        digest(&server),
        "a refused drive request wrote something"
    );
    // The same path tricks from the CLI are refused before anything is sent, with the
    // service's message.
    for bad in ["notes/../x", "/notes", "notes//x", "Notes", "notes/x/"] {
        let out = server
            .remote(&ws.admin_token(), &["drive", "add", bad])
            .expect(1);
        assert!(
            out.stderr.contains(&format!("drive path {bad:?}")),
            "{bad}: {}",
            out.stderr
        );
    }
    assert_eq!(before, digest(&server));
    server.stop();
}

#[test]
fn drive_requests_follow_the_token_and_the_drive_permissions() {
    let ws = setup();
    ws.local(&["drive", "add", "notes/private"]).ok();
    ws.local(&["drive", "put", "notes/private", r#"{"secret": 1}"#])
        .ok();
    ws.local(&["drive", "perm", "set", "notes/private", "role:read", "deny"])
        .ok();
    ws.local(&["drive", "add", "shared"]).ok();
    ws.local(&["drive", "perm", "set", "shared", "token:ann", "edit"])
        .ok();
    let server = ws.serve();
    let ann = ws.path("ann.token");
    let admin = read_token(&ws.admin_token());
    let mirror = read_token(&ws.path("m.token"));
    // A read token lists what it may read: not the denied item, and no permissions.
    let listed = server
        .remote(&ann, &["drive", "ls", "notes", "--json"])
        .json();
    let paths: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["notes/first"]);
    assert_eq!(listed["items"][0]["level"], "read");
    assert_eq!(listed["items"][0]["perms"], Value::Null);
    assert_eq!(listed["next"], Value::Null);
    let shown = server
        .remote(
            &ws.admin_token(),
            &["drive", "show", "notes/private", "--json"],
        )
        .json();
    assert_eq!(shown["perms"], json!({"role:read": "deny"}));
    // The denied item is answered as a missing one, on every read.
    for args in [
        vec!["drive", "get", "notes/private"],
        vec!["drive", "show", "notes/private"],
        vec!["drive", "versions", "notes/private"],
        vec!["drive", "ls", "notes/private"],
    ] {
        let hidden = server.remote(&ann, &args).expect(1);
        let missing_args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "notes/private" {
                    "notes/nothing"
                } else {
                    a
                }
            })
            .collect();
        let missing = server.remote(&ann, &missing_args).expect(1);
        assert_eq!(
            hidden.stderr.replace("private", "X"),
            missing.stderr.replace("nothing", "X"),
            "{args:?}"
        );
    }
    // A read token writes only where it was granted edit; elsewhere the kernel refuses it
    // (403 denied, naming the token and the level it needs).
    server.remote(&ann, &["drive", "add", "shared/by-ann"]).ok();
    server
        .remote(&ann, &["drive", "put", "shared/by-ann", r#"{"by": "ann"}"#])
        .ok();
    let (status, text) = http(
        "POST",
        &format!("{}/v1/drive/items/by-ann", server.url),
        Some(&read_token(&ann)),
        Some("{}"),
    );
    assert_eq!(status, 403, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "denied");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ann") && message.contains("edit"),
        "{message}"
    );
    // Types are for workspace admins; a mirror token may do nothing in the drive.
    let (status, text) = http(
        "PUT",
        &format!("{}/v1/drive/types/other", server.url),
        Some(&read_token(&ann)),
        Some(r#"{"version": 1, "schema": {}}"#),
    );
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("forbidden") && text.contains("needs admin"),
        "{text}"
    );
    for (method, path, body) in [
        ("GET", "/v1/drive/children", None),
        ("GET", "/v1/drive/data/notes/first", None),
        ("POST", "/v1/drive/items/m", Some("{}")),
    ] {
        let (status, text) = http(
            method,
            &format!("{}{path}", server.url),
            Some(&mirror),
            body,
        );
        assert_eq!(status, 403, "{method} {path} as a mirror token: {text}");
        assert!(text.contains("forbidden"), "{text}");
        let (status, _) = http(method, &format!("{}{path}", server.url), None, body);
        assert_eq!(status, 401, "{method} {path} without a token");
    }
    // The entries name who wrote them.
    let log = server
        .remote(
            &ws.admin_token(),
            &["log", "show", "--kind", "drive.", "--json"],
        )
        .ok();
    let by_ann: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["meta"]["actor"] == "token:ann")
        .collect();
    assert_eq!(by_ann.len(), 2, "{log}");
    // Everything the admin may see is in one listing; the admin token sees ann's item.
    let (status, text) = http(
        "GET",
        &format!("{}/v1/drive/children/shared", server.url),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("shared/by-ann"), "{text}");
    server.stop();
}
