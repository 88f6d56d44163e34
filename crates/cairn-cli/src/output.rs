//! Human output of the JSON answers (the `--json` flag prints the answer itself). Every
//! formatter reads the same JSON value in local and remote mode, so both print the same.

use serde_json::Value;

pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) if o.len() == 1 && o.contains_key("hex") => {
            format!("hex:{}", o["hex"].as_str().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:w$}  ", c, w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn rows(v: &Value, cols: &[&str]) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|item| cols.iter().map(|c| s(&item[*c])).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// `[{...}]` as a table of the named fields.
pub fn list(v: &Value, header: &[&str], cols: &[&str]) {
    table(header, rows(v, cols));
}

/// A change: its id, kind, status, summary and tasks (with their notes).
pub fn change(v: &Value) {
    println!("change   {}", s(&v["id"]));
    println!("kind     {}", s(&v["kind"]));
    println!("summary  {}", s(&v["summary"]));
    println!(
        "status   {}{}",
        s(&v["status"]),
        if v["aborted"] == Value::Bool(true) {
            " (aborted)"
        } else {
            ""
        }
    );
    if let Some(tasks) = v["tasks"].as_array() {
        for t in tasks {
            println!("  {:8} {}", s(&t["status"]), s(&t["name"]));
            if let Some(log) = t["log"].as_array() {
                for l in log {
                    println!("           {}", s(l));
                }
            }
        }
    }
}

/// Key/value lines of an object's scalar fields, in the order given.
pub fn fields(v: &Value, keys: &[&str]) {
    let w = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    for k in keys {
        println!("{:w$}  {}", k, s(&v[*k]));
    }
}

/// `cairn status`: the node's fields; then its mirrors (a leader) or what its follower is
/// doing (a mirror).
pub fn status(v: &Value) {
    fields(
        v,
        &[
            "role",
            "workspace_id",
            "applied_offset",
            "epoch",
            "leader",
            "lag",
            "writer",
            "writer_reason",
        ],
    );
    if let Some(follow) = v.get("follow") {
        fields(
            follow,
            &[
                "state",
                "leader_head",
                "connects",
                "refused_frames",
                "message",
                "last_error",
            ],
        );
    }
    if let Some(mirrors) = v["mirrors"].as_array().filter(|m| !m.is_empty()) {
        println!();
        list(
            &Value::Array(mirrors.clone()),
            &["MIRROR", "APPLIED", "LAG_ENTRIES", "LAG_MS", "CONNECTED"],
            &[
                "name",
                "applied_offset",
                "lag_entries",
                "lag_ms",
                "connected",
            ],
        );
    }
}

/// One log entry as a human line: offset, kind, actor, event.
pub fn entry_line(e: &Value) -> String {
    format!(
        "{:>8}  {}  {}  {}",
        s(&e["offset"]),
        s(&e["kind"]),
        s(&e["meta"]["actor"]),
        e["event"]
    )
}

/// `pkg list`.
pub fn packages(v: &Value) {
    list(
        v,
        &["NAME", "VERSION", "STATUS"],
        &["name", "version", "status"],
    );
}

/// `feature list`.
pub fn features(v: &Value) {
    list(
        v,
        &["NAME", "OWNER", "STATE", "OBSERVED", "REVISION"],
        &["name", "owner", "state", "observed", "revision"],
    );
}

/// `daemon list`, and a note when this process does not supervise daemons (local mode).
pub fn daemons(v: &Value) {
    let rows: Vec<Value> = v["daemons"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut d| {
            d["target"] = Value::String(format!("{}:{}", s(&d["package"]), s(&d["name"])));
            d
        })
        .collect();
    list(
        &Value::Array(rows),
        &[
            "DAEMON", "DESIRED", "OBSERVED", "RESTARTS", "PID", "SINCE_MS",
        ],
        &[
            "target", "desired", "observed", "restarts", "pid", "since_ms",
        ],
    );
    if v["supervised"] != Value::Bool(true) {
        eprintln!(
            "note: this process does not run daemons (local mode or a mirror): pid and since \
             come from the leader; ask it with --server"
        );
    }
}

/// `var list`.
pub fn vars(v: &Value) {
    list(
        v,
        &["KEY", "VALUE", "REVISION", "KEPT_FROM"],
        &["key", "value", "revision", "kept_from"],
    );
}
