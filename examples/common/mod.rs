//! What the examples share: `--config PATH`, the `--metrics ADDR` endpoint, and ([`child`])
//! running the example's own binary as a child process.

// Each example uses part of this module.
#![allow(dead_code)]

pub mod child;

use std::net::SocketAddr;
use std::path::Path;

use procgroups::config::load_scopes_file;
use procgroups::{ConfigError, Node, ScopeConfig};
use prometheus_client::registry::Registry;

/// The configuration of the scope `id` in the registry file at `path` (TOML or YAML, see
/// `examples/procgroups.toml`). An example hosts the scopes it needs and no other, whatever
/// else the file defines; `Err` says what is wrong with the file, or that it lacks `id`.
pub fn scope_from_file(path: &Path, id: &str) -> Result<ScopeConfig, String> {
    let entries = load_scopes_file(path).map_err(|e| match e {
        ConfigError::File { .. } => e.to_string(), // names the file already
        e => format!("{}: {e}", path.display()),
    })?;
    entries
        .into_iter()
        .find(|entry| entry.id == id && entry.auto_start)
        .map(|entry| entry.config)
        .ok_or_else(|| {
            format!(
                "{} defines no scope {id} with auto_start on (an entry named \"{id}\", or \"{}\" \
                 under namespace \"{}\")",
                path.display(),
                id.split_once(':').map_or(id, |(_, name)| name),
                id.split_once(':').map_or("", |(ns, _)| ns),
            )
        })
}

/// Serves `GET /metrics` (the node's Prometheus metrics, OpenMetrics text) and `GET /health`
/// (one line per scope; status 200 when every scope is healthy, 503 otherwise) on `addr`,
/// from a thread of its own. Returns the bound address (`addr` may use port 0).
pub fn serve_metrics(addr: SocketAddr, node: &Node) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("the metrics server is not on an IP address"))?;
    let mut registry = Registry::default();
    node.register_metrics(&mut registry);
    let node = node.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, content_type, body) = match request.url() {
                    "/metrics" => {
                        let mut body = String::new();
                        match prometheus_client::encoding::text::encode(&mut body, &registry) {
                            Ok(()) => (
                                200,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                body,
                            ),
                            Err(e) => (500, "text/plain", format!("encoding failed: {e}\n")),
                        }
                    }
                    "/health" => {
                        let health = node.health();
                        let ok = health.iter().all(|h| h.is_healthy());
                        let body: String = health.iter().map(|h| format!("{h}\n")).collect();
                        (if ok { 200 } else { 503 }, "text/plain", body)
                    }
                    _ => (404, "text/plain", "try /metrics or /health\n".into()),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("a valid header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                if let Err(e) = request.respond(response) {
                    eprintln!("metrics: cannot answer a request: {e}");
                }
            }
        })?;
    Ok(bound)
}
