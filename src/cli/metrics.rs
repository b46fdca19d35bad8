//! The optional Prometheus endpoint of `runtime start` (`metrics.prometheus` in the
//! config; off by default).
//!
//! A [`tiny_http`] server on the configured address answers `GET /metrics` with the
//! runtime's statistics in the Prometheus text format (version 0.0.4), read from the
//! runtime's counters at each scrape ([`chimaera_core::stats`]); any other path is a
//! 404. One thread serves it; dropping the [`Exporter`] unblocks and joins it.
//!
//! Series (labels `pool` = pool name, `method` = manifest method name, `worker`):
//!
//! | series | type | what |
//! |---|---|---|
//! | `chimaera_tasks_completed_total` | counter | task replicas completed |
//! | `chimaera_tasks_in_flight` | gauge | task replicas in flight |
//! | `chimaera_periodic_tasks` | gauge | periodic task replicas alive |
//! | `chimaera_clients` | gauge | client processes attached |
//! | `chimaera_worker_tasks_run_total{worker}` | counter | tasks each worker ran |
//! | `chimaera_worker_queued{worker}` | gauge | work waiting for a worker that no lane counts: its inbox (idle low-latency lanes' tasks from other threads) and in-process calls posted to it, not routed yet |
//! | `chimaera_pool_queued{pool}` | gauge | tasks queued on a pool's lanes |
//! | `chimaera_method_completed_total{pool,method}` | counter | runs that succeeded |
//! | `chimaera_method_failed_total{pool,method}` | counter | runs that failed |
//! | `chimaera_method_in_flight{pool,method}` | gauge | runs started, not done |
//! | `chimaera_method_latency_seconds{pool,method,quantile}` | summary | run latency: quantiles 0.5, 0.9, 0.99, with `_sum` and `_count` |
//!
//! Pool names come from clients: label values are escaped as the format requires
//! (`\\`, `\"`, `\n`), so no name can forge a series. The endpoint has no
//! authentication: bind it to a loopback address (`runtime start` warns otherwise) and
//! let a local Prometheus agent scrape it.
use chimaera_core::RuntimeHandle;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The running endpoint; dropping it stops it.
pub(super) struct Exporter {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Serves `runtime`'s statistics at `http://address/metrics`.
    pub(super) fn start(
        address: SocketAddr,
        runtime: RuntimeHandle,
    ) -> Result<Exporter, Box<dyn std::error::Error + Send + Sync>> {
        let server = Arc::new(tiny_http::Server::http(address)?);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("chimaera-metrics".to_owned())
            .spawn(move || {
                // `recv` fails once `unblock` was called: the exporter is being dropped.
                while let Ok(request) = serving.recv() {
                    let response = if request.url() == "/metrics"
                        && *request.method() == tiny_http::Method::Get
                    {
                        let content_type = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4; charset=utf-8"[..],
                        );
                        let response = tiny_http::Response::from_string(render(&runtime));
                        match content_type {
                            Ok(header) => response.with_header(header),
                            Err(()) => response,
                        }
                    } else {
                        tiny_http::Response::from_string("only GET /metrics is served here\n")
                            .with_status_code(404)
                    };
                    if let Err(err) = request.respond(response) {
                        tracing::debug!("a metrics scrape went away: {err}");
                    }
                }
            })?;
        Ok(Exporter {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// One metric family: its help and type lines, then its samples.
fn section(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<String>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for sample in samples {
        let _ = writeln!(out, "{sample}");
    }
}

/// The runtime's statistics in the Prometheus text format.
pub(super) fn render(runtime: &RuntimeHandle) -> String {
    let mut out = String::new();
    section(
        &mut out,
        "chimaera_tasks_completed_total",
        "counter",
        "Task replicas completed since start.",
        vec![format!(
            "chimaera_tasks_completed_total {}",
            runtime.completed()
        )],
    );
    section(
        &mut out,
        "chimaera_tasks_in_flight",
        "gauge",
        "Task replicas in flight.",
        vec![format!("chimaera_tasks_in_flight {}", runtime.inflight())],
    );
    section(
        &mut out,
        "chimaera_periodic_tasks",
        "gauge",
        "Periodic task replicas alive.",
        vec![format!(
            "chimaera_periodic_tasks {}",
            runtime.periodic_tasks()
        )],
    );
    let coroutines = runtime.coroutines();
    section(
        &mut out,
        "chimaera_coroutines",
        "gauge",
        "Task coroutines alive: waiting tasks, each worker's poller and spare, stacks leaked by overflows.",
        vec![format!("chimaera_coroutines {}", coroutines.live)],
    );
    section(
        &mut out,
        "chimaera_coroutines_max",
        "gauge",
        "The most task coroutines that may be alive (max_coroutines); at it workers refuse tasks with NoCoroutine.",
        vec![format!("chimaera_coroutines_max {}", coroutines.max)],
    );
    let uids = runtime.uids();
    let quota_lines = |max: bool| -> Vec<String> {
        let name = if max { "max" } else { "used" };
        uids.iter()
            .flat_map(|uid| {
                [
                    ("connections", uid.connections),
                    ("waiting_tasks", uid.waiting_tasks),
                    ("periodic_tasks", uid.periodic_tasks),
                    ("containers", uid.containers),
                    ("memory_bytes", uid.memory_bytes),
                    ("stack_overflows", uid.stack_overflows),
                ]
                .map(|(quota, usage)| {
                    let value = if max { usage.max } else { usage.used };
                    format!(
                        "chimaera_uid_quota_{name}{{uid=\"{}\",quota=\"{quota}\"}} {value}",
                        uid.uid
                    )
                })
            })
            .collect()
    };
    section(
        &mut out,
        "chimaera_uid_quota_used",
        "gauge",
        "What a uid without admin rights holds against each of its quotas (config keys quotas.*).",
        quota_lines(false),
    );
    section(
        &mut out,
        "chimaera_uid_quota_max",
        "gauge",
        "Each quota of a uid without admin rights; past one its requests fail with QuotaExceeded.",
        quota_lines(true),
    );
    section(
        &mut out,
        "chimaera_clients",
        "gauge",
        "Client processes attached over shared memory.",
        vec![format!("chimaera_clients {}", runtime.clients())],
    );
    section(
        &mut out,
        "chimaera_worker_tasks_run_total",
        "counter",
        "Tasks each worker ran.",
        runtime
            .workers()
            .iter()
            .map(|w| {
                format!(
                    "chimaera_worker_tasks_run_total{{worker=\"{}\"}} {}",
                    w.id, w.tasks_run
                )
            })
            .collect(),
    );
    section(
        &mut out,
        "chimaera_worker_queued",
        "gauge",
        "Work waiting for a worker that no lane counts: its inbox (tasks for its idle low-latency lanes from other threads) and in-process calls posted to it, not routed yet.",
        runtime
            .workers()
            .iter()
            .map(|w| format!("chimaera_worker_queued{{worker=\"{}\"}} {}", w.id, w.queued))
            .collect(),
    );
    let pools = runtime.pools();
    section(
        &mut out,
        "chimaera_pool_queued",
        "gauge",
        "Tasks queued on a pool's lanes.",
        pools
            .iter()
            .map(|p| {
                format!(
                    "chimaera_pool_queued{{pool=\"{}\"}} {}",
                    label(&p.name),
                    p.queued
                )
            })
            .collect(),
    );
    let methods = runtime.method_stats();
    let labelled = |method: &chimaera_core::admin_api::MethodStatus| {
        let pool = pools
            .iter()
            .find(|pool| pool.id == method.pool)
            .map_or_else(|| method.pool.to_string(), |pool| pool.name.clone());
        format!(
            "pool=\"{}\",method=\"{}\"",
            label(&pool),
            label(&method.name)
        )
    };
    section(
        &mut out,
        "chimaera_method_completed_total",
        "counter",
        "Runs of a method that succeeded.",
        methods
            .iter()
            .map(|m| {
                format!(
                    "chimaera_method_completed_total{{{}}} {}",
                    labelled(m),
                    m.completed
                )
            })
            .collect(),
    );
    section(
        &mut out,
        "chimaera_method_failed_total",
        "counter",
        "Runs of a method that failed.",
        methods
            .iter()
            .map(|m| {
                format!(
                    "chimaera_method_failed_total{{{}}} {}",
                    labelled(m),
                    m.failed
                )
            })
            .collect(),
    );
    section(
        &mut out,
        "chimaera_method_in_flight",
        "gauge",
        "Runs of a method started and not done.",
        methods
            .iter()
            .map(|m| {
                format!(
                    "chimaera_method_in_flight{{{}}} {}",
                    labelled(m),
                    m.in_flight
                )
            })
            .collect(),
    );
    let seconds = |nanos: u64| nanos as f64 / 1e9;
    section(
        &mut out,
        "chimaera_method_latency_seconds",
        "summary",
        "Run latency of a method (handler start to result).",
        methods
            .iter()
            .flat_map(|m| {
                let labels = labelled(m);
                let latency = m.latency;
                [
                    format!(
                        "chimaera_method_latency_seconds{{{labels},quantile=\"0.5\"}} {}",
                        seconds(latency.p50_ns)
                    ),
                    format!(
                        "chimaera_method_latency_seconds{{{labels},quantile=\"0.9\"}} {}",
                        seconds(latency.p90_ns)
                    ),
                    format!(
                        "chimaera_method_latency_seconds{{{labels},quantile=\"0.99\"}} {}",
                        seconds(latency.p99_ns)
                    ),
                    format!(
                        "chimaera_method_latency_seconds_sum{{{labels}}} {}",
                        seconds(latency.sum_ns)
                    ),
                    format!(
                        "chimaera_method_latency_seconds_count{{{labels}}} {}",
                        latency.count
                    ),
                ]
            })
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn label_values_cannot_break_out_of_their_quotes() {
        assert_eq!(label("plain"), "plain");
        assert_eq!(label("a\"} 1\nevil 2"), "a\\\"} 1\\nevil 2");
        assert_eq!(label("back\\slash"), "back\\\\slash");
    }
}
