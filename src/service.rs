//! `terawang run`: the service that watches `DATA_DIR` and delivers each set's result.
//!
//! Threads, joined by channels: notify's callback forwards paths into the coordinator's
//! inbox (bounded; an event dropped when it is full is found by the periodic rescan); the
//! coordinator (this function's thread) settles files, groups them ([`Grouper`]) and hands
//! complete sets to `engine-N` workers over a bounded channel; a worker reads, computes, saves
//! the result locally, journals it and passes it to the `delivery` thread ([`Delivery`]),
//! which uploads, publishes and finally deletes the eight sources. Results and reports come
//! back to the coordinator's inbox.
//!
//! On start the journal is replayed: saved but undelivered sets resume where they stopped and
//! their sources stay claimed. When `stop` is raised (SIGINT/SIGTERM) no new set is started,
//! sets being computed finish and are journaled, and the function returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::backend::{BackendChoice, make_correlators};
use crate::config::Config;
use crate::device::{ReadError, TapName};
use crate::engine::{Engine, EngineConfig, n_fft_for};
use crate::group::{Grouper, TapSet};
use crate::journal::{Entry, Journal, Stage};
use crate::process::{BadMembers, compute_outputs, read_set};
use crate::result::Durability;
use crate::sink::{
    Delivery, DeliveryConfig, DeliveryItem, DeliveryMsg, DeliveryReport, SetTimings,
};
use crate::watch::{FileSig, Kind, REJECTED_DIR, Settle, Watcher, classify, reject};

/// Options from the command line.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Process what is there, deliver it (one try per sink) and return.
    pub once: bool,
    pub threads: usize,
    /// Correlator backend; `auto` is settled once, before the workers start.
    pub backend: BackendChoice,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub delivered: usize,
    /// Sets left in the journal for a later run (`--once` with a sink down).
    pub undelivered: usize,
    pub rejected: usize,
}

enum Inbox {
    Path(PathBuf),
    Outcome(Outcome),
    Report(DeliveryReport),
}

enum Outcome {
    /// Saved and handed to delivery.
    Saved,
    /// Could not save; the members are released.
    Failed { members: Vec<PathBuf>, why: String },
    BadMembers {
        rejected: Vec<ReadError>,
        good: Vec<(TapName, PathBuf)>,
    },
}

/// Shared by the workers.
struct WorkerCtx {
    cfg: Config,
    journal: Arc<Mutex<Journal>>,
    delivery: Sender<DeliveryMsg>,
}

/// Runs the service until `stop` is raised (or, with `once`, until the work found at start
/// is done).
pub fn run(
    cfg: &Config,
    opts: &ServiceOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<RunSummary> {
    for (var, dir) in [
        ("DATA_DIR", &cfg.data_dir),
        ("RESULT_DIR", &cfg.result_dir),
        ("TEMP_DIR", &cfg.temp_dir),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{var}: cannot create {}", dir.display()))?;
    }
    let mut cfg = cfg.clone();
    cfg.data_dir = cfg
        .data_dir
        .canonicalize()
        .with_context(|| format!("DATA_DIR: {}", cfg.data_dir.display()))?;
    match &cfg.ftp {
        Some(f) => log::info!("FTP upload to {f:?}"),
        None => log::info!("FTP upload is off (FTP_HOST is empty)"),
    }
    match &cfg.amqp {
        Some(a) => log::info!("publishing to {a:?}"),
        None => log::info!("RabbitMQ publishing is off (RABBITMQ_HOST is empty)"),
    }

    let journal = Journal::open(&cfg.temp_dir).with_context(|| {
        format!(
            "TEMP_DIR: cannot open the journal in {}",
            cfg.temp_dir.display()
        )
    })?;
    let resumed: Vec<DeliveryItem> = journal
        .state()
        .sets
        .iter()
        .map(|(name, rec)| DeliveryItem {
            result_name: name.clone(),
            device: rec
                .sources
                .first()
                .and_then(|s| TapName::parse(s).ok())
                .and_then(|t| t.device),
            unix_s: rec
                .sources
                .iter()
                .filter_map(|s| TapName::parse(s).ok())
                .map(|t| t.unix_s)
                .min()
                .unwrap_or(0),
            stage: rec.stage,
            sources: rec.sources.iter().map(|s| cfg.data_dir.join(s)).collect(),
            timings: None,
        })
        .collect();
    let journal = Arc::new(Mutex::new(journal));

    let (inbox_tx, inbox_rx) = bounded::<Inbox>(4096);
    let (report_tx, report_rx) = bounded::<DeliveryReport>(1024);
    {
        // Reports join the inbox through a small forwarding thread, so delivery never blocks
        // on a full inbox while the coordinator waits on it.
        let inbox_tx = inbox_tx.clone();
        std::thread::Builder::new()
            .name("reports".into())
            .spawn(move || {
                for r in report_rx {
                    if inbox_tx.send(Inbox::Report(r)).is_err() {
                        break;
                    }
                }
            })?;
    }
    let delivery = Delivery::spawn(
        DeliveryConfig {
            result_dir: cfg.result_dir.clone(),
            ftp: cfg.ftp.clone(),
            amqp: cfg.amqp.clone(),
            retry_base: Duration::from_millis(500).min(cfg.retry_max),
            retry_max: cfg.retry_max,
            once: opts.once,
        },
        journal.clone(),
        report_tx,
    )?;

    let mut co = Coordinator {
        settle: Settle::new(cfg.settle),
        grouper: Grouper::new(cfg.group_window_s),
        sigs: HashMap::new(),
        claimed: HashMap::new(),
        ignored: HashSet::new(),
        queue: VecDeque::new(),
        in_flight: 0,
        outstanding: 0,
        summary: RunSummary::default(),
        cfg: cfg.clone(),
    };
    for item in resumed {
        log::info!("resuming {} at stage {:?}", item.result_name, item.stage);
        co.claimed
            .extend(item.sources.iter().map(|s| (s.clone(), None)));
        co.outstanding += 1;
        let _ = delivery.sender().send(DeliveryMsg::Deliver(item));
    }

    let watcher = {
        let tx = inbox_tx.clone();
        Watcher::start(&cfg.data_dir, move |p| {
            let _ = tx.try_send(Inbox::Path(p));
        })
        .with_context(|| format!("DATA_DIR: cannot watch {}", cfg.data_dir.display()))?
    };

    let threads = opts.threads.max(1);
    let (job_tx, job_rx) = bounded::<TapSet<PathBuf>>(threads * 2);
    let ctx = Arc::new(WorkerCtx {
        cfg: cfg.clone(),
        journal: journal.clone(),
        delivery: delivery.sender(),
    });
    let engine_cfg = EngineConfig {
        diameter_m: cfg.diameter_m,
        trigger_lead: cfg.trigger_lead,
        ..EngineConfig::default()
    };
    let correlators = make_correlators(opts.backend, n_fft_for(&engine_cfg), threads)
        .map_err(|e| anyhow::anyhow!("--backend {}: {e}", opts.backend))?;
    let mut workers = Vec::new();
    for (w, correlator) in correlators.into_iter().enumerate() {
        let engine_cfg = engine_cfg.clone();
        let job_rx: Receiver<TapSet<PathBuf>> = job_rx.clone();
        let inbox_tx = inbox_tx.clone();
        let ctx = ctx.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("engine-{w}"))
                .spawn(move || {
                    let mut engine = Engine::with_correlator(engine_cfg, correlator);
                    for set in job_rx {
                        let outcome = work(&mut engine, &set, &ctx);
                        if inbox_tx.send(Inbox::Outcome(outcome)).is_err() {
                            break;
                        }
                    }
                })?,
        );
    }
    drop(job_rx);
    drop(ctx);

    co.scan();
    let tick = (cfg.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut last_rescan = Instant::now();
    log::info!(
        "watching {} (settle {:.1} s, rescan every {:.0} s, {threads} engine threads)",
        cfg.data_dir.display(),
        cfg.settle.as_secs_f64(),
        cfg.rescan.as_secs_f64()
    );
    while !stop.load(Ordering::Relaxed) {
        let first = inbox_rx.recv_timeout(tick).ok();
        for msg in first.into_iter().chain(inbox_rx.try_iter()) {
            co.handle(msg);
        }
        if last_rescan.elapsed() >= cfg.rescan {
            co.scan();
            last_rescan = Instant::now();
        }
        co.step();
        while co.in_flight < threads * 2 {
            let Some(set) = co.queue.pop_front() else {
                break;
            };
            job_tx.send(set).context("the engine workers stopped")?;
            co.in_flight += 1;
        }
        if opts.once && co.idle() {
            break;
        }
    }

    // Stop: no new sets; let the ones being computed finish and reach the journal.
    drop(job_tx);
    drop(watcher);
    let deadline = Instant::now() + Duration::from_secs(4);
    while co.in_flight > 0 && Instant::now() < deadline {
        if let Ok(msg) = inbox_rx.recv_timeout(Duration::from_millis(50)) {
            co.handle(msg);
        }
    }
    for w in workers {
        let _ = w.join();
    }
    drop(delivery);
    for msg in inbox_rx.try_iter() {
        co.handle(msg);
    }
    if !co.queue.is_empty() {
        log::info!(
            "{} complete sets not started; they are picked up at the next start",
            co.queue.len()
        );
    }
    Ok(co.summary)
}

struct Coordinator {
    cfg: Config,
    settle: Settle,
    grouper: Grouper<PathBuf>,
    /// Signature of each file when it settled.
    sigs: HashMap<PathBuf, FileSig>,
    /// Sources of sets being computed or delivered, with their signature when claimed
    /// (`None` for sets resumed from the journal).
    claimed: HashMap<PathBuf, Option<FileSig>>,
    ignored: HashSet<PathBuf>,
    queue: VecDeque<TapSet<PathBuf>>,
    in_flight: usize,
    /// Sets handed to delivery and not reported back.
    outstanding: isize,
    summary: RunSummary,
}

impl Coordinator {
    fn idle(&self) -> bool {
        self.settle.is_empty()
            && self.queue.is_empty()
            && self.in_flight == 0
            && self.outstanding <= 0
    }

    /// Lists the data folder and looks at every entry.
    fn scan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.data_dir) else {
            log::warn!("cannot list {}", self.cfg.data_dir.display());
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            self.look(p);
        }
    }

    /// Something happened to `path`.
    fn look(&mut self, path: PathBuf) {
        if self.claimed.contains_key(&path) {
            return;
        }
        if self.sigs.contains_key(&path) {
            // Pending in the grouper: taken out if it vanished or changed.
            let now = FileSig::of(&path);
            if now.as_ref() == self.sigs.get(&path) {
                return;
            }
            self.grouper.remove(&path);
            self.sigs.remove(&path);
        }
        match classify(&self.cfg.data_dir, &path) {
            Kind::Tap(_) => self
                .settle
                .observe(&path, FileSig::of(&path), Instant::now()),
            Kind::Ignored(why) => {
                let is_rejected_dir = path.file_name().is_some_and(|n| n == REJECTED_DIR)
                    || path
                        .parent()
                        .and_then(Path::file_name)
                        .is_some_and(|n| n == REJECTED_DIR);
                if is_rejected_dir {
                    return;
                }
                if !path.exists() {
                    self.ignored.remove(&path);
                } else if self.ignored.insert(path.clone()) {
                    // Hidden files are usually uploads in progress, renamed in later.
                    let hidden = path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    let level = if hidden {
                        log::Level::Debug
                    } else {
                        log::Level::Info
                    };
                    log::log!(level, "ignoring {}: {why}", path.display());
                }
            }
        }
    }

    /// Re-examines settling files, groups the settled ones and queues complete sets.
    fn step(&mut self) {
        let now = Instant::now();
        for p in self.settle.paths() {
            self.settle.observe(&p, FileSig::of(&p), now);
        }
        for (path, sig) in self.settle.take_settled(now) {
            if let Kind::Tap(name) = classify(&self.cfg.data_dir, &path) {
                self.sigs.insert(path.clone(), sig);
                self.grouper.add(name, path);
            }
        }
        for set in self.grouper.take_complete() {
            for m in &set.members {
                let sig = self.sigs.remove(&m.key);
                self.claimed.insert(m.key.clone(), sig);
            }
            self.queue.push_back(set);
        }
    }

    fn handle(&mut self, msg: Inbox) {
        match msg {
            Inbox::Path(p) => self.look(p),
            Inbox::Outcome(o) => {
                self.in_flight -= 1;
                match o {
                    Outcome::Saved => self.outstanding += 1,
                    Outcome::Failed { members, why } => {
                        log::error!("{why}");
                        for m in members {
                            self.claimed.remove(&m);
                        }
                    }
                    Outcome::BadMembers { rejected, good } => {
                        for e in rejected {
                            let settled = self.claimed.remove(&e.path).flatten();
                            self.set_aside(e, settled);
                        }
                        for (name, path) in good {
                            self.claimed.remove(&path);
                            if let Some(sig) = FileSig::of(&path) {
                                self.sigs.insert(path.clone(), sig);
                                self.grouper.add(name, path);
                            }
                        }
                    }
                }
            }
            Inbox::Report(r) => {
                self.outstanding -= 1;
                match r {
                    DeliveryReport::Delivered { sources } => {
                        self.summary.delivered += 1;
                        for s in sources {
                            self.claimed.remove(&s);
                        }
                    }
                    DeliveryReport::Undelivered { .. } => self.summary.undelivered += 1,
                    DeliveryReport::Recompute { sources } => {
                        for s in sources {
                            self.claimed.remove(&s);
                            self.look(s);
                        }
                    }
                }
            }
        }
    }

    /// A file failed to read after it had settled: set it aside, unless it changed since.
    fn set_aside(&mut self, e: ReadError, settled: Option<FileSig>) {
        let Some(now) = FileSig::of(&e.path) else {
            return;
        };
        if let Some(settled) = settled
            && settled != now
        {
            self.settle.observe(&e.path, Some(now), Instant::now());
            return;
        }
        match reject(&self.cfg.data_dir, &e.path, &e.kind) {
            Ok(dst) => {
                self.summary.rejected += 1;
                log::warn!("rejected {e}; moved to {}", dst.display());
            }
            Err(io) => log::error!("{e}; cannot move it aside: {io}"),
        }
    }
}

/// Reads, computes, saves and journals one set, then hands it to delivery.
fn work(engine: &mut Engine, set: &TapSet<PathBuf>, ctx: &WorkerCtx) -> Outcome {
    let t0 = Instant::now();
    let taps = match read_set(set) {
        Ok(taps) => taps,
        Err(BadMembers { rejected, good }) => return Outcome::BadMembers { rejected, good },
    };
    let t_read = t0.elapsed();
    let t1 = Instant::now();
    let members: Vec<PathBuf> = set.members.iter().map(|m| m.key.clone()).collect();
    let outputs = match compute_outputs(engine, set, &taps, true) {
        Ok(outputs) => outputs,
        Err(why) => return Outcome::Failed { members, why },
    };
    let name = outputs.result_name();
    let t_compute = t1.elapsed();
    let sources: Vec<String> = members
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let t2 = Instant::now();
    let save = || -> anyhow::Result<()> {
        let mut j = ctx.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.record(&Entry {
            stage: Stage::Computed,
            result_name: name.clone(),
            sources,
        })
        .context("cannot write the journal")?;
        drop(j);
        outputs
            .write(&ctx.cfg.temp_dir, &ctx.cfg.result_dir, Durability::Durable)
            .with_context(|| format!("cannot save in {}", ctx.cfg.result_dir.display()))?;
        let mut j = ctx.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.record(&Entry {
            stage: Stage::Saved,
            result_name: name.clone(),
            sources: Vec::new(),
        })
        .context("cannot write the journal")?;
        Ok(())
    };
    if let Err(e) = save() {
        return Outcome::Failed {
            members,
            why: format!("{name}: {e:#}"),
        };
    }
    let item = DeliveryItem {
        result_name: name,
        device: set.device.clone(),
        unix_s: set.unix_s,
        stage: Stage::Saved,
        sources: members,
        timings: Some(SetTimings {
            read: t_read,
            compute: t_compute,
            save: t2.elapsed(),
        }),
    };
    let _ = ctx.delivery.send(DeliveryMsg::Deliver(item));
    Outcome::Saved
}
