//! Settings of the service, in two layers.
//!
//! [`RawConfig`] is a map of variable name to string, built from a `.env` file (via dotenvy)
//! overlaid with the real environment, which wins. [`Config::from_raw`] validates it once into
//! typed paths, durations and optional sinks; every error names the variable at fault. An empty
//! `FTP_HOST` or `RABBITMQ_HOST` turns that sink off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logging::LogFormat;

/// Every variable the service reads, with its default ("" = no default) and what it does.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "DATA_DIR",
        "data_mentah",
        "folder watched for the device's tap files",
    ),
    (
        "RESULT_DIR",
        "hasil_proses_lokal",
        "folder for the local result files",
    ),
    (
        "TEMP_DIR",
        "temp_data",
        "scratch space and the journal (same file system as RESULT_DIR)",
    ),
    ("FTP_HOST", "", "FTP server; empty turns the FTP upload off"),
    ("FTP_PORT", "2121", "FTP port"),
    (
        "FTP_TLS",
        "false",
        "explicit FTPS (AUTH TLS) for the upload; the server's certificate is checked against the system's trust store or SSL_CERT_FILE",
    ),
    (
        "TOMOGRAM_UPLOAD",
        "false",
        "also upload the tomogram picture result_<device>_<unix>.png to FTP",
    ),
    ("FTP_USER", "", "FTP user"),
    ("FTP_PASSWORD", "", "FTP password"),
    (
        "FTP_FOLDER_HASIL",
        "/result",
        "folder on the FTP server for the results (created if missing)",
    ),
    (
        "FTP_SOURCE_FOLDER",
        "",
        "folder on the FTP server the devices upload their taps (and survey files) to; the service takes them from there as well as from DATA_DIR; empty turns it off",
    ),
    (
        "FTP_POLL_SECONDS",
        "10",
        "how often FTP_SOURCE_FOLDER is listed; a file is taken once two listings in a row show the same size",
    ),
    (
        "FTP_FOLDER_DATA_ROW",
        "",
        "raw archive on the FTP server: each set's eight tap files are copied there, unchanged, before they are deleted; empty turns it off",
    ),
    (
        "RABBITMQ_HOST",
        "",
        "RabbitMQ broker; empty turns publishing off",
    ),
    ("RABBITMQ_PORT", "5672", "RabbitMQ port"),
    (
        "RABBITMQ_TLS",
        "false",
        "AMQPS (TLS) to the broker; set RABBITMQ_PORT to its TLS port, usually 5671",
    ),
    ("RABBITMQ_USERNAME", "guest", "RabbitMQ user"),
    ("RABBITMQ_PASSWORD", "guest", "RabbitMQ password"),
    ("RABBITMQ_VHOST", "/terawang", "RabbitMQ virtual host"),
    (
        "RABBITMQ_QUEUE",
        "result_queue",
        "queue that receives each result file name (alias RABBITMQ_QUEUE_RESULT)",
    ),
    (
        "RABBITMQ_GRAPH_QUEUE",
        "",
        "queue for the tomogram viewer's message ({\"GUID_SURVEY\": <result>, \"data\": [<8 tap files>]}); empty turns it off",
    ),
    (
        "RABBITMQ_JOB_QUEUE",
        "terawang_sets",
        "queue of complete sets between `run --role ingest` (or `enqueue`) and `run --role worker`; declared durable (a quorum queue where the broker has them), its dead-letter queue is the same name + _rejected",
    ),
    (
        "RABBITMQ_QUEUE_DURABLE",
        "false",
        "declare the queue durable; must match how it was declared before",
    ),
    ("DIAMETER", "0.3", "trunk diameter in metres"),
    (
        "TRIGGER_LEAD",
        "0.5",
        "mean time from the hammer's impact to a file's first sample, in samples (0-4)",
    ),
    (
        "GROUP_WINDOW_SECONDS",
        "900",
        "largest span of file times inside one set",
    ),
    (
        "FILE_SETTLE_SECONDS",
        "3",
        "a file is read only after it stopped changing this long",
    ),
    (
        "ENGINE_NICE",
        "10",
        "how much lower the engine threads run than the rest of the service (a nice increment 0-19), so uploads and publishes go on while the engine fills the CPU",
    ),
    (
        "RETRY_MAX_SECONDS",
        "30",
        "longest wait between retries of a failing FTP server or broker",
    ),
    (
        "RESCAN_SECONDS",
        "60",
        "full rescan of DATA_DIR, in case a file event was lost",
    ),
    (
        "INCOMPLETE_GRACE_SECONDS",
        "60",
        "a tap file still without its set this long after GROUP_WINDOW_SECONDS is logged as incomplete",
    ),
    (
        "METRICS_ADDR",
        "",
        "address for GET /metrics (Prometheus) and GET /healthz, e.g. 127.0.0.1:9184; empty turns it off",
    ),
    (
        "LOG_FORMAT",
        "text",
        "text, or json for one JSON object per log line",
    ),
];

/// Variable name to raw string value.
#[derive(Clone, Debug, Default)]
pub struct RawConfig {
    pub vars: BTreeMap<String, String>,
}

impl RawConfig {
    /// Reads `env_file` (or `./.env` when `None`; a missing default file is fine) and overlays
    /// the process environment, which wins.
    pub fn load(env_file: Option<&Path>) -> anyhow::Result<RawConfig> {
        let mut vars = BTreeMap::new();
        let file = env_file.map_or_else(|| PathBuf::from(".env"), Path::to_path_buf);
        match dotenvy::from_path_iter(&file) {
            Ok(iter) => {
                for item in iter {
                    let (k, v) =
                        item.map_err(|e| anyhow::anyhow!("{}: cannot parse: {e}", file.display()))?;
                    vars.insert(k, v);
                }
            }
            Err(e) if env_file.is_none() && e.not_found() => {}
            Err(e) => anyhow::bail!("{}: cannot read: {e}", file.display()),
        }
        for (name, _, _) in VARIABLES {
            if let Ok(v) = std::env::var(name) {
                vars.insert((*name).to_string(), v);
            }
        }
        if let Ok(v) = std::env::var("RABBITMQ_QUEUE_RESULT") {
            vars.insert("RABBITMQ_QUEUE_RESULT".into(), v);
        }
        Ok(RawConfig { vars })
    }

    fn get(&self, name: &str) -> String {
        self.vars.get(name).cloned().unwrap_or_else(|| {
            VARIABLES
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or_else(String::new, |(_, d, _)| (*d).to_string())
        })
    }
}

/// Where to upload results.
#[derive(Clone, PartialEq, Eq)]
pub struct FtpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub folder: String,
    /// Upload the picture beside the result (`TOMOGRAM_UPLOAD`).
    pub upload_png: bool,
    /// Explicit FTPS (`FTP_TLS`).
    pub tls: bool,
    /// The raw archive folder (`FTP_FOLDER_DATA_ROW`), if on.
    pub archive_folder: Option<String>,
    /// The folder the devices upload to (`FTP_SOURCE_FOLDER`), if on.
    pub source_folder: Option<String>,
}

/// Where to publish result names.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub queue: String,
    pub durable: bool,
    /// AMQPS (`RABBITMQ_TLS`).
    pub tls: bool,
    /// The viewer's queue (`RABBITMQ_GRAPH_QUEUE`), if on; declared like `queue`.
    pub graph_queue: Option<String>,
}

impl AmqpConfig {
    /// `amqp://user:pass@host:port/<vhost url-encoded>`, with a connection timeout.
    pub fn url(&self) -> String {
        format!(
            "{}://{}:{}@{}:{}/{}?connection_timeout=5000&heartbeat=30",
            if self.tls { "amqps" } else { "amqp" },
            url_encode(&self.user),
            url_encode(&self.password),
            // An IPv6 address goes in brackets in a URL.
            if self.host.contains(':') {
                format!("[{}]", self.host)
            } else {
                self.host.clone()
            },
            self.port,
            url_encode(&self.vhost)
        )
    }
}

// Passwords never reach a log line: Debug prints them masked.
impl std::fmt::Debug for FtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ftp://{}@{}:{}{}",
            self.user, self.host, self.port, self.folder
        )
    }
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "amqp://{}@{}:{} vhost {} queue {} (durable: {})",
            self.user, self.host, self.port, self.vhost, self.queue, self.durable
        )
    }
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub result_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub ftp: Option<FtpConfig>,
    pub amqp: Option<AmqpConfig>,
    pub diameter_m: f64,
    /// The engine's [`crate::engine::EngineConfig::trigger_lead`], samples.
    pub trigger_lead: f64,
    pub group_window_s: i64,
    pub settle: Duration,
    pub retry_max: Duration,
    pub rescan: Duration,
    /// How long after the group window a file without a set is reported as incomplete.
    pub incomplete_grace: Duration,
    /// How often `FTP_SOURCE_FOLDER` is listed.
    pub ftp_poll: Duration,
    /// The queue of complete sets between the roles (`RABBITMQ_JOB_QUEUE`).
    pub job_queue: String,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// The nice increment of the engine threads (`ENGINE_NICE`, 0–19).
    pub engine_nice: i32,
}

/// A true/false variable.
fn flag(raw: &RawConfig, name: &str) -> anyhow::Result<bool> {
    match raw.get(name).trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        other => anyhow::bail!("{name} must be true or false, got {other:?}"),
    }
}

impl Config {
    pub fn from_raw(raw: &RawConfig) -> anyhow::Result<Config> {
        let dir = |name: &str| -> anyhow::Result<PathBuf> {
            let v = raw.get(name);
            if v.trim().is_empty() {
                anyhow::bail!("{name} must name a folder, it is empty");
            }
            Ok(PathBuf::from(v))
        };
        let port = |name: &str| -> anyhow::Result<u16> {
            let v = raw.get(name);
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow::anyhow!("{name} must be a port number 1-65535, got {v:?}"))
        };
        let seconds = |name: &str, min: f64| -> anyhow::Result<Duration> {
            let v = raw.get(name);
            match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= min && s <= 86_400.0 => {
                    Ok(Duration::from_secs_f64(s))
                }
                _ => {
                    anyhow::bail!("{name} must be a number of seconds in [{min}, 86400], got {v:?}")
                }
            }
        };
        let ftp_host = host(raw, "FTP_HOST")?;
        let ftp = if ftp_host.is_empty() {
            None
        } else {
            let mut folder = raw.get("FTP_FOLDER_HASIL").trim().to_string();
            if folder.is_empty() {
                folder = "/".into();
            }
            Some(FtpConfig {
                host: ftp_host,
                port: port("FTP_PORT")?,
                user: raw.get("FTP_USER"),
                password: raw.get("FTP_PASSWORD"),
                folder,
                upload_png: flag(raw, "TOMOGRAM_UPLOAD")?,
                tls: flag(raw, "FTP_TLS")?,
                archive_folder: optional(raw, "FTP_FOLDER_DATA_ROW"),
                source_folder: optional(raw, "FTP_SOURCE_FOLDER"),
            })
        };
        if ftp.is_none() && !raw.get("FTP_SOURCE_FOLDER").trim().is_empty() {
            anyhow::bail!(
                "FTP_SOURCE_FOLDER is set but FTP_HOST is empty: the source folder is read from the FTP server"
            );
        }
        let amqp_host = host(raw, "RABBITMQ_HOST")?;
        let amqp = if amqp_host.is_empty() {
            None
        } else {
            let queue = match raw.vars.get("RABBITMQ_QUEUE") {
                Some(q) => q.clone(),
                None => raw
                    .vars
                    .get("RABBITMQ_QUEUE_RESULT")
                    .cloned()
                    .unwrap_or_else(|| raw.get("RABBITMQ_QUEUE")),
            };
            if queue.trim().is_empty() {
                anyhow::bail!("RABBITMQ_QUEUE must name a queue, it is empty");
            }
            let durable = flag(raw, "RABBITMQ_QUEUE_DURABLE")?;
            Some(AmqpConfig {
                host: amqp_host,
                port: port("RABBITMQ_PORT")?,
                user: raw.get("RABBITMQ_USERNAME"),
                password: raw.get("RABBITMQ_PASSWORD"),
                vhost: raw.get("RABBITMQ_VHOST"),
                queue: queue.trim().to_string(),
                durable,
                tls: flag(raw, "RABBITMQ_TLS")?,
                graph_queue: optional(raw, "RABBITMQ_GRAPH_QUEUE"),
            })
        };
        let diameter = raw.get("DIAMETER");
        let diameter_m = match diameter.trim().parse::<f64>() {
            Ok(d) if d.is_finite() && d > 0.0 && d <= 10.0 => d,
            _ => anyhow::bail!("DIAMETER must be a number of metres in (0, 10], got {diameter:?}"),
        };
        let lead = raw.get("TRIGGER_LEAD");
        let trigger_lead = lead
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("got {lead:?}"))
            .and_then(|l| {
                crate::engine::EngineConfig::check_trigger_lead(l).map_err(|e| e.to_string())
            })
            .map_err(|e| anyhow::anyhow!("TRIGGER_LEAD: {e}"))?;
        // A whole number in `range`; `what` is said of it in the error.
        let whole = |name: &str, range: std::ops::RangeInclusive<i64>, what: &str| {
            let v = raw.get(name);
            match v.trim().parse::<i64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(anyhow::anyhow!(
                    "{name} must be {what} in [{}, {}], got {v:?}",
                    range.start(),
                    range.end()
                )),
            }
        };
        let group_window_s = whole("GROUP_WINDOW_SECONDS", 0..=86_400, "whole seconds")?;
        let metrics = raw.get("METRICS_ADDR");
        let metrics_addr = match metrics.trim() {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                anyhow::anyhow!(
                    "METRICS_ADDR must be an IP address and port like 127.0.0.1:9184, got {metrics:?}"
                )
            })?),
        };
        Ok(Config {
            data_dir: dir("DATA_DIR")?,
            result_dir: dir("RESULT_DIR")?,
            temp_dir: dir("TEMP_DIR")?,
            ftp,
            amqp,
            diameter_m,
            trigger_lead,
            group_window_s,
            settle: seconds("FILE_SETTLE_SECONDS", 0.0)?,
            retry_max: seconds("RETRY_MAX_SECONDS", 0.1)?,
            rescan: seconds("RESCAN_SECONDS", 0.1)?,
            incomplete_grace: seconds("INCOMPLETE_GRACE_SECONDS", 0.0)?,
            ftp_poll: seconds("FTP_POLL_SECONDS", 0.1)?,
            job_queue: match raw.get("RABBITMQ_JOB_QUEUE").trim() {
                "" => anyhow::bail!("RABBITMQ_JOB_QUEUE must name a queue, it is empty"),
                q => q.to_string(),
            },
            metrics_addr,
            log_format: log_format(raw)?,
            engine_nice: whole("ENGINE_NICE", 0..=19, "a whole number")? as i32,
        })
    }
}

/// A variable whose empty value turns its feature off.
fn optional(raw: &RawConfig, name: &str) -> Option<String> {
    Some(raw.get(name).trim().to_string()).filter(|v| !v.is_empty())
}

/// `LOG_FORMAT`: text or json.
pub fn log_format(raw: &RawConfig) -> anyhow::Result<LogFormat> {
    raw.get("LOG_FORMAT")
        .parse()
        .map_err(|e| anyhow::anyhow!("LOG_FORMAT {e}"))
}

/// A host name or IP address (empty: the sink is off), checked at start rather than at the
/// first upload: letters, digits, `-`, `.`, `_`, or an IPv6 address.
fn host(raw: &RawConfig, name: &str) -> anyhow::Result<String> {
    let v = raw.get(name);
    let h = v.trim();
    let ipv6 = h.parse::<std::net::Ipv6Addr>().is_ok();
    let name_ok = h.len() <= 253
        && !h.starts_with(['-', '.'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if h.is_empty() || ipv6 || name_ok {
        Ok(h.to_string())
    } else {
        anyhow::bail!("{name} must be a host name or an IP address, got {v:?}")
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for AMQP URLs.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        RawConfig {
            vars: pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    #[test]
    fn defaults_turn_sinks_off() {
        let c = Config::from_raw(&raw(&[])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data_mentah"));
        assert!(c.ftp.is_none() && c.amqp.is_none());
        assert_eq!(c.settle, Duration::from_secs(3));
        assert_eq!(c.group_window_s, 900);
        assert_eq!(c.trigger_lead, 0.5);
        assert_eq!(c.engine_nice, 10);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_raw(&raw(&[("FTP_HOST", "h"), ("FTP_PORT", "x")])).unwrap_err();
        assert!(e.to_string().contains("FTP_PORT"), "{e}");
        let e = Config::from_raw(&raw(&[("DIAMETER", "-1")])).unwrap_err();
        assert!(e.to_string().contains("DIAMETER"), "{e}");
        for bad in ["-0.1", "4.5", "half", "NaN"] {
            let e = Config::from_raw(&raw(&[("TRIGGER_LEAD", bad)])).unwrap_err();
            assert!(e.to_string().contains("TRIGGER_LEAD"), "{bad}: {e}");
        }
        let c = Config::from_raw(&raw(&[("TRIGGER_LEAD", " 0 ")])).unwrap();
        assert_eq!(c.trigger_lead, 0.0);
        let e = Config::from_raw(&raw(&[
            ("RABBITMQ_HOST", "h"),
            ("RABBITMQ_QUEUE_DURABLE", "maybe"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("RABBITMQ_QUEUE_DURABLE"), "{e}");
        for bad in ["-1", "20", "5.5", "low"] {
            let e = Config::from_raw(&raw(&[("ENGINE_NICE", bad)])).unwrap_err();
            assert!(e.to_string().contains("ENGINE_NICE"), "{bad}: {e}");
        }
        let c = Config::from_raw(&raw(&[("ENGINE_NICE", " 0 ")])).unwrap();
        assert_eq!(c.engine_nice, 0);
    }

    #[test]
    fn hosts_metrics_and_log_format_are_checked_at_start() {
        for bad in ["ho st", "a/b", "-x", "h:5672"] {
            let e = Config::from_raw(&raw(&[("RABBITMQ_HOST", bad)])).unwrap_err();
            assert!(e.to_string().contains("RABBITMQ_HOST"), "{bad}: {e}");
            let e = Config::from_raw(&raw(&[("FTP_HOST", bad)])).unwrap_err();
            assert!(e.to_string().contains("FTP_HOST"), "{bad}: {e}");
        }
        for good in ["rabbitmq", "10.0.0.7", "::1", "broker.example.org", " ftp "] {
            let c = Config::from_raw(&raw(&[("RABBITMQ_HOST", good)])).unwrap();
            assert_eq!(c.amqp.unwrap().host, good.trim());
        }
        let c = Config::from_raw(&raw(&[("RABBITMQ_HOST", "::1")])).unwrap();
        assert!(c.amqp.unwrap().url().contains("@[::1]:5672/"));
        let e = Config::from_raw(&raw(&[("METRICS_ADDR", "9184")])).unwrap_err();
        assert!(e.to_string().contains("METRICS_ADDR"), "{e}");
        let c = Config::from_raw(&raw(&[("METRICS_ADDR", "127.0.0.1:0")])).unwrap();
        assert!(c.metrics_addr.is_some());
        let e = Config::from_raw(&raw(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert!(e.to_string().contains("LOG_FORMAT"), "{e}");
    }

    #[test]
    fn queue_alias_and_url() {
        let c = Config::from_raw(&raw(&[
            ("RABBITMQ_HOST", "127.0.0.1"),
            ("RABBITMQ_QUEUE_RESULT", "q2"),
            ("RABBITMQ_PASSWORD", "p@ss"),
        ]))
        .unwrap();
        let a = c.amqp.unwrap();
        assert_eq!(a.queue, "q2");
        assert!(
            a.url()
                .starts_with("amqp://guest:p%40ss@127.0.0.1:5672/%2Fterawang?")
        );
        assert!(!format!("{a:?}").contains("p@ss"));
    }

    #[test]
    fn env_example_lists_every_variable_with_its_default() {
        let example = include_str!("../.env.example");
        for (name, default, _) in VARIABLES {
            let line = format!("{name}={default}");
            assert!(
                example.lines().any(|l| l.trim() == line),
                ".env.example lacks {line:?}"
            );
        }
    }
}
