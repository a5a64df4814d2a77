//! Where results go: the local result folder, the FTP server and the RabbitMQ queue.
//!
//! The worker saves a set's files ([`crate::result::SetOutputs::write`]: through `TEMP_DIR`,
//! renamed into `RESULT_DIR`, the plain result last). The
//! [`Delivery`] actor (thread `delivery`) then walks each saved set through the steps the
//! journal prescribes ([`next_step`]): upload to FTP under a temporary name then rename,
//! publish the bare file name as a persistent message and wait for the broker's confirm,
//! delete the eight sources. A sink that fails is retried with exponential backoff capped at
//! `RETRY_MAX_SECONDS` ([`Backoff`], pure), without blocking the engine workers, which keep
//! computing and saving. Each step is journaled only after it succeeded.

use std::collections::VecDeque;
use std::io::Cursor;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::{AmqpConfig, FtpConfig};
use crate::journal::{Entry, Journal, Sinks, Stage, Step, next_step, stage_after};
use crate::tls;

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

    /// Uploads `bytes` as `name` in the configured folder. A stale kept connection is
    /// replaced once before the attempt counts as failed.
    pub fn upload(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if let Some(mut ftp) = self.conn.take()
            && Self::try_upload(&mut ftp, name, bytes).is_ok()
        {
            self.conn = Some(ftp);
            return Ok(());
        }
        let mut ftp = self.connect()?;
        Self::try_upload(&mut ftp, name, bytes)?;
        self.conn = Some(ftp);
        Ok(())
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
        let opened = if self.cfg.tls {
            tls::open_amqps(&self.cfg, NET_TIMEOUT)
        } else {
            amiquip::Connection::insecure_open(&self.cfg.url()).map_err(anyhow::Error::from)
        };
        let mut conn = opened.with_context(|| {
            format!(
                "cannot connect to the broker at {}:{} vhost {}",
                self.cfg.host, self.cfg.port, self.cfg.vhost
            )
        })?;
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
            .with_context(|| {
                format!(
                    "cannot declare queue {} (durable: {}); RABBITMQ_QUEUE_DURABLE must match the existing queue",
                    self.cfg.queue, self.cfg.durable
                )
            })?;
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

/// How long each stage of one set took, for its log line.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetTimings {
    pub read: Duration,
    pub compute: Duration,
    pub save: Duration,
}

/// A saved set on its way out.
#[derive(Clone, Debug)]
pub struct DeliveryItem {
    pub result_name: String,
    pub device: Option<String>,
    pub unix_s: i64,
    pub stage: Stage,
    pub sources: Vec<PathBuf>,
    /// `None` for sets resumed from the journal.
    pub timings: Option<SetTimings>,
}

/// What became of a set, reported back to the service.
#[derive(Debug)]
pub enum DeliveryReport {
    /// Every sink succeeded and the sources are gone.
    Delivered { sources: Vec<PathBuf> },
    /// Given up for this run (`--once`); the journal keeps it for the next run.
    Undelivered { sources: Vec<PathBuf> },
    /// The result file vanished before it was delivered: compute the set again.
    Recompute { sources: Vec<PathBuf> },
}

/// The delivery actor's inbox.
pub enum DeliveryMsg {
    Deliver(DeliveryItem),
    /// Finish the step in progress and stop; what is left stays in the journal.
    Stop,
}

/// Settings of the delivery actor.
pub struct DeliveryConfig {
    pub result_dir: PathBuf,
    pub ftp: Option<FtpConfig>,
    pub amqp: Option<AmqpConfig>,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// `--once`: try each sink once per set, never wait for a retry.
    pub once: bool,
}

/// How long dropping [`Delivery`] waits for a step in progress (a hanging server).
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Handle of the delivery thread; dropping it stops and joins the thread. A thread stuck on a
/// hanging server past `STOP_GRACE` is left behind: nothing it does unjournaled is lost.
pub struct Delivery {
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
        // Bounded, but drained into the pending list at every turn, so a sink that is down
        // never blocks the workers.
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let (finished_tx, finished) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("delivery".into())
            .spawn(move || {
                // Dropped when the loop ends, however it ends.
                let _finished = finished_tx;
                DeliveryLoop::new(cfg, journal, reports).run(rx);
            })?;
        Ok(Delivery {
            tx,
            thread: Some(thread),
            finished,
        })
    }

    pub fn sender(&self) -> Sender<DeliveryMsg> {
        self.tx.clone()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let _ = self.tx.send_timeout(DeliveryMsg::Stop, STOP_GRACE);
        if let Err(RecvTimeoutError::Timeout) = self.finished.recv_timeout(STOP_GRACE) {
            log::warn!(
                "delivery is still waiting on a server; leaving it, the journal keeps its set"
            );
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct DeliveryLoop {
    cfg: DeliveryConfig,
    sinks: Sinks,
    journal: Arc<Mutex<Journal>>,
    reports: Sender<DeliveryReport>,
    ftp: Option<(FtpSink, Backoff)>,
    amqp: Option<(AmqpSink, Backoff)>,
    pending: VecDeque<Pending>,
}

struct Pending {
    item: DeliveryItem,
    upload: Duration,
    publish: Duration,
}

enum Advance {
    Done,
    Waiting,
    Failed,
}

impl DeliveryLoop {
    fn new(
        cfg: DeliveryConfig,
        journal: Arc<Mutex<Journal>>,
        reports: Sender<DeliveryReport>,
    ) -> DeliveryLoop {
        let backoff = || Backoff::new(cfg.retry_base, cfg.retry_max);
        DeliveryLoop {
            sinks: Sinks {
                ftp: cfg.ftp.is_some(),
                amqp: cfg.amqp.is_some(),
            },
            ftp: cfg.ftp.clone().map(|c| (FtpSink::new(c), backoff())),
            amqp: cfg.amqp.clone().map(|c| (AmqpSink::new(c), backoff())),
            cfg,
            journal,
            reports,
            pending: VecDeque::new(),
        }
    }

    fn run(mut self, rx: Receiver<DeliveryMsg>) {
        loop {
            // Wait for new work, or until the earliest backoff ends.
            let first = if self.pending.is_empty() {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                let wait = self.next_wake().saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut stop = false;
            for msg in first.into_iter().chain(rx.try_iter()) {
                match msg {
                    DeliveryMsg::Deliver(item) => self.pending.push_back(Pending {
                        item,
                        upload: Duration::ZERO,
                        publish: Duration::ZERO,
                    }),
                    DeliveryMsg::Stop => stop = true,
                }
            }
            if stop {
                if !self.pending.is_empty() {
                    log::info!(
                        "stopping with {} sets not yet delivered; they stay in the journal",
                        self.pending.len()
                    );
                }
                return;
            }
            self.advance_all();
        }
    }

    /// When a waiting set may move again: the earliest end of a sink's backoff, or in a
    /// second when none is backing off (a journal write failed).
    fn next_wake(&self) -> Instant {
        let ftp = self.ftp.as_ref().map(|(_, b)| b);
        let amqp = self.amqp.as_ref().map(|(_, b)| b);
        [ftp, amqp]
            .into_iter()
            .flatten()
            .filter_map(Backoff::next_try)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
    }

    fn advance_all(&mut self) {
        let mut keep = VecDeque::with_capacity(self.pending.len());
        while let Some(mut p) = self.pending.pop_front() {
            match self.advance(&mut p) {
                Advance::Done => {}
                Advance::Waiting => keep.push_back(p),
                Advance::Failed => {
                    let _ = self.reports.send(DeliveryReport::Undelivered {
                        sources: p.item.sources.clone(),
                    });
                }
            }
        }
        self.pending = keep;
    }

    fn journal(&self, stage: Stage, name: &str) -> std::io::Result<()> {
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.record(&Entry {
            stage,
            result_name: name.to_string(),
            sources: Vec::new(),
        })
    }

    /// A set that cannot move now waits for the retry, except with `--once`.
    fn wait_or_give_up(&self) -> Advance {
        if self.cfg.once {
            Advance::Failed
        } else {
            Advance::Waiting
        }
    }

    /// Moves one set forward as far as the sinks allow.
    fn advance(&mut self, p: &mut Pending) -> Advance {
        let name = p.item.result_name.clone();
        loop {
            let step = next_step(p.item.stage, self.sinks);
            let now = Instant::now();
            let started = Instant::now();
            let attempt: anyhow::Result<()> = match step {
                Step::Done => return Advance::Done,
                Step::Save => {
                    // Saved by the worker before the set reaches us; nothing to redo.
                    log::error!("{name}: reached delivery unsaved");
                    return Advance::Failed;
                }
                Step::Upload => {
                    let Some((ftp, backoff)) = self.ftp.as_mut() else {
                        unreachable!("next_step only uploads with FTP configured")
                    };
                    if !backoff.ready(now) {
                        return self.wait_or_give_up();
                    }
                    let bytes = match std::fs::read(self.cfg.result_dir.join(&name)) {
                        Ok(b) => b,
                        Err(e) => {
                            log::warn!("{name}: result file unreadable ({e}); computing it again");
                            let _ = self.reports.send(DeliveryReport::Recompute {
                                sources: p.item.sources.clone(),
                            });
                            return Advance::Done;
                        }
                    };
                    // The picture first, so that a consumer told of the result finds it.
                    let png_name = name.replace(".json", ".png");
                    let png = ftp
                        .upload_png()
                        .then(|| std::fs::read(self.cfg.result_dir.join(&png_name)).ok())
                        .flatten();
                    let r = match png {
                        Some(png) => ftp
                            .upload(&png_name, &png)
                            .and_then(|()| ftp.upload(&name, &bytes)),
                        None => ftp.upload(&name, &bytes),
                    };
                    p.upload = started.elapsed();
                    sink_outcome(backoff, "FTP upload", &name, r)
                }
                Step::Publish => {
                    let Some((amqp, backoff)) = self.amqp.as_mut() else {
                        unreachable!("next_step only publishes with RabbitMQ configured")
                    };
                    if !backoff.ready(now) {
                        return self.wait_or_give_up();
                    }
                    let r = amqp.publish(&name);
                    p.publish = started.elapsed();
                    sink_outcome(backoff, "RabbitMQ publish", &name, r)
                }
                Step::DeleteSources => {
                    let mut r = Ok(());
                    for src in &p.item.sources {
                        match std::fs::remove_file(src) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                r = Err(anyhow::anyhow!("cannot delete {}: {e}", src.display()));
                                break;
                            }
                        }
                    }
                    if let Err(e) = &r {
                        log::error!("{name}: {e:#}");
                    }
                    r
                }
            };
            if attempt.is_err() {
                return self.wait_or_give_up();
            }
            let Some(stage) = stage_after(step) else {
                return Advance::Done;
            };
            if let Err(e) = self.journal(stage, &name) {
                log::error!("{name}: cannot write the journal: {e}");
                return Advance::Waiting;
            }
            p.item.stage = stage;
            if stage == Stage::Deleted {
                self.log_done(p);
                let _ = self.reports.send(DeliveryReport::Delivered {
                    sources: p.item.sources.clone(),
                });
                return Advance::Done;
            }
        }
    }

    fn log_done(&self, p: &Pending) {
        let device = p.item.device.as_deref().unwrap_or("-");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let upload = if self.sinks.ftp {
            format!("upload {:.1} ms", ms(p.upload))
        } else {
            "upload off".to_string()
        };
        let publish = if self.sinks.amqp {
            format!("publish {:.1} ms", ms(p.publish))
        } else {
            "publish off".to_string()
        };
        match p.item.timings {
            Some(t) => log::info!(
                "set {} device {device} time {}: read {:.1} ms, compute {:.1} ms, save {:.1} ms, {upload}, {publish}, sources deleted",
                p.item.result_name,
                p.item.unix_s,
                ms(t.read),
                ms(t.compute),
                ms(t.save),
            ),
            None => log::info!(
                "set {} device {device} time {} (resumed): {upload}, {publish}, sources deleted",
                p.item.result_name,
                p.item.unix_s,
            ),
        }
    }
}

/// Updates a sink's backoff after an attempt and logs a failure.
fn sink_outcome(
    backoff: &mut Backoff,
    what: &str,
    name: &str,
    r: anyhow::Result<()>,
) -> anyhow::Result<()> {
    match &r {
        Ok(()) => {
            if backoff.failures() > 0 {
                log::info!("{what} works again");
            }
            backoff.succeeded();
        }
        Err(e) => {
            let wait = backoff.failed(Instant::now());
            log::warn!(
                "{what} of {name} failed: {e:#}; retrying in {:.1} s",
                wait.as_secs_f64()
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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
