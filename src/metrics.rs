//! What the service counts and how healthy it is, for `GET /metrics` (the Prometheus text
//! format) and `GET /healthz` on `METRICS_ADDR`.
//!
//! [`Metrics`] is shared by the stages (atomics and two small locked maps; nothing here
//! blocks a stage for longer than a copy). [`MetricsServer`] is the small HTTP listener
//! (tiny_http, thread `metrics`); dropping it stops and joins it. `/healthz` answers 200 while
//! the folder watcher and every configured sink are alive, and 503 with the reasons otherwise:
//! a sink is dead from its last failed attempt (a delivery or a delivery thread's periodic
//! probe) until its next success.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stages whose durations are kept as histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StageTimer {
    Read,
    Compute,
    Save,
    Upload,
    Publish,
}

impl StageTimer {
    const ALL: [StageTimer; 5] = [
        StageTimer::Read,
        StageTimer::Compute,
        StageTimer::Save,
        StageTimer::Upload,
        StageTimer::Publish,
    ];

    fn label(self) -> &'static str {
        match self {
            StageTimer::Read => "read",
            StageTimer::Compute => "compute",
            StageTimer::Save => "save",
            StageTimer::Upload => "upload",
            StageTimer::Publish => "publish",
        }
    }
}

/// Upper bounds of the duration buckets, seconds (1 ms … 10 s).
const BUCKETS_S: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0, 10.0];

/// One histogram: counts per bucket (not cumulative), the sum in nanoseconds, the count.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A configured sink, by its label in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SinkKind {
    Ftp,
    Amqp,
    /// The FTP source folder (`FTP_SOURCE_FOLDER`), listed every `FTP_POLL_SECONDS`.
    FtpSource,
}

impl SinkKind {
    fn label(self) -> &'static str {
        match self {
            SinkKind::Ftp => "ftp",
            SinkKind::Amqp => "amqp",
            SinkKind::FtpSource => "ftp_source",
        }
    }
}

/// Counters, gauges and health of one service process.
#[derive(Default)]
pub struct Metrics {
    pub sets_delivered: AtomicU64,
    /// Sets that could not be computed or saved, and sets given up by `--once`.
    pub sets_failed: AtomicU64,
    pub files_rejected: AtomicU64,
    /// Complete sets not yet delivered: queued, being computed, or waiting for a sink.
    pub sets_pending: AtomicU64,
    /// Tap files read and waiting for the rest of their set.
    pub files_waiting: AtomicU64,
    /// Of those, files waiting longer than the window plus the grace (logged as incomplete).
    pub files_incomplete: AtomicU64,
    stages: [Histogram; StageTimer::ALL.len()],
    retries: Mutex<BTreeMap<SinkKind, u64>>,
    /// Per configured sink: `None` alive (or not tried yet), `Some(reason)` failing.
    sinks: Mutex<BTreeMap<SinkKind, Option<String>>>,
    watcher_failed: Mutex<Option<String>>,
    /// Set once the coordinator has started its loop.
    started: AtomicBool,
    /// Nanoseconds since `epoch` of the coordinator's last turn.
    heartbeat_ns: AtomicU64,
    epoch: Option<Instant>,
}

/// The coordinator is taken for stuck when its loop has not turned for this long.
const STALL_AFTER: Duration = Duration::from_secs(30);

impl Metrics {
    /// Metrics for a service whose configured sinks are `sinks`.
    pub fn new(sinks: &[SinkKind]) -> Arc<Metrics> {
        Arc::new(Metrics {
            sinks: Mutex::new(sinks.iter().map(|&s| (s, None)).collect()),
            retries: Mutex::new(sinks.iter().map(|&s| (s, 0)).collect()),
            epoch: Some(Instant::now()),
            ..Metrics::default()
        })
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    pub fn observe(&self, stage: StageTimer, d: Duration) {
        self.stages[stage as usize].observe(d);
    }

    /// A sink's attempt failed and will be retried.
    pub fn sink_retry(&self, sink: SinkKind) {
        *lock(&self.retries).entry(sink).or_default() += 1;
    }

    /// The outcome of an attempt to reach a sink: `Err(reason)` marks it unhealthy.
    pub fn sink_status(&self, sink: SinkKind, outcome: Result<(), String>) {
        lock(&self.sinks).insert(sink, outcome.err());
    }

    /// The outcome of watching the data folder: `Err(reason)` marks it unhealthy.
    pub fn watcher_status(&self, outcome: Result<(), String>) {
        *lock(&self.watcher_failed) = outcome.err();
    }

    /// The coordinator's loop turned.
    pub fn heartbeat(&self) {
        if let Some(epoch) = self.epoch {
            self.heartbeat_ns
                .store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.started.store(true, Ordering::Relaxed);
        }
    }

    /// `Ok(())` when healthy, else the reasons.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if let Some(w) = lock(&self.watcher_failed).as_ref() {
            why.push(format!("watcher: {w}"));
        }
        if let Some(epoch) = self.epoch
            && self.started.load(Ordering::Relaxed)
        {
            let last = Duration::from_nanos(self.heartbeat_ns.load(Ordering::Relaxed));
            let idle = epoch.elapsed().saturating_sub(last);
            if idle > STALL_AFTER {
                why.push(format!(
                    "coordinator: no turn for {:.0} s",
                    idle.as_secs_f64()
                ));
            }
        }
        for (sink, failing) in lock(&self.sinks).iter() {
            if let Some(reason) = failing {
                why.push(format!("{}: {reason}", sink.label()));
            }
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "terawang_sets_delivered_total",
                "counter",
                "Sets whose result reached every configured sink and whose sources were removed.",
                load(&self.sets_delivered),
            ),
            (
                "terawang_sets_failed_total",
                "counter",
                "Sets that could not be computed or saved, or were left undelivered by --once.",
                load(&self.sets_failed),
            ),
            (
                "terawang_files_rejected_total",
                "counter",
                "Files moved to rejected/ with a reason.",
                load(&self.files_rejected),
            ),
            (
                "terawang_sets_pending",
                "gauge",
                "Complete sets not yet delivered (queued, computing, or waiting for a sink).",
                load(&self.sets_pending),
            ),
            (
                "terawang_files_waiting",
                "gauge",
                "Tap files read and waiting for the rest of their set.",
                load(&self.files_waiting),
            ),
            (
                "terawang_files_incomplete",
                "gauge",
                "Tap files without a set after the window plus the grace period.",
                load(&self.files_incomplete),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let name = "terawang_sink_retries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed attempts to reach a sink, each retried later.\n# TYPE {name} counter"
        );
        for (sink, n) in lock(&self.retries).iter() {
            let _ = writeln!(out, "{name}{{sink=\"{}\"}} {n}", sink.label());
        }
        let name = "terawang_sink_up";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while the sink's last attempt succeeded (or none was made yet).\n# TYPE {name} gauge"
        );
        for (sink, failing) in lock(&self.sinks).iter() {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\"}} {}",
                sink.label(),
                u8::from(failing.is_none())
            );
        }
        let name = "terawang_stage_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time one set spends in each stage.\n# TYPE {name} histogram"
        );
        for stage in StageTimer::ALL {
            let h = &self.stages[stage as usize];
            let label = stage.label();
            let mut cumulative = 0;
            for (bound, count) in BUCKETS_S.iter().zip(&h.buckets) {
                cumulative += load(count);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{stage=\"{label}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = load(&h.count);
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{label}\",le=\"+Inf\"}} {count}\n\
                 {name}_sum{{stage=\"{label}\"}} {}\n\
                 {name}_count{{stage=\"{label}\"}} {count}",
                load(&h.sum_ns) as f64 / 1e9
            );
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The HTTP listener; dropping it stops and joins its thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` and serves `/metrics` and `/healthz` from `metrics`.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<MetricsServer> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("METRICS_ADDR: cannot listen on {addr}: {e}"))?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("METRICS_ADDR: {addr} is not an IP address"))?;
        let thread = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    for request in server.incoming_requests() {
                        respond(request, &metrics);
                    }
                })?
        };
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Where it listens (the port chosen when `METRICS_ADDR` gave port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(request: tiny_http::Request, metrics: &Metrics) {
    let text = |body: String, code: u16, kind: &str| {
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
            .expect("a valid header");
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header)
    };
    let plain = "text/plain; charset=utf-8";
    let path = request.url().split('?').next().unwrap_or("");
    let response = match (request.method(), path) {
        (tiny_http::Method::Get, "/metrics") => {
            text(metrics.render(), 200, "text/plain; version=0.0.4")
        }
        (tiny_http::Method::Get, "/healthz") => match metrics.health() {
            Ok(()) => text("ok\n".into(), 200, plain),
            Err(why) => text(format!("{}\n", why.join("\n")), 503, plain),
        },
        (tiny_http::Method::Get, _) => {
            text("not found: try /metrics or /healthz\n".into(), 404, plain)
        }
        _ => text("only GET\n".into(), 405, plain),
    };
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text_with_cumulative_buckets() {
        let m = Metrics::new(&[SinkKind::Ftp]);
        Metrics::add(&m.sets_delivered, 3);
        m.observe(StageTimer::Compute, Duration::from_millis(3));
        m.observe(StageTimer::Compute, Duration::from_secs(60));
        m.sink_retry(SinkKind::Ftp);
        let text = m.render();
        assert!(
            text.contains("\nterawang_sets_delivered_total 3\n"),
            "{text}"
        );
        assert!(text.contains("terawang_sink_retries_total{sink=\"ftp\"} 1\n"));
        assert!(text.contains("{stage=\"compute\",le=\"0.001\"} 0\n"));
        assert!(text.contains("{stage=\"compute\",le=\"0.005\"} 1\n"));
        assert!(text.contains("{stage=\"compute\",le=\"10\"} 1\n"));
        assert!(text.contains("{stage=\"compute\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("terawang_stage_duration_seconds_count{stage=\"compute\"} 2\n"));
        assert!(!text.contains("sink=\"amqp\""), "only configured sinks");
    }

    #[test]
    fn health_names_what_is_down_until_it_recovers() {
        let m = Metrics::new(&[SinkKind::Ftp, SinkKind::Amqp]);
        assert_eq!(m.health(), Ok(()));
        m.sink_status(SinkKind::Amqp, Err("connection refused".into()));
        assert_eq!(
            m.health(),
            Err(vec!["amqp: connection refused".to_string()])
        );
        m.sink_status(SinkKind::Amqp, Ok(()));
        assert_eq!(m.health(), Ok(()));
        m.watcher_status(Err("the folder vanished".into()));
        assert!(m.health().unwrap_err()[0].starts_with("watcher"));
    }

    #[test]
    fn the_server_answers_both_paths() {
        let m = Metrics::new(&[]);
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
        let get = |path: &str| -> String {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            buf
        };
        assert!(get("/metrics").contains("terawang_sets_pending 0"));
        assert!(get("/healthz").starts_with("HTTP/1.0 200"));
        m.watcher_status(Err("gone".into()));
        let r = get("/healthz");
        assert!(
            r.starts_with("HTTP/1.0 503") && r.contains("watcher: gone"),
            "{r}"
        );
        assert!(get("/nope").starts_with("HTTP/1.0 404"));
    }
}
