//! Where results go: the local result folder, the FTP server and the RabbitMQ queue.
//!
//! The worker saves a set's files ([`crate::result::SetOutputs::write`]: through `TEMP_DIR`,
//! renamed into `RESULT_DIR`, the plain result last). The [`Delivery`] thread then does the
//! steps the set's owner ([`crate::lifecycle::SetBook`]) hands it, one at a time: upload to
//! FTP under a temporary name then rename, publish the bare file name as a persistent message
//! and wait for the broker's confirm, delete the eight sources. Each step is journaled only
//! after it succeeded, and reported back to the owner, which decides about retries (with a
//! [`Backoff`], pure, per step) while the engine workers keep computing and saving.

use std::io::Cursor;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::{AmqpConfig, FtpConfig};
use crate::journal::{Entry, Journal, Step, stage_after};
use crate::lifecycle::{Lane, Order, StepResult};
use crate::metrics::{Metrics, SinkKind};
use crate::remote::delete_remote;
use crate::result::ResultName;
use crate::survey::{SurveyName, read_survey};
use crate::tls;
use crate::watch::Roots;

const NET_TIMEOUT: Duration = Duration::from_secs(5);

/// Retry schedule of one sink: `base`, doubled per failure, capped at `max`. Pure.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    next_try: Option<Instant>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
            next_try: None,
        }
    }

    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|t| now >= t)
    }

    /// When the next attempt is due, if the sink is waiting.
    pub fn next_try(&self) -> Option<Instant> {
        self.next_try
    }

    /// Records a failure at `now`; returns the wait before the next attempt.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        let wait = self.base.saturating_mul(factor).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.next_try = Some(now + wait);
        wait
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.next_try = None;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Uploads to one FTP server, keeping the connection between sets.
pub struct FtpSink {
    cfg: FtpConfig,
    conn: Option<suppaftp::RustlsFtpStream>,
}

impl FtpSink {
    pub fn new(cfg: FtpConfig) -> FtpSink {
        FtpSink { cfg, conn: None }
    }

    fn connect(&self) -> anyhow::Result<suppaftp::RustlsFtpStream> {
        let addr = (self.cfg.host.as_str(), self.cfg.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.cfg.host))?
            .next()
            .with_context(|| format!("{} has no address", self.cfg.host))?;
        let tcp = TcpStream::connect_timeout(&addr, NET_TIMEOUT)
            .with_context(|| format!("cannot connect to {addr}"))?;
        // Small commands answered at once: no wait for a delayed ACK (Nagle).
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(NET_TIMEOUT))?;
        tcp.set_write_timeout(Some(NET_TIMEOUT))?;
        let mut ftp = suppaftp::RustlsFtpStream::connect_with_stream(tcp)?;
        if self.cfg.tls {
            // Explicit FTPS: AUTH TLS on the control connection, data connections protected.
            ftp = ftp
                .into_secure(tls::ftps_connector()?, &self.cfg.host)
                .with_context(|| format!("TLS with {} failed", self.cfg.host))?;
        }
        ftp.login(self.cfg.user.as_str(), self.cfg.password.as_str())
            .with_context(|| format!("login as {} refused", self.cfg.user))?;
        // suppaftp starts in ASCII mode, which would rewrite line ends.
        ftp.transfer_type(suppaftp::types::FileType::Binary)?;
        ftp.set_mode(suppaftp::Mode::Passive);
        if ftp.cwd(&self.cfg.folder).is_err() {
            let absolute = self.cfg.folder.starts_with('/');
            let mut prefix = String::new();
            for part in self.cfg.folder.split('/').filter(|p| !p.is_empty()) {
                if absolute || !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                // Fails harmlessly where the folder exists.
                let _ = ftp.mkdir(&prefix);
            }
            ftp.cwd(&self.cfg.folder)
                .with_context(|| format!("cannot create folder {}", self.cfg.folder))?;
        }
        Ok(ftp)
    }

    fn try_upload(
        ftp: &mut suppaftp::RustlsFtpStream,
        name: &str,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let part = format!(".{name}.part");
        ftp.put_file(&part, &mut Cursor::new(bytes))
            .with_context(|| format!("cannot store {part}"))?;
        ftp.rename(part.as_str(), name)
            .with_context(|| format!("cannot rename {part} to {name}"))?;
        Ok(())
    }

    /// Whether pictures go up beside the results (`TOMOGRAM_UPLOAD`).
    pub fn upload_png(&self) -> bool {
        self.cfg.upload_png
    }

    /// Uploads `bytes` as `name` in the configured folder.
    pub fn upload(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.with_conn(|ftp| Self::try_upload(ftp, name, bytes))
    }

    /// Checks the server answers: a NOOP.
    pub fn probe(&mut self) -> anyhow::Result<()> {
        self.with_conn(|ftp| Ok(ftp.noop()?))
    }

    /// Runs `op` on the kept connection (in the configured folder, binary mode). A stale
    /// kept connection is replaced once before the attempt counts as failed.
    pub fn with_conn<T>(
        &mut self,
        mut op: impl FnMut(&mut suppaftp::RustlsFtpStream) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if let Some(mut ftp) = self.conn.take()
            && let Ok(v) = op(&mut ftp)
        {
            self.conn = Some(ftp);
            return Ok(v);
        }
        let mut ftp = self.connect()?;
        let r = op(&mut ftp);
        self.conn = Some(ftp);
        r
    }

    /// Drops the kept connection (after a failure the server may have left it unusable).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}

struct AmqpLink {
    // Field order: the channel closes before the connection.
    channel: amiquip::Channel,
    confirms: Receiver<amiquip::Confirm>,
    returns: Receiver<amiquip::Return>,
    _conn: amiquip::Connection,
}

/// Publishes result names to one queue, with publisher confirms.
pub struct AmqpSink {
    cfg: AmqpConfig,
    link: Option<AmqpLink>,
}

impl AmqpSink {
    pub fn new(cfg: AmqpConfig) -> AmqpSink {
        AmqpSink { cfg, link: None }
    }

    fn connect(&self) -> anyhow::Result<AmqpLink> {
        let mut conn = tls::open_broker(&self.cfg, NET_TIMEOUT)?;
        let channel = conn.open_channel(None)?;
        // Publishing to a queue that does not exist is silently dropped: declare it first.
        channel
            .queue_declare(
                self.cfg.queue.as_str(),
                amiquip::QueueDeclareOptions {
                    durable: self.cfg.durable,
                    ..Default::default()
                },
            )
            .map_err(|e| declare_error(e, &self.cfg))?;
        let confirms = channel.listen_for_publisher_confirms()?;
        let returns = channel.listen_for_returns()?;
        channel.enable_publisher_confirms()?;
        Ok(AmqpLink {
            channel,
            confirms,
            returns,
            _conn: conn,
        })
    }

    fn try_publish(link: &AmqpLink, queue: &str, body: &str) -> anyhow::Result<()> {
        let properties = amiquip::AmqpProperties::default().with_delivery_mode(2);
        let mut publish = amiquip::Publish::with_properties(body.as_bytes(), queue, properties);
        publish.mandatory = true;
        link.channel.basic_publish("", publish)?;
        let confirm = link
            .confirms
            .recv_timeout(NET_TIMEOUT)
            .context("no publisher confirm from the broker")?;
        // A returned message arrives before its confirm.
        if link.returns.try_recv().is_ok() {
            anyhow::bail!("the broker could not route the message to queue {queue}");
        }
        match confirm {
            amiquip::Confirm::Ack(_) => Ok(()),
            amiquip::Confirm::Nack(_) => anyhow::bail!("the broker refused the message (nack)"),
        }
    }

    /// Checks the broker answers: the queue is declared again on the kept link (an idempotent
    /// round trip), or a new link is made.
    pub fn probe(&mut self) -> anyhow::Result<()> {
        if let Some(link) = &self.link
            && link
                .channel
                .queue_declare(
                    self.cfg.queue.as_str(),
                    amiquip::QueueDeclareOptions {
                        durable: self.cfg.durable,
                        ..Default::default()
                    },
                )
                .is_ok()
        {
            return Ok(());
        }
        self.link = None;
        self.link = Some(self.connect()?);
        Ok(())
    }

    /// Publishes `body` and waits for the broker's confirm.
    pub fn publish(&mut self, body: &str) -> anyhow::Result<()> {
        if self.link.is_none() {
            self.link = Some(self.connect()?);
        }
        let link = self.link.as_ref().expect("just connected");
        let result = Self::try_publish(link, &self.cfg.queue, body);
        if result.is_err() {
            self.link = None;
        }
        result
    }
}

/// What a refused queue declaration means: only PRECONDITION_FAILED (406) is a durability
/// mismatch; ACCESS_REFUSED (403) is a permission the user lacks on the vhost.
fn declare_error(e: amiquip::Error, cfg: &AmqpConfig) -> anyhow::Error {
    let queue = &cfg.queue;
    match e {
        amiquip::Error::ServerClosedChannel {
            code: 406, message, ..
        } => anyhow::anyhow!(
            "cannot declare queue {queue} (durable: {}): the broker says {message}; \
             RABBITMQ_QUEUE_DURABLE must match how the existing queue was declared",
            cfg.durable
        ),
        amiquip::Error::ServerClosedChannel {
            code: 403, message, ..
        } => anyhow::anyhow!(
            "cannot declare queue {queue}: access refused ({message}); give user {} the \
             configure, write and read permissions on vhost {}",
            cfg.user,
            cfg.vhost
        ),
        other => anyhow::anyhow!("cannot declare queue {queue}: {other}"),
    }
}

/// A delivery thread's inbox: one step at a time, decided by the set's owner
/// ([`crate::lifecycle::SetBook`]).
pub enum DeliveryMsg {
    Do(Order<PathBuf>),
    /// Check that each sink answers (for `/healthz`).
    Probe,
    /// Finish the step in progress and stop; what is left stays in the journal.
    Stop,
}

/// What a step came to, on which lane, with how long it took.
#[derive(Debug)]
pub struct DeliveryReport {
    pub lane: Lane,
    pub result: StepResult,
    pub took: Duration,
}

/// Settings of the delivery threads.
#[derive(Clone)]
pub struct DeliveryConfig {
    pub result_dir: PathBuf,
    pub ftp: Option<FtpConfig>,
    pub amqp: Option<AmqpConfig>,
    pub metrics: Arc<Metrics>,
    /// Which sources are copies staged from the FTP source folder.
    pub roots: Roots,
}

/// How long dropping [`Delivery`] waits for the steps in progress (a hanging server).
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Handle of the delivery threads, one per [`Lane`], each with its own connections; dropping
/// it stops and joins them. A thread stuck on a hanging server past `STOP_GRACE` is left
/// behind: nothing it does unjournaled is lost.
pub struct Delivery {
    lanes: Vec<LaneThread>,
}

struct LaneThread {
    lane: Lane,
    tx: Sender<DeliveryMsg>,
    thread: Option<std::thread::JoinHandle<()>>,
    finished: Receiver<()>,
}

impl Delivery {
    pub fn spawn(
        cfg: DeliveryConfig,
        journal: Arc<Mutex<Journal>>,
        reports: Sender<DeliveryReport>,
    ) -> std::io::Result<Delivery> {
        let mut lanes = Vec::new();
        for lane in Lane::ALL {
            // The owner hands each lane one step at a time, so the inbox stays short.
            let (tx, rx) = crossbeam_channel::bounded(16);
            let (finished_tx, finished) = crossbeam_channel::bounded::<()>(1);
            let (cfg, journal, reports) = (cfg.clone(), journal.clone(), reports.clone());
            let thread = std::thread::Builder::new()
                .name(format!("delivery-{}", lane.name()))
                .spawn(move || {
                    // Dropped when the loop ends, however it ends.
                    let _finished = finished_tx;
                    Driver::new(lane, cfg, journal).run(rx, reports);
                })?;
            lanes.push(LaneThread {
                lane,
                tx,
                thread: Some(thread),
                finished,
            });
        }
        Ok(Delivery { lanes })
    }

    /// Hands `msg` to `lane`'s thread.
    pub fn send(&self, lane: Lane, msg: DeliveryMsg) {
        if let Some(l) = self.lanes.iter().find(|l| l.lane == lane) {
            let _ = l.tx.send(msg);
        }
    }

    /// Has every lane check its sinks; each reports back.
    pub fn probe(&self) {
        for l in &self.lanes {
            let _ = l.tx.send(DeliveryMsg::Probe);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let deadline = Instant::now() + STOP_GRACE;
        for l in &self.lanes {
            let _ = l.tx.send_deadline(DeliveryMsg::Stop, deadline);
        }
        for l in &mut self.lanes {
            if let Err(RecvTimeoutError::Timeout) = l.finished.recv_deadline(deadline) {
                log::warn!(
                    "delivery ({}) is still waiting on a server; leaving it, the journal keeps its set",
                    l.lane.name()
                );
                continue;
            }
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Does one lane's steps: the I/O only, each journaled after it succeeded. It holds the
/// connections of its lane's sinks only.
struct Driver {
    lane: Lane,
    cfg: DeliveryConfig,
    journal: Arc<Mutex<Journal>>,
    ftp: Option<FtpSink>,
    amqp: Option<AmqpSink>,
    /// The raw archive: the same server, another folder (a connection of its own).
    archive: Option<FtpSink>,
    /// The viewer's queue (a connection of its own).
    graph: Option<AmqpSink>,
    /// The FTP source folder, where delivered remote sources are deleted.
    source: Option<FtpSink>,
}

impl Driver {
    fn new(lane: Lane, cfg: DeliveryConfig, journal: Arc<Mutex<Journal>>) -> Driver {
        // Another folder of the same FTP server, over a connection of its own.
        let ftp_folder = |folder: fn(&FtpConfig) -> &Option<String>| {
            let f = cfg.ftp.as_ref()?;
            Some(FtpSink::new(FtpConfig {
                folder: folder(f).clone()?,
                upload_png: false,
                ..f.clone()
            }))
        };
        let (mut ftp, mut archive, mut amqp, mut graph, mut source) =
            (None, None, None, None, None);
        match lane {
            Lane::Ftp => {
                ftp = cfg.ftp.clone().map(FtpSink::new);
                archive = ftp_folder(|f| &f.archive_folder);
            }
            Lane::Amqp => {
                amqp = cfg.amqp.clone().map(AmqpSink::new);
                graph = cfg.amqp.as_ref().and_then(|a| {
                    let queue = a.graph_queue.clone()?;
                    Some(AmqpSink::new(AmqpConfig { queue, ..a.clone() }))
                });
            }
            Lane::Local => {
                source = ftp_folder(|f| &f.source_folder);
            }
        }
        Driver {
            lane,
            ftp,
            source,
            amqp,
            archive,
            graph,
            cfg,
            journal,
        }
    }

    fn run(mut self, rx: Receiver<DeliveryMsg>, reports: Sender<DeliveryReport>) {
        for msg in rx {
            let started = Instant::now();
            let result = match msg {
                DeliveryMsg::Stop => return,
                DeliveryMsg::Probe => {
                    self.probe();
                    StepResult::Done
                }
                DeliveryMsg::Do(order) => self.step(&order),
            };
            let report = DeliveryReport {
                lane: self.lane,
                result,
                took: started.elapsed(),
            };
            if reports.send(report).is_err() {
                return;
            }
        }
    }

    /// Does one step and journals it.
    fn step(&mut self, order: &Order<PathBuf>) -> StepResult {
        let name = order.result_name.as_str();
        let attempt = match order.step {
            Step::Upload => match std::fs::read(self.cfg.result_dir.join(name)) {
                Ok(bytes) => {
                    let r = self.upload(name, &bytes);
                    self.sink_outcome(SinkKind::Ftp, r)
                }
                Err(e) => {
                    log::warn!("{name}: result file unreadable ({e}); computing it again");
                    return StepResult::ResultMissing;
                }
            },
            Step::Publish => {
                let r = match self.amqp.as_mut() {
                    Some(amqp) => amqp.publish(name),
                    None => Err(anyhow::anyhow!("RabbitMQ is not configured")),
                };
                self.sink_outcome(SinkKind::Amqp, r)
            }
            Step::Archive => {
                let r = self.archive(&order.sources);
                self.sink_outcome(SinkKind::Ftp, r)
            }
            Step::Announce => {
                let r = match self.graph.as_mut() {
                    Some(graph) => graph.publish(&graph_message(name, &order.sources)),
                    None => Err(anyhow::anyhow!("RABBITMQ_GRAPH_QUEUE is not configured")),
                };
                self.sink_outcome(SinkKind::Amqp, r)
            }
            Step::DeleteSources => self.delete_sources(&order.sources),
            Step::Save | Step::Done => {
                Err(anyhow::anyhow!("{:?} is not a delivery step", order.step))
            }
        };
        if let Err(e) = attempt {
            return StepResult::Failed(format!("{e:#}"));
        }
        let Some(stage) = stage_after(order.step) else {
            return StepResult::Done;
        };
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        match j.record(&Entry {
            stage,
            result_name: name.to_string(),
            sources: Vec::new(),
        }) {
            Ok(()) => StepResult::Done,
            Err(e) => StepResult::Failed(format!("cannot write the journal: {e}")),
        }
    }

    /// Uploads the result, the picture first when `TOMOGRAM_UPLOAD` is on, so that a
    /// consumer told of the result finds it.
    fn upload(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let Some(ftp) = self.ftp.as_mut() else {
            anyhow::bail!("FTP is not configured");
        };
        if ftp.upload_png()
            && let Some(png_name) = ResultName::parse(name).map(|n| n.png())
            && let Ok(png) = std::fs::read(self.cfg.result_dir.join(&png_name))
        {
            ftp.upload(&png_name, &png)?;
        }
        ftp.upload(name, bytes)
    }

    /// Copies the raw tap files, unchanged, to the raw archive. A file that is already gone
    /// cannot be archived: it is skipped with a warning rather than holding every set back.
    fn archive(&mut self, sources: &[PathBuf]) -> anyhow::Result<()> {
        let Some(archive) = self.archive.as_mut() else {
            anyhow::bail!("FTP_FOLDER_DATA_ROW is not configured");
        };
        for src in sources {
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read(src) {
                Ok(bytes) => archive.upload(&name, &bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    log::warn!("{}: gone before it was archived", src.display());
                }
                Err(e) => anyhow::bail!("cannot read {}: {e}", src.display()),
            }
        }
        Ok(())
    }

    /// Deletes a set's sources (one already gone is fine). A copy staged from the FTP source
    /// folder goes on the server first, then here.
    fn delete_sources(&mut self, sources: &[PathBuf]) -> anyhow::Result<()> {
        for src in sources {
            if self.cfg.roots.is_remote(src) {
                let name = src
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match self.source.as_mut() {
                    Some(source) => {
                        let r = delete_remote(source, &name);
                        self.sink_outcome(SinkKind::FtpSource, r)?;
                    }
                    None => log::warn!(
                        "{name}: FTP_SOURCE_FOLDER is off now, so its file on the FTP server is not deleted"
                    ),
                }
            }
            match std::fs::remove_file(src) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot delete {}: {e}", src.display()),
            }
        }
        Ok(())
    }

    /// Records a sink's attempt in the metrics (health, retries).
    fn sink_outcome(&self, sink: SinkKind, r: anyhow::Result<()>) -> anyhow::Result<()> {
        let metrics = &self.cfg.metrics;
        metrics.sink_status(sink, r.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
        if r.is_err() {
            metrics.sink_retry(sink);
        }
        r
    }

    /// Checks each sink; the outcome only feeds the health status.
    fn probe(&mut self) {
        let metrics = &self.cfg.metrics;
        if let Some(ftp) = self.ftp.as_mut() {
            metrics.sink_status(SinkKind::Ftp, ftp.probe().map_err(|e| format!("{e:#}")));
        }
        if let Some(amqp) = self.amqp.as_mut() {
            metrics.sink_status(SinkKind::Amqp, amqp.probe().map_err(|e| format!("{e:#}")));
        }
        if let Some(graph) = self.graph.as_mut()
            && let Err(e) = graph.probe()
        {
            metrics.sink_status(SinkKind::Amqp, Err(format!("{e:#}")));
        }
    }
}

/// The tomogram viewer's message: the result's name without `.json`, and the eight tap
/// files, tap 1 first. A set with a survey file (among `sources`, read here) adds its
/// `species`, `keliling` (circumference, cm), `ketinggian` (height of the sensor ring, m) and
/// `jumlah_sensor` (8), the deployed viewer's names.
pub fn graph_message(result_name: &str, sources: &[PathBuf]) -> String {
    let (surveys, taps): (Vec<&PathBuf>, Vec<&PathBuf>) = sources
        .iter()
        .partition(|p| SurveyName::from_path(p).is_some());
    let data: Vec<String> = taps
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let mut msg = serde_json::json!({
        "GUID_SURVEY": ResultName::parse(result_name)
            .map_or_else(|| result_name.to_string(), |n| n.stem()),
        "data": data,
    });
    if let Some(path) = surveys.first() {
        match read_survey(path) {
            Ok(survey) => {
                msg["species"] = survey.species.clone().into();
                msg["keliling"] = survey.circumference_cm().into();
                msg["ketinggian"] = survey.height_m.into();
                msg["jumlah_sensor"] = crate::device::N_SENSORS.into();
            }
            Err(e) => {
                log::warn!("{result_name}: the viewer's message goes without the survey: {e}")
            }
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_viewer_message_names_the_result_and_the_taps_in_order() {
        let sources: Vec<PathBuf> = (1..=8)
            .map(|k| PathBuf::from(format!("/d/D_u_17_{k}.json")))
            .collect();
        let msg: serde_json::Value =
            serde_json::from_str(&graph_message("result_D_17.json", &sources)).unwrap();
        assert_eq!(msg["GUID_SURVEY"], "result_D_17");
        assert_eq!(msg["data"][0], "D_u_17_1.json");
        assert_eq!(msg["data"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        assert!(b.ready(t0));
        let waits: Vec<Duration> = (0..5).map(|_| b.failed(t0)).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 3000, 3000].map(Duration::from_millis)
        );
        assert!(!b.ready(t0));
        assert!(b.ready(t0 + Duration::from_secs(3)));
        b.succeeded();
        assert!(b.ready(t0));
        assert_eq!(b.failed(t0), Duration::from_millis(500));
    }
}
