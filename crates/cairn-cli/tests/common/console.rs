//! The console tests' fixture: a real `cairn serve` leader with sample data (installed
//! packages, a feature, a daemon, a finished connect, a connect undone by a failing hook, and
//! workspace values that carry HTML payloads) and a real `cairn mirror` following it, both on
//! 127.0.0.1 with ports read back. Included with `#[path]` by `tests/console*.rs`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{bin, http, poll, read_token, spawn_listening, Server, Ws};
use serde_json::Value;

/// A value that runs code if a page ever treats it as markup: the script sets a global and the
/// title, and so does the image's error handler (its `src` never loads).
pub const PAYLOAD: &str = "<script>window.cairnPwned = \"script\"; document.title = \
     \"pwned\";</script><img src=\"x\" onerror=\"window.cairnPwned = 'img'; document.title = \
     'pwned'\"> end of payload";

/// The value of the `long` var: longer than the console shows before cutting.
pub fn long_value() -> String {
    (0..100).map(|i| format!("chunk-{i:03} ")).collect()
}

/// A running `cairn mirror`; killed on drop.
pub struct Mirror {
    pub child: Child,
    pub url: String,
}

impl Mirror {
    /// Starts `cairn mirror` on `data`, provisioned from `backup`, under `name`, logging into
    /// `log`.
    pub fn start(
        data: &Path,
        leader: &str,
        token: &Path,
        backup: &Path,
        name: &str,
        log: &Path,
    ) -> Mirror {
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--data")
            .arg(data)
            .args(["mirror", "--leader", leader, "--leader-token"])
            .arg(token)
            .args(["--listen", "127.0.0.1:0", "--name", name, "--from-backup"])
            .arg(backup)
            .env("CAIRN_LOG", "info")
            .stderr(Stdio::from(log));
        let (child, url) = spawn_listening(&mut cmd, "mirror");
        Mirror { child, url }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A leader with sample data and a mirror that has caught up with it.
pub struct Cluster {
    pub ws: Ws,
    pub leader: Server,
    pub mirror: Mirror,
    /// A `read` token's secret.
    pub read: String,
    /// The `admin` token's secret.
    pub admin: String,
    /// A `mirror` token's secret (refused by the console: it may not read).
    pub mirror_token: String,
}

impl Cluster {
    /// Initializes the leader's workspace (packages router, netmon, flaky and xss; netmon
    /// connected to router; flaky's connect failed and undone), starts it, starts a mirror
    /// named `m` from a backup, sets xss's vars (one to [`PAYLOAD`], one to [`long_value`]),
    /// reports feature netmon observed `disabled` (drift) and routing `enabled`, and waits
    /// until the mirror has acknowledged the leader's head.
    pub fn start() -> Cluster {
        let ws = Ws::init();
        let read = ws.token("ops", "read");
        let mirror_token = ws.token("m", "mirror");
        // Its onload prints the payload: a hook output carrying markup.
        let payload = ws.file("payload.txt", PAYLOAD);
        let xss = ws.file(
            "xss.toml",
            &format!(
                "name = \"xss\"\nversion = \"0.1.0\"\n\n[hooks.onload]\nrun = \"cat {payload}\"\n\n\
                 [vars]\nnote = \"plain\"\nlong = \"short\"\n"
            ),
        );
        for manifest in ["router.toml", "netmon.toml", "flaky.toml"] {
            let path = ws.example(manifest);
            ws.local(&["pkg", "install", &path]).ok();
        }
        ws.local(&["pkg", "install", &xss]).ok();
        ws.local(&["iface", "connect", "netmon:net", "router:net"])
            .ok();
        // flaky's connect-plug hook exits 3: the change ends undone (exit 1 on the CLI).
        let undone = ws.local(&["iface", "connect", "flaky:net", "router:net"]);
        assert_ne!(undone.code, 0, "flaky's connect fails: {undone:#?}");
        let backup = ws.path("backup");
        ws.local(&["backup", backup.to_str().unwrap()]).ok();

        let leader = ws.serve();
        let mirror = Mirror::start(
            &ws.path("mirror"),
            &leader.url,
            &mirror_token,
            &backup,
            "m",
            &ws.path("mirror.log"),
        );
        let admin = read_token(&ws.admin_token());
        let cluster = Cluster {
            read: read_token(&read),
            mirror_token: read_token(&mirror_token),
            admin,
            ws,
            leader,
            mirror,
        };
        cluster.set_var("note", PAYLOAD);
        cluster.set_var("long", &long_value());
        // netmon's service side says it is off while it is wanted on: drift.
        cluster.report("netmon", "disabled");
        cluster.report("routing", "enabled");
        cluster.wait_mirror_caught_up();
        cluster
    }

    /// `PUT /v1/vars/xss/KEY` on the leader, with the admin token.
    pub fn set_var(&self, key: &str, value: &str) {
        let body = serde_json::json!({ "value": value }).to_string();
        let (status, answer) = http(
            "PUT",
            &format!("{}/v1/vars/xss/{key}", self.leader.url),
            Some(&self.admin),
            Some(&body),
        );
        assert_eq!(status, 200, "set var {key}: {answer}");
    }

    /// `PUT /v1/features/NAME/observed` on the leader, with the admin token.
    pub fn report(&self, feature: &str, state: &str) {
        let body = serde_json::json!({ "state": state }).to_string();
        let (status, answer) = http(
            "PUT",
            &format!("{}/v1/features/{feature}/observed", self.leader.url),
            Some(&self.admin),
            Some(&body),
        );
        assert_eq!(status, 200, "report {feature} {state}: {answer}");
    }

    /// `GET URL` with the read token, as JSON.
    pub fn get(&self, url: &str) -> Value {
        let (status, body) = http("GET", url, Some(&self.read), None);
        assert_eq!(status, 200, "GET {url}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The leader's `/v1/status`.
    pub fn leader_status(&self) -> Value {
        self.get(&format!("{}/v1/status", self.leader.url))
    }

    /// Waits (at most 60 s) until the leader's status shows mirror `m` connected with no lag.
    pub fn wait_mirror_caught_up(&self) -> Value {
        poll(Duration::from_secs(60), || {
            let s = self.leader_status();
            let m = s["mirrors"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["name"] == "m"))
                .cloned();
            match m {
                Some(m) if m["lag_entries"] == 0 && m["connected"] == true => Ok(m),
                _ => Err(format!("mirror m has not caught up: {s}")),
            }
        })
    }
}
