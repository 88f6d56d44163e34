//! The lifecycle workload of [`crate::lifecycle::KernelSink`] sent over HTTP to an in-process
//! `cairn_server::serve` on 127.0.0.1: what the server and its JSON cost per command, next to
//! the same commands submitted in-process.

use std::path::Path;

use cairn::kernel::model::Role;
use cairn::{Options, Workspace};
use cairn_store::Durability;

use crate::lifecycle::{sink_command, KernelSink};
use crate::Sink;

/// A running server over a workspace with the kernel sink's packages; each `write` is one
/// HTTP request (keep-alive connections, one per client thread) with a write token.
pub struct HttpSink {
    rt: tokio::runtime::Runtime,
    ws: Option<Workspace>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    client: HttpWriter,
}

/// A client sending the kernel sink's commands to a cairn server: each `write` is one HTTP
/// request (keep-alive connections, one per client thread) with the given bearer token.
pub struct HttpWriter {
    url: String,
    auth: String,
    agent: ureq::Agent,
}

impl HttpWriter {
    /// A client of the server at `url` (`http://host:port`) with the token `secret`.
    pub fn new(url: &str, secret: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            auth: format!("Bearer {secret}"),
            agent: ureq::AgentBuilder::new()
                .max_idle_connections(128)
                .max_idle_connections_per_host(128)
                .build(),
        }
    }
}

impl HttpSink {
    /// A fresh workspace in `dir`, its server listening on a free port.
    pub fn open(dir: &Path, durability: Durability) -> Self {
        drop(KernelSink::open(dir, durability));
        let rt = crate::runtime();
        let mut opts = Options::default();
        opts.store.durability = durability;
        let ws = rt
            .block_on(Workspace::open(dir, opts))
            .expect("open the bench workspace");
        let (_, secret) = rt
            .block_on(ws.token_create("bench", Role::Write, &Default::default()))
            .expect("create the bench token");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = cairn_server::Service::new(ws.clone());
        let served = rt.spawn(cairn_server::serve(svc, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            rt,
            ws: Some(ws),
            stop: Some(stop),
            served: Some(served),
            client: HttpWriter::new(&url, &secret),
        }
    }
}

impl Sink for HttpSink {
    fn write(&self, i: u64) {
        self.client.write(i);
    }

    fn groups(&self) -> Option<crate::GroupStats> {
        self.ws.as_ref().map(|ws| ws.store().stats().into())
    }
}

impl Sink for HttpWriter {
    fn write(&self, i: u64) {
        let r = match sink_command(i) {
            cairn_kernel::Command::VarSet {
                owner, key, value, ..
            } => self
                .agent
                .put(&format!("{}/v1/vars/{owner}/{key}", self.url))
                .set("authorization", &self.auth)
                .send_json(serde_json::json!({ "value": ascii(&value) })),
            cairn_kernel::Command::FeatureSet { name, state, .. } => self
                .agent
                .put(&format!("{}/v1/features/{name}/state", self.url))
                .set("authorization", &self.auth)
                .send_json(serde_json::json!({ "state": state.as_str() })),
            other => unreachable!("the sink sends var and feature sets only, not {other:?}"),
        };
        r.expect("bench request");
    }
}

/// The value as printable ASCII of the same length (JSON carries text).
fn ascii(value: &[u8]) -> String {
    value.iter().map(|b| (b'a' + b % 26) as char).collect()
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self.rt.block_on(served);
        }
        if let Some(ws) = self.ws.take() {
            self.rt.block_on(ws.close());
        }
    }
}
