//! `terawang run`: the service that watches `DATA_DIR` and delivers each set's result.
//!
//! One owner decides, thin threads do the I/O. The coordinator (this function's thread) owns
//! every file and set: notify's callback forwards paths into its inbox (bounded; an event
//! dropped when it is full makes it list the folders before it forms the next set); it
//! settles files ([`Settle`]), reads each one once it settled (a bad one is set aside at once,
//! a good one's taps are kept for its set), groups them ([`Grouper`]), and keeps every complete
//! set in a [`SetBook`], the pure state machine of a set's life, which says what comes next.
//! `engine-N` workers compute (with a GPU: read and hand to the `gpu` thread, which estimates
//! the sets ready together in one dispatch), save and journal the sets it hands them and
//! report back; the `delivery-ftp`, `delivery-amqp` and `delivery-local` threads
//! ([`Delivery`], one per [`Lane`]) do the upload, publish and deletion steps it hands each of
//! them one at a time, and report back. Nothing else keeps state about a set.
//!
//! An entry named like a tap that is not a regular file (a link, a FIFO, a folder) is set
//! aside without being opened. A leftover that can never join a set (see [`crate::group`])
//! is set aside too, and files still waiting for their set after the window plus
//! `INCOMPLETE_GRACE_SECONDS` are logged once with the taps they miss. [`Metrics`] counts all
//! of it for `METRICS_ADDR`.
//!
//! On start the journal is replayed: saved but undelivered sets enter the book where they
//! stopped and their sources stay claimed; temporary files a killed run left in `TEMP_DIR`
//! are removed. When `stop` is raised (SIGINT/SIGTERM) no new set is started, sets being
//! computed finish and are journaled, and the function returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::backend::{BackendChoice, make_correlator, make_correlators, settled};
use crate::config::{Config, FtpConfig};
use crate::device::{N_SENSORS, ReadError, SetRecording, TapName, TapRecording, read_tap_file};
use crate::engine::{Engine, EngineConfig, SetEstimate, n_fft_for};
use crate::group::{Grouper, Pending, TapSet};
use crate::job::{Incoming, Job, JobConsumer, JobControl, JobFile, JobPublisher};
use crate::journal::{Entry, Journal, Sinks, Stage};
use crate::lifecycle::{Event, Lane, SetBook, SetTimings};
use crate::metrics::{Metrics, MetricsServer, SinkKind, StageTimer};
use crate::process::{
    BadMembers, MAX_GPU_BATCH, ReadSet, compute_outputs, estimate_ready, read_set,
};
use crate::remote::{RemoteConfig, RemoteSource};
use crate::result::{Durability, ResultName, SetOutputs};
use crate::sink::{Delivery, DeliveryConfig, DeliveryMsg, DeliveryReport};
use crate::survey::{Survey, SurveyName, newest_per_set, read_survey};
use crate::watch::{
    FileSig, JOBS_DIR, Kind, REJECTED_DIR, Roots, STAGING_DIR, Settle, WatchEvent, Watcher,
    classify, not_a_regular_file, reject,
};

/// What one `terawang run` process does (`--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process: watch, group, compute, deliver (the default).
    All,
    /// Watch and group; publish each complete set as a job to `RABBITMQ_JOB_QUEUE`.
    Ingest,
    /// Consume jobs, compute, deliver, then acknowledge.
    Worker,
}

/// Options from the command line.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    pub role: Role,
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

/// How often the files still settling are looked at again (their events are seen at once).
const SETTLE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// A device forms no set until none of its tap files arrived for this long (besides none
/// still settling): a backlog copied in name order arrives in no order of time, and a set
/// formed before an earlier one of its device had all its files would make that one a
/// leftover.
const DEVICE_QUIET: Duration = Duration::from_millis(500);

/// How often idle delivery threads check that the sinks answer (for `/healthz`).
const PROBE_EVERY: Duration = Duration::from_secs(10);

enum Inbox {
    Watch(WatchEvent),
    /// A job from the job queue (`--role worker`).
    Job(Incoming),
    WorkerReport(WorkerReport),
    Report(DeliveryReport),
}

/// What a worker did with a set, by its result name.
enum WorkerReport {
    /// Saved and journaled.
    Saved { name: String, timings: SetTimings },
    /// Could not compute or save it.
    Failed { name: String, why: String },
    /// Some files could not be read.
    BadMembers {
        name: String,
        rejected: Vec<ReadError>,
        good: Vec<(TapName, PathBuf)>,
    },
}

/// The eight taps of a set as the coordinator read them when they settled, each with the
/// file's signature then.
type ParsedSet = [(FileSig, TapRecording); N_SENSORS];

/// At most this many parsed taps wait in the coordinator for their set (about 25 KB each for
/// a 500-sample file); beyond it, a worker reads the files again.
const MAX_PARSED_TAPS: usize = 2048;

/// The most sets that go into one GPU dispatch in `run`, and so the most a GPU worker holds
/// besides those being read and written.
const RUN_GPU_BATCH: usize = 64;

/// A set for a worker.
struct SetJob {
    set: TapSet<PathBuf>,
    /// The report's warning about its diameter (a rejected survey).
    warning: Option<String>,
    /// Its taps, when the coordinator still held all eight.
    parsed: Option<Box<ParsedSet>>,
}

/// A set the GPU thread estimated in a batch, for a worker to build, save and journal.
type Estimated = Box<(ReadJob, Result<SetEstimate, String>)>;

/// A set read by a worker: the taps, the survey and what the report says about them.
struct ReadJob {
    read: ReadSet,
    warning: Option<String>,
    /// Reading it took this long.
    took_read: Duration,
    /// Its share of the GPU batch that estimated it.
    took_estimate: Duration,
}

impl std::borrow::Borrow<ReadSet> for ReadJob {
    fn borrow(&self) -> &ReadSet {
        &self.read
    }
}

/// Shared by the workers.
struct WorkerCtx {
    cfg: Config,
    /// `--role ingest`: publish sets as jobs instead of computing them.
    ingest: bool,
    roots: Roots,
    journal: Arc<Mutex<Journal>>,
    metrics: Arc<Metrics>,
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
    if opts.role != Role::All && cfg.amqp.is_none() {
        anyhow::bail!(
            "--role {:?} needs RabbitMQ for its job queue: RABBITMQ_HOST is empty",
            opts.role
        );
    }
    if opts.role == Role::Worker && opts.once {
        anyhow::bail!("--once is for --role all or ingest: a worker waits for jobs");
    }
    let source_folder = cfg
        .ftp
        .as_ref()
        .and_then(|f| f.source_folder.clone())
        .filter(|_| opts.role != Role::Worker);
    let roots = Roots {
        data: cfg.data_dir.clone(),
        staging: cfg.temp_dir.join(STAGING_DIR),
        remote: source_folder.is_some(),
        jobs: cfg.temp_dir.join(JOBS_DIR),
    };
    // An ingest only hands sets on: its one step after the job's confirm is deleting them.
    let ingest = opts.role == Role::Ingest;
    let sinks = Sinks {
        ftp: cfg.ftp.is_some() && !ingest,
        amqp: cfg.amqp.is_some() && !ingest,
        archive: cfg.ftp.as_ref().is_some_and(|f| f.archive_folder.is_some()) && !ingest,
        graph: cfg.amqp.as_ref().is_some_and(|a| a.graph_queue.is_some()) && !ingest,
    };
    let metrics = Metrics::new(
        &[
            sinks.ftp.then_some(SinkKind::Ftp),
            (sinks.amqp || ingest).then_some(SinkKind::Amqp),
            source_folder.is_some().then_some(SinkKind::FtpSource),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>(),
    );
    let _metrics_server = match cfg.metrics_addr {
        Some(addr) if !opts.once => {
            let server = MetricsServer::start(addr, metrics.clone())?;
            log::info!("metrics on http://{}/metrics and /healthz", server.addr());
            Some(server)
        }
        _ => None,
    };
    remove_temporary_files(&cfg.temp_dir);
    match &cfg.ftp {
        Some(f) => log::info!("FTP upload to {f:?}"),
        None => log::info!("FTP upload is off (FTP_HOST is empty)"),
    }
    match &cfg.amqp {
        Some(a) => log::info!("publishing to {a:?}"),
        None => log::info!("RabbitMQ publishing is off (RABBITMQ_HOST is empty)"),
    }
    if let Some(folder) = cfg.ftp.as_ref().and_then(|f| f.archive_folder.as_ref()) {
        log::info!("raw tap files archived in {folder} on the FTP server");
    }
    if let Some(queue) = cfg.amqp.as_ref().and_then(|a| a.graph_queue.as_ref()) {
        log::info!("the viewer's message goes to queue {queue}");
    }

    let journal = Journal::open(&cfg.temp_dir).with_context(|| {
        format!(
            "TEMP_DIR: cannot open the journal in {}",
            cfg.temp_dir.display()
        )
    })?;
    let retry_base = Duration::from_millis(500).min(cfg.retry_max);
    let mut book = SetBook::new(
        sinks,
        retry_base,
        cfg.retry_max,
        opts.once,
        (!opts.once).then_some(PROBE_EVERY),
    );
    for (name, rec) in &journal.state().sets {
        log::info!("resuming {name} at stage {:?}", rec.stage);
        let sources = rec.sources.iter().map(|s| roots.resolve(s)).collect();
        book.resumed(name.clone(), sources, rec.stage);
    }
    let journal = Arc::new(Mutex::new(journal));

    let (inbox_tx, inbox_rx) = bounded::<Inbox>(4096);
    let (report_tx, report_rx) = bounded::<DeliveryReport>(16);
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
            metrics: metrics.clone(),
            roots: roots.clone(),
        },
        journal.clone(),
        report_tx,
    )?;

    let missed_events = Arc::new(AtomicBool::new(false));
    let remote = match (&cfg.ftp, &source_folder) {
        (Some(ftp), Some(folder)) => {
            log::info!(
                "taking tap and survey files from {folder} on the FTP server too (listed every {:.1} s, staged in {})",
                cfg.ftp_poll.as_secs_f64(),
                roots.staging.display()
            );
            let tx = inbox_tx.clone();
            let missed = missed_events.clone();
            let ftp = FtpConfig {
                folder: folder.clone(),
                upload_png: false,
                archive_folder: None,
                source_folder: None,
                ..ftp.clone()
            };
            let remote_cfg = RemoteConfig {
                ftp,
                staging: roots.staging.clone(),
                poll: cfg.ftp_poll,
                retry_max: cfg.retry_max,
            };
            Some(RemoteSource::spawn(
                remote_cfg,
                metrics.clone(),
                move |p| {
                    // Never lost: a path the inbox cannot take in time is found by a listing.
                    if tx
                        .send_timeout(Inbox::Watch(WatchEvent::Path(p)), Duration::from_secs(1))
                        .is_err()
                    {
                        missed.store(true, Ordering::Relaxed);
                    }
                },
            )?)
        }
        _ => None,
    };

    let watcher = match opts.role {
        Role::Worker => None,
        Role::All | Role::Ingest => {
            let tx = inbox_tx.clone();
            let missed = missed_events.clone();
            Some(
                Watcher::start(&cfg.data_dir, move |event| {
                    if tx.try_send(Inbox::Watch(event)).is_err() {
                        missed.store(true, Ordering::Relaxed);
                    }
                })
                .with_context(|| format!("DATA_DIR: cannot watch {}", cfg.data_dir.display()))?,
            )
        }
    };
    let mut workers = Vec::new();
    let (job_control, consumer) = match (opts.role, &cfg.amqp) {
        (Role::Worker, Some(amqp)) => {
            let (control_tx, control_rx) = crossbeam_channel::unbounded();
            let tx = inbox_tx.clone();
            let prefetch = u16::try_from(opts.threads.max(1)).unwrap_or(u16::MAX);
            let consumer = JobConsumer::spawn(
                amqp,
                &cfg.job_queue,
                prefetch,
                cfg.retry_max,
                control_rx,
                move |incoming| {
                    let _ = tx.send(Inbox::Job(incoming));
                },
            )?;
            (Some(control_tx), Some(consumer))
        }
        _ => (None, None),
    };

    let threads = opts.threads.max(1);
    let engine_cfg = EngineConfig {
        diameter_m: cfg.diameter_m,
        trigger_lead: cfg.trigger_lead,
        ..EngineConfig::default()
    };
    let n_fft = n_fft_for(&engine_cfg);
    let backend_error = |e| anyhow::anyhow!("--backend {}: {e}", opts.backend);
    // The first correlator settles `auto`. A GPU is one context for the process, fed in
    // batches by its own thread; the CPU is one correlator per worker. An ingest computes
    // nothing: it never opens a GPU.
    let backend = if ingest {
        if opts.backend != BackendChoice::Cpu {
            log::info!(
                "--role ingest computes nothing: --backend {} is not used",
                opts.backend
            );
        }
        BackendChoice::Cpu
    } else {
        opts.backend
    };
    let first = make_correlator(backend, n_fft, false).map_err(backend_error)?;
    let (gpu, mut correlators) = match settled(first.as_ref()) {
        BackendChoice::Gpu => (Some(first), Vec::new()),
        _ => {
            let mut rest =
                make_correlators(BackendChoice::Cpu, n_fft, threads - 1).map_err(backend_error)?;
            rest.push(first);
            (None, rest)
        }
    };
    // Each set in flight is in at most one place at a time, so the channel is never full.
    let max_in_flight = threads * 2 + if gpu.is_some() { RUN_GPU_BATCH } else { 0 };
    let (work_tx, work_rx) = bounded::<SetJob>(max_in_flight);
    let ctx = Arc::new(WorkerCtx {
        cfg: cfg.clone(),
        ingest,
        roots: roots.clone(),
        journal: journal.clone(),
        metrics: metrics.clone(),
    });
    let gpu_mode = gpu.is_some();
    let (est_tx, est_rx) = crossbeam_channel::unbounded::<Estimated>();
    let gpu_tx = match gpu {
        Some(correlator) => {
            log::info!(
                "GPU: one {} context, up to {RUN_GPU_BATCH} sets per dispatch",
                correlator.name()
            );
            let (gpu_tx, gpu_rx) = crossbeam_channel::unbounded::<ReadJob>();
            let engine = Engine::with_correlator(engine_cfg.clone(), correlator);
            workers.push(
                std::thread::Builder::new()
                    .name("gpu".into())
                    .spawn(move || estimate_on_gpu(engine, &gpu_rx, &est_tx))?,
            );
            Some(gpu_tx)
        }
        None => None,
    };
    for w in 0..threads {
        let engine_cfg = engine_cfg.clone();
        let work_rx: Receiver<SetJob> = work_rx.clone();
        let est_rx = if gpu_mode {
            est_rx.clone()
        } else {
            crossbeam_channel::never()
        };
        let inbox_tx = inbox_tx.clone();
        let ctx = ctx.clone();
        let mut gpu_tx = gpu_tx.clone();
        let correlator = correlators.pop();
        workers.push(
            std::thread::Builder::new()
                .name(format!("engine-{w}"))
                .spawn(move || {
                    if let Err(e) = lower_thread_priority(ctx.cfg.engine_nice) {
                        log::warn!(
                            "engine thread {w} runs at the service's priority, ENGINE_NICE={} \
                             could not be applied: {e}",
                            ctx.cfg.engine_nice
                        );
                    }
                    let mut engine =
                        correlator.map(|c| Engine::with_correlator(engine_cfg.clone(), c));
                    let mut publisher = None;
                    let never = crossbeam_channel::never::<SetJob>();
                    let mut open = true;
                    loop {
                        // With a GPU, a worker that gets no more sets lets go of the GPU
                        // thread, then finishes what it still sends back.
                        let sets = if open { &work_rx } else { &never };
                        let outcome = crossbeam_channel::select! {
                            recv(sets) -> job => match job {
                                Err(_) if gpu_mode => {
                                    open = false;
                                    gpu_tx = None;
                                    continue;
                                }
                                Err(_) => break,
                                Ok(job) if ctx.ingest => enqueue(job, &mut publisher, &ctx),
                                Ok(job) => match (&gpu_tx, engine.as_mut()) {
                                    (Some(gpu_tx), _) => match read_job(job, &ctx) {
                                        Ok(read) => {
                                            if gpu_tx.send(read).is_err() {
                                                break;
                                            }
                                            continue;
                                        }
                                        Err(report) => report,
                                    },
                                    (None, Some(engine)) => work(engine, job, &ctx),
                                    (None, None) => unreachable!("a CPU worker has its engine"),
                                },
                            },
                            recv(est_rx) -> done => match done {
                                Ok(done) => {
                                    let (read, est) = *done;
                                    finish_estimated(&engine_cfg, read, est, &ctx)
                                }
                                Err(_) => break,
                            },
                        };
                        if inbox_tx.send(Inbox::WorkerReport(outcome)).is_err() {
                            break;
                        }
                    }
                })?,
        );
    }
    drop(work_rx);
    drop(gpu_tx);
    drop(ctx);

    let mut co = Coordinator {
        settle: Settle::new(cfg.settle),
        grouper: Grouper::new(cfg.group_window_s),
        files: HashMap::new(),
        parsed: HashMap::new(),
        surveys: BTreeMap::new(),
        bad_surveys: Vec::new(),
        held: Vec::new(),
        diameter_warnings: HashMap::new(),
        jobs: HashMap::new(),
        job_control,
        roots: roots.clone(),
        book,
        last_arrival: HashMap::new(),
        missed_events,
        ignored: HashSet::new(),
        summary: RunSummary::default(),
        metrics: metrics.clone(),
        last_incomplete_check: Instant::now(),
        last_settle_check: Instant::now(),
        cfg: cfg.clone(),
    };
    if opts.role != Role::Worker {
        co.scan();
    }
    let tick = (cfg.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut last_rescan = Instant::now();
    match opts.role {
        Role::Worker => log::info!(
            "worker: computing jobs from queue {} with {threads} engine threads",
            cfg.job_queue
        ),
        role => log::info!(
            "watching {} (settle {:.1} s, rescan every {:.0} s, {threads} {}){}",
            cfg.data_dir.display(),
            cfg.settle.as_secs_f64(),
            cfg.rescan.as_secs_f64(),
            if role == Role::Ingest {
                "publishing threads"
            } else {
                "engine threads"
            },
            if role == Role::Ingest {
                format!("; complete sets go to queue {} as jobs", cfg.job_queue)
            } else {
                String::new()
            }
        ),
    }
    while !stop.load(Ordering::Relaxed) {
        // Read before the inbox is drained: what those listings found is in it by now.
        let listings = remote.as_ref().map_or(u64::MAX, RemoteSource::listings);
        let wait = co.book.next_wake().map_or(tick, |t| {
            t.saturating_duration_since(Instant::now()).min(tick)
        });
        let first = inbox_rx.recv_timeout(wait).ok();
        for msg in first.into_iter().chain(inbox_rx.try_iter()) {
            co.handle(msg);
        }
        if last_rescan.elapsed() >= cfg.rescan && opts.role != Role::Worker {
            co.scan();
            last_rescan = Instant::now();
        }
        co.step();
        while co.book.counts().computing < max_in_flight {
            let Some(set) = co.book.take_job() else {
                break;
            };
            let warning = co.diameter_warnings.remove(&set.result_name().json());
            let parsed = co.take_parsed(&set);
            work_tx
                .send(SetJob {
                    set,
                    warning,
                    parsed,
                })
                .context("the engine workers stopped")?;
        }
        co.deliver(&delivery);
        co.update_gauges();
        metrics.heartbeat();
        // With `--once`, the FTP source folder is listed twice (a file is taken when two
        // listings agree) before the run may end.
        if opts.once && co.idle() && listings >= 2 {
            break;
        }
    }

    // Stop: no new sets; let the ones being computed finish and reach the journal.
    drop(work_tx);
    drop(watcher);
    drop(remote);
    drop(consumer);
    let deadline = Instant::now() + Duration::from_secs(4);
    while co.book.counts().computing > 0 && Instant::now() < deadline {
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
    let counts = co.book.counts();
    if counts.queued > 0 {
        log::info!(
            "{} complete sets not started; they are picked up at the next start",
            counts.queued
        );
    }
    if counts.delivering > 0 {
        log::info!(
            "stopping with {} sets not yet delivered; they stay in the journal",
            counts.delivering
        );
    }
    Ok(co.summary)
}

/// Lowers the calling thread's scheduling priority by `increment` (its nice value, at most
/// 19). The engine threads do (`ENGINE_NICE`): where they fill the CPU, the delivery threads
/// (and an FTP server or broker on the same machine) still run as soon as their answer comes,
/// so sets are delivered while others are computed instead of after. On Linux a thread's nice
/// value is its own; elsewhere nothing changes.
fn lower_thread_priority(increment: i32) -> std::io::Result<()> {
    if increment == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        let current = thread_nice()?;
        // SAFETY: a plain system call on this thread's own id.
        let set = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS as _,
                libc::gettid() as libc::id_t,
                (current + increment).min(19),
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's nice value (on Linux a thread's own).
#[cfg(target_os = "linux")]
fn thread_nice() -> std::io::Result<i32> {
    // SAFETY: plain system calls on this thread's own id; errno is this thread's.
    unsafe {
        // -1 is a nice value as well as the error return: errno tells them apart.
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as libc::id_t);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(nice)
    }
}

/// A tap file read and settled: waiting in the grouper, or claimed by a set in the book.
struct Seen {
    /// Its signature when it settled.
    sig: FileSig,
    since: Instant,
    /// Logged as incomplete already.
    reported: bool,
}

/// A survey file that was rejected: its set waits `FILE_SETTLE_SECONDS` for a good one, then
/// goes on with the default diameter and says why in its report.
struct BadSurvey {
    name: SurveyName,
    file: String,
    why: String,
    at: Instant,
}

struct Coordinator {
    cfg: Config,
    roots: Roots,
    settle: Settle,
    grouper: Grouper<PathBuf>,
    /// Tap and survey files read and settled, not yet delivered.
    files: HashMap<PathBuf, Seen>,
    /// Tap files as they were read when they settled (at most [`MAX_PARSED_TAPS`]), with
    /// their signature then: handed to the worker with their set.
    parsed: HashMap<PathBuf, (FileSig, TapRecording)>,
    /// Good survey files waiting for their set.
    surveys: BTreeMap<PathBuf, (SurveyName, Survey)>,
    bad_surveys: Vec<BadSurvey>,
    /// Complete sets waiting for a survey file still settling, or for a good one after a bad
    /// one, with when they were formed.
    held: Vec<(TapSet<PathBuf>, Instant)>,
    /// The report's warning of a set computed with the default diameter after its survey
    /// was rejected, by result name.
    diameter_warnings: HashMap<String, String>,
    /// `--role worker`: the job each set came from, by result name (acknowledged once the
    /// set is delivered), and the way to the consumer.
    jobs: HashMap<String, Vec<u64>>,
    job_control: Option<Sender<JobControl>>,
    book: SetBook<PathBuf>,
    /// When a tap file of each device last arrived (or changed).
    last_arrival: HashMap<Option<String>, Instant>,
    /// Raised where a file event could not reach the inbox: the folders are listed again
    /// before any set is formed.
    missed_events: Arc<AtomicBool>,
    ignored: HashSet<PathBuf>,
    summary: RunSummary,
    metrics: Arc<Metrics>,
    last_incomplete_check: Instant,
    last_settle_check: Instant,
}

impl Coordinator {
    fn idle(&self) -> bool {
        // A device still in its quiet time may yet form sets.
        self.settle.is_empty()
            && self.last_arrival.is_empty()
            && self.held.is_empty()
            && self.book.is_idle()
    }

    /// Lists the data folder (and the staging folder of the FTP source) and looks at every
    /// entry.
    fn scan(&mut self) {
        let mut paths = Vec::new();
        let mut failed = None;
        for root in self.roots.all() {
            match std::fs::read_dir(root) {
                Ok(entries) => paths.extend(entries.filter_map(|e| e.ok()).map(|e| e.path())),
                Err(e) => failed = Some(format!("cannot list {}: {e}", root.display())),
            }
        }
        if let Some(why) = &failed {
            log::error!("{why}");
        }
        self.metrics.watcher_status(failed.map_or(Ok(()), Err));
        paths.sort();
        for p in paths {
            self.look(p);
        }
    }

    /// Whether `path` is a member of a complete set still held for its survey.
    fn is_held(&self, path: &Path) -> bool {
        self.held
            .iter()
            .any(|(set, _)| set.members.iter().any(|m| m.key == path))
    }

    /// Something happened to `path`.
    fn look(&mut self, path: PathBuf) {
        if self.book.is_claimed(&path) || self.is_held(&path) {
            return;
        }
        if let Some(seen) = self.files.get(&path) {
            // Pending in the grouper (or a survey waiting): taken out if it vanished or changed.
            if FileSig::of(&path) == Some(seen.sig) {
                return;
            }
            self.grouper.remove(&path);
            self.surveys.remove(&path);
            self.forget(&path);
        }
        let kind = match self.roots.root_of(&path) {
            Some(root) => classify(root, &path),
            None => Kind::Ignored("not directly in a watched folder".into()),
        };
        match kind {
            Kind::Tap(_) | Kind::Survey(_) => match not_a_regular_file(&path) {
                Some(why) => self.set_aside(&path, &why, None),
                None => {
                    let now = Instant::now();
                    let sig = FileSig::of(&path);
                    if let (Kind::Tap(name), Some(_)) = (&kind, sig) {
                        self.last_arrival.insert(name.device.clone(), now);
                    }
                    self.settle.observe(&path, sig, now);
                }
            },
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

    /// A good file, read and settled, from `now` on.
    fn seen(&mut self, path: &Path, sig: FileSig, now: Instant) {
        let seen = Seen {
            sig,
            since: now,
            reported: false,
        };
        self.files.insert(path.to_path_buf(), seen);
    }

    /// Drops what the coordinator knows of a file: its settled record and its parsed taps.
    fn forget(&mut self, path: &Path) -> Option<Seen> {
        self.parsed.remove(path);
        self.files.remove(path)
    }

    /// The taps of a set as they were read when they settled, when all eight are still
    /// held; the worker reads the files again otherwise.
    fn take_parsed(&mut self, set: &TapSet<PathBuf>) -> Option<Box<ParsedSet>> {
        let taps: Vec<Option<(FileSig, TapRecording)>> = set
            .members
            .iter()
            .map(|m| self.parsed.remove(&m.key))
            .collect();
        let taps: Vec<(FileSig, TapRecording)> = taps.into_iter().collect::<Option<_>>()?;
        <ParsedSet>::try_from(taps).ok().map(Box::new)
    }

    /// A good file for the grouper.
    fn wait_for_set(&mut self, name: TapName, path: PathBuf, sig: FileSig, now: Instant) {
        self.seen(&path, sig, now);
        self.grouper.add(name, path);
    }

    /// Re-examines settling files, reads the settled ones (a bad one is set aside now),
    /// groups them, books complete sets and sets leftovers aside.
    fn step(&mut self) {
        let now = Instant::now();
        // Settling, reading and grouping go on a timer, not on every turn: a backlog renamed
        // in arrives as thousands of events, each a turn of the loop.
        if now.duration_since(self.last_settle_check) >= SETTLE_CHECK_EVERY {
            self.last_settle_check = now;
            self.settle_and_group(now);
        }
        self.book_held(now);
        for stale in self.grouper.take_stale() {
            let sig = self.forget(&stale.file.key).map(|s| s.sig);
            self.set_aside(&stale.file.key, &stale.reason(), sig);
        }
        if now.duration_since(self.last_incomplete_check) >= Duration::from_secs(1) {
            self.last_incomplete_check = now;
            self.report_incomplete(now);
        }
    }

    /// Looks at the settling files again, reads those that settled (a bad one is set aside)
    /// and takes out the complete sets.
    fn settle_and_group(&mut self, now: Instant) {
        if self.missed_events.swap(false, Ordering::Relaxed) {
            log::debug!("file events were dropped (the inbox was full): listing the folders");
            self.scan();
        }
        for p in self.settle.paths() {
            self.settle.observe(&p, FileSig::of(&p), now);
        }
        for (path, sig) in self.settle.take_settled(now) {
            let Some(root) = self.roots.root_of(&path) else {
                continue;
            };
            match classify(root, &path) {
                // Read to validate, and kept (within a bound) for the worker: each file is
                // parsed once.
                Kind::Tap(name) => match read_tap_file(&path) {
                    Ok(tap) => {
                        if self.parsed.len() < MAX_PARSED_TAPS {
                            self.parsed.insert(path.clone(), (sig, tap));
                        }
                        self.wait_for_set(name, path, sig, now);
                    }
                    Err(e) => self.set_aside(&path, &e.kind, Some(sig)),
                },
                Kind::Survey(name) => match read_survey(&path) {
                    Ok(survey) => {
                        self.seen(&path, sig, now);
                        self.surveys.insert(path, (name, survey));
                    }
                    Err(e) => {
                        self.set_aside(&path, &e.problem, Some(sig));
                        self.bad_surveys.push(BadSurvey {
                            name,
                            file: e.file,
                            why: e.problem.to_string(),
                            at: now,
                        });
                    }
                },
                Kind::Ignored(_) => {}
            }
        }
        // A device with tap files still settling, or arrived within DEVICE_QUIET, forms no
        // set yet, so its sets form in the order of their files' times however a backlog
        // arrives.
        self.last_arrival
            .retain(|_, at| now.duration_since(*at) < DEVICE_QUIET);
        let arriving: HashSet<Option<String>> = self
            .settle
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .filter_map(|n| TapName::parse(n).ok())
            .map(|t| t.device)
            .chain(self.last_arrival.keys().cloned())
            .collect();
        for set in self.grouper.take_complete_of(|d| !arriving.contains(d)) {
            self.held.push((set, now));
        }
    }

    /// Books the complete sets, each with its survey file: the nearest held set whose window
    /// holds a survey's time takes it. A set without one waits while a survey file for it is
    /// still settling, and for `FILE_SETTLE_SECONDS` after one was rejected; then it goes on
    /// with the default diameter, and its report says why.
    fn book_held(&mut self, now: Instant) {
        let window_s = self.cfg.group_window_s;
        let keep = Duration::from_secs(window_s.max(0) as u64) + self.cfg.incomplete_grace;
        self.bad_surveys
            .retain(|b| now.duration_since(b.at) < keep + self.cfg.settle);
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let sets: Vec<(Option<&str>, i64)> = held
            .iter()
            .map(|(s, _)| (s.device.as_deref(), s.unix_s))
            .collect();
        let names: Vec<SurveyName> = self.surveys.values().map(|(n, _)| n.clone()).collect();
        let paths: Vec<&PathBuf> = self.surveys.keys().collect();
        let chosen: Vec<Option<PathBuf>> = newest_per_set(&sets, &names, window_s)
            .into_iter()
            .map(|k| k.map(|k| paths[k].clone()))
            .collect();
        drop(sets);
        let settling: Vec<SurveyName> = self
            .settle
            .paths()
            .iter()
            .filter_map(|p| SurveyName::from_path(p))
            .collect();
        // A survey file that keeps changing holds its set no longer than this.
        let longest_hold = self.cfg.settle * 4 + Duration::from_secs(2);
        for ((mut set, since), chosen) in held.into_iter().zip(chosen) {
            let in_window = |n: &SurveyName| {
                Some(n.device.as_str()) == set.device.as_deref()
                    && set.window_holds(n.unix_s, window_s)
            };
            let mut warning = None;
            if chosen.is_none() {
                let settling =
                    settling.iter().any(in_window) && now.duration_since(since) < longest_hold;
                let bad = self
                    .bad_surveys
                    .iter()
                    .filter(|b| in_window(&b.name))
                    .max_by_key(|b| b.at);
                if settling || bad.is_some_and(|b| now.duration_since(b.at) < self.cfg.settle) {
                    // Formed in this step (`settle_and_group` took it at `now`): said once.
                    if since == now {
                        log::info!(
                            "{}: complete; it waits for its survey file (one is settling or was just rejected)",
                            set.result_name()
                        );
                    }
                    self.held.push((set, since));
                    continue;
                }
                warning = bad.map(|b| {
                    format!(
                        "survey file {} was rejected ({}); computed with the default diameter {} m",
                        b.file, b.why, self.cfg.diameter_m
                    )
                });
            }
            if let Some(path) = chosen {
                self.surveys.remove(&path);
                set.survey = Some(path);
            }
            if let Some(w) = warning {
                let name = set.result_name().json();
                log::warn!("{name}: {w}");
                self.diameter_warnings.insert(name, w);
            }
            self.book.grouped(set);
        }
    }

    /// Hands each free delivery lane its next step, and carries out what the book decides.
    fn deliver(&mut self, delivery: &Delivery) {
        while let Some(event) = self.book.next_order(Instant::now()) {
            match event {
                Event::Do(order) => delivery.send(Lane::of(order.step), DeliveryMsg::Do(order)),
                Event::Probe => delivery.probe(),
                other => self.apply(other),
            }
        }
    }

    /// Carries out a decision of the book.
    fn apply(&mut self, event: Event<PathBuf>) {
        match event {
            Event::Do(_) | Event::Probe => {}
            Event::Retry {
                result_name,
                step,
                why,
                wait,
            } => log::warn!(
                "{step:?} of {result_name} failed: {why}; retrying in {:.1} s",
                wait.as_secs_f64()
            ),
            Event::Delivered {
                result_name,
                sources,
                timings,
            } => {
                for s in &sources {
                    self.forget(s);
                }
                if let (Some(ids), Some(control)) =
                    (self.jobs.remove(&result_name), &self.job_control)
                {
                    for id in ids {
                        let _ = control.send(JobControl::Ack(id));
                    }
                }
                self.summary.delivered += 1;
                Metrics::add(&self.metrics.sets_delivered, 1);
                self.log_delivered(&result_name, &timings);
            }
            Event::Undelivered { result_name, why } => {
                log::warn!(
                    "{result_name}: not delivered in this run ({why}); the journal keeps it"
                );
                self.summary.undelivered += 1;
                Metrics::add(&self.metrics.sets_failed, 1);
            }
            Event::Released {
                result_name,
                sources,
            } => {
                log::info!("{result_name}: its sources are grouped again");
                if sources.iter().any(|s| self.roots.is_job(s)) {
                    // A job's files are a set already.
                    match set_from_staged(&sources) {
                        Ok(set) => self.book.grouped(set),
                        Err(why) => {
                            for id in self.jobs.remove(&result_name).unwrap_or_default() {
                                self.dead_letter(id, why.clone());
                            }
                        }
                    }
                    return;
                }
                for s in sources {
                    self.forget(&s);
                    self.look(s);
                }
            }
        }
    }

    fn log_delivered(&self, name: &str, t: &SetTimings) {
        if self.cfg.ftp.is_some() {
            self.metrics.observe(StageTimer::Upload, t.upload);
        }
        if self.cfg.amqp.is_some() {
            self.metrics.observe(StageTimer::Publish, t.publish);
        }
        let parsed = ResultName::parse(name);
        let device = parsed
            .as_ref()
            .and_then(|n| n.device.clone())
            .unwrap_or_else(|| "-".into());
        let unix_s = parsed.map_or(0, |n| n.unix_s);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let upload = match self.cfg.ftp {
            Some(_) => format!("upload {:.1} ms", ms(t.upload)),
            None => "upload off".to_string(),
        };
        let publish = match self.cfg.amqp {
            Some(_) => format!("publish {:.1} ms", ms(t.publish)),
            None => "publish off".to_string(),
        };
        if t.computed_here {
            log::info!(
                "set {name} device {device} time {unix_s}: read {:.1} ms, compute {:.1} ms, save {:.1} ms, {upload}, {publish}, sources deleted",
                ms(t.read),
                ms(t.compute),
                ms(t.save),
            );
        } else {
            log::info!(
                "set {name} device {device} time {unix_s} (resumed): {upload}, {publish}, sources deleted"
            );
        }
    }

    /// Logs once, per device, the files still without a set after the window and the grace.
    fn report_incomplete(&mut self, now: Instant) {
        let after =
            Duration::from_secs(self.cfg.group_window_s.max(0) as u64) + self.cfg.incomplete_grace;
        let mut by_device: BTreeMap<Option<String>, Vec<&Pending<PathBuf>>> = BTreeMap::new();
        let mut any_new = false;
        for p in self.grouper.pending() {
            let Some(seen) = self.files.get_mut(&p.key) else {
                continue;
            };
            if now.duration_since(seen.since) < after {
                continue;
            }
            any_new |= !seen.reported;
            seen.reported = true;
            by_device.entry(p.name.device.clone()).or_default().push(p);
        }
        for (path, (name, _)) in &self.surveys {
            if let Some(seen) = self.files.get_mut(path)
                && now.duration_since(seen.since) >= after
                && !seen.reported
            {
                seen.reported = true;
                log::warn!(
                    "survey file {} waits over {:.0} s for a set of device {} whose window holds {} s; it stays where it is",
                    path.display(),
                    after.as_secs_f64(),
                    name.device,
                    name.unix_s
                );
            }
        }
        let incomplete: usize = by_device.values().map(Vec::len).sum();
        Metrics::set(&self.metrics.files_incomplete, incomplete as u64);
        if !any_new {
            return;
        }
        for (device, files) in by_device {
            let mut have = [false; N_SENSORS];
            for f in &files {
                have[f.name.tap as usize - 1] = true;
            }
            let missing: Vec<String> = (1..=N_SENSORS)
                .filter(|k| !have[k - 1])
                .map(|k| k.to_string())
                .collect();
            let names: Vec<String> = files
                .iter()
                .filter_map(|f| f.key.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            log::warn!(
                "incomplete: device {} has {} tap files waiting over {:.0} s for a set, missing tap {}: {}",
                device.as_deref().unwrap_or("(none)"),
                files.len(),
                after.as_secs_f64(),
                if missing.is_empty() {
                    "none (the taps are too far apart in time)".to_string()
                } else {
                    missing.join(", ")
                },
                names.join(" ")
            );
        }
    }

    fn update_gauges(&self) {
        let c = self.book.counts();
        Metrics::set(
            &self.metrics.sets_pending,
            (c.queued + c.computing + c.delivering) as u64,
        );
        Metrics::set(&self.metrics.files_waiting, self.grouper.n_pending() as u64);
    }

    /// A job from the queue: its files are staged in `TEMP_DIR/jobs/` and the set goes
    /// straight into the book (it was grouped by the ingest); a bad one is dead-lettered.
    fn take_job(&mut self, incoming: Incoming) {
        let staged = incoming
            .job
            .and_then(|job| stage_job(&self.roots.jobs, &job));
        match staged.and_then(|paths| set_from_staged(&paths)) {
            Ok(set) => {
                let name = set.result_name().json();
                // The same set twice (an ingest that published again) is one set here.
                self.jobs.entry(name.clone()).or_default().push(incoming.id);
                // A set the journal resumed is acknowledged when it is delivered.
                if self.book.phase(&name).is_none() {
                    self.book.grouped(set);
                }
            }
            Err(why) => self.dead_letter(incoming.id, why),
        }
    }

    fn dead_letter(&mut self, id: u64, why: String) {
        Metrics::add(&self.metrics.sets_failed, 1);
        if let Some(control) = &self.job_control {
            let _ = control.send(JobControl::DeadLetter(id, why));
        }
    }

    /// A job's set that cannot be computed: dead-lettered, its staged files removed. `false`
    /// when the set did not come from a job.
    fn job_failed(&mut self, name: &str, why: String) -> bool {
        let Some(ids) = self.jobs.remove(name) else {
            return false;
        };
        log::error!("{name}: {why}; the job goes to the dead-letter queue");
        for s in self.book.not_saved(name) {
            self.forget(&s);
            let _ = std::fs::remove_file(&s);
        }
        for id in ids {
            self.dead_letter(id, why.clone());
        }
        true
    }

    fn handle(&mut self, msg: Inbox) {
        match msg {
            Inbox::Job(incoming) => self.take_job(incoming),
            Inbox::WorkerReport(WorkerReport::Failed { name, why })
                if self.jobs.contains_key(&name) =>
            {
                self.job_failed(&name, why);
            }
            Inbox::WorkerReport(WorkerReport::BadMembers { name, rejected, .. })
                if self.jobs.contains_key(&name) =>
            {
                let why = rejected
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                self.job_failed(&name, why);
            }
            Inbox::Watch(WatchEvent::Path(p)) => self.look(p),
            Inbox::Watch(WatchEvent::Error(e)) => {
                log::warn!("file events: {e}; the folders are listed again");
                self.missed_events.store(true, Ordering::Relaxed);
            }
            Inbox::WorkerReport(WorkerReport::Saved { name, timings }) => {
                self.settle_set(&name);
                self.book.saved(&name, timings)
            }
            Inbox::WorkerReport(WorkerReport::Failed { name, why }) => {
                self.settle_set(&name);
                log::error!("{why}");
                Metrics::add(&self.metrics.sets_failed, 1);
                for s in self.book.not_saved(&name) {
                    self.forget(&s);
                }
            }
            Inbox::WorkerReport(WorkerReport::BadMembers {
                name,
                rejected,
                good,
            }) => {
                // The set is withdrawn: its readable taps wait for another tap of the sensor
                // whose file could not be read, as if the set had not formed.
                let withdrawn = ResultName::parse(&name)
                    .is_some_and(|set| self.grouper.withdraw(&set.device, set.unix_s));
                let files = rejected
                    .iter()
                    .map(|e| e.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                if withdrawn {
                    log::warn!(
                        "{name}: {files} could not be read when the set was computed; its other taps wait for another tap of that sensor"
                    );
                } else {
                    log::warn!("{name}: {files} could not be read when the set was computed");
                }
                // Its survey file waits for the set to form again.
                for s in self.book.not_saved(&name) {
                    if SurveyName::from_path(&s).is_some() {
                        self.forget(&s);
                        self.look(s);
                    }
                }
                for e in rejected {
                    let settled = self.forget(&e.path).map(|s| s.sig);
                    self.set_aside(&e.path, &e.kind, settled);
                }
                for (tap, path) in good {
                    self.forget(&path);
                    if let Some(sig) = FileSig::of(&path) {
                        self.wait_for_set(tap, path, sig, Instant::now());
                    }
                }
            }
            Inbox::Report(r) => {
                let now = Instant::now();
                if let Some(event) = self.book.step_done(r.lane, r.result, r.took, now) {
                    self.apply(event);
                }
            }
        }
    }

    /// The set whose results are `name` can no longer be withdrawn from the grouper: its
    /// files were read.
    fn settle_set(&mut self, name: &str) {
        if let Some(set) = ResultName::parse(name) {
            self.grouper.settle(&set.device, set.unix_s);
        }
    }

    /// Sets a file aside in `rejected/` with its reason, unless it changed since it settled
    /// (`settled`; then it is watched again).
    fn set_aside(&mut self, path: &Path, why: &dyn std::fmt::Display, settled: Option<FileSig>) {
        if std::fs::symlink_metadata(path).is_err() {
            return;
        }
        if let Some(settled) = settled
            && FileSig::of(path) != Some(settled)
        {
            self.settle.observe(path, FileSig::of(path), Instant::now());
            return;
        }
        let root = self.roots.root_of(path).unwrap_or(&self.roots.data);
        match reject(root, path, why) {
            Ok(dst) => {
                self.summary.rejected += 1;
                Metrics::add(&self.metrics.files_rejected, 1);
                let on_ftp = if self.roots.is_remote(path) {
                    " (the FTP source's file goes to its rejected/ folder)"
                } else {
                    ""
                };
                log::warn!(
                    "rejected {}: {why}; moved to {}{on_ftp}",
                    path.display(),
                    dst.display()
                );
            }
            Err(io) => log::error!("{}: {why}; cannot move it aside: {io}", path.display()),
        }
    }
}

/// Removes what a killed run left in `TEMP_DIR`: the temporary files of results being
/// written and of a journal being compacted (the journal itself stays).
fn remove_temporary_files(temp_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(temp_dir) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && name.ends_with(".tmp") && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        log::info!(
            "removed {removed} temporary files a previous run left in {}",
            temp_dir.display()
        );
    }
}

/// Whether none of a set's files changed since the coordinator parsed them (a `stat` each).
fn unchanged(set: &TapSet<PathBuf>, parsed: &ParsedSet) -> bool {
    set.members
        .iter()
        .zip(parsed)
        .all(|(m, (sig, _))| FileSig::of(&m.key) == Some(*sig))
}

/// The taps of a set: those the coordinator parsed when the files settled, if none changed
/// since, else read again.
fn read_taps(
    set: &TapSet<PathBuf>,
    parsed: Option<Box<ParsedSet>>,
) -> Result<SetRecording, BadMembers> {
    if let Some(parsed) = parsed
        && unchanged(set, &parsed)
        && let Ok(taps) = SetRecording::from_taps(parsed.map(|(_, tap)| tap))
    {
        return Ok(taps);
    }
    read_set(set)
}

/// Reads a set's taps and survey; a set with a bad member goes back with its report.
fn read_job(job: SetJob, ctx: &WorkerCtx) -> Result<ReadJob, WorkerReport> {
    let SetJob {
        set,
        warning,
        parsed,
    } = job;
    let t0 = Instant::now();
    let taps = match read_taps(&set, parsed) {
        Ok(taps) => taps,
        Err(BadMembers { rejected, good }) => {
            return Err(WorkerReport::BadMembers {
                name: set.result_name().json(),
                rejected,
                good,
            });
        }
    };
    let mut warning = warning;
    let survey = match set.survey.as_deref().map(read_survey) {
        Some(Ok(survey)) => Some(survey),
        Some(Err(e)) => {
            warning = Some(format!(
                "survey file {e}; computed with the default diameter {} m",
                ctx.cfg.diameter_m
            ));
            None
        }
        None => None,
    };
    Ok(ReadJob {
        read: ReadSet { set, taps, survey },
        warning,
        took_read: t0.elapsed(),
        took_estimate: Duration::ZERO,
    })
}

/// Reads, computes, saves and journals one set on the worker's own engine.
fn work(engine: &mut Engine, job: SetJob, ctx: &WorkerCtx) -> WorkerReport {
    let job = match read_job(job, ctx) {
        Ok(job) => job,
        Err(report) => return report,
    };
    let t1 = Instant::now();
    let read = &job.read;
    let outputs = compute_outputs(
        engine,
        &read.set,
        &read.taps,
        true,
        read.survey.as_ref(),
        job.warning.as_deref(),
    );
    save(&job, outputs, t1.elapsed(), ctx)
}

/// Builds, saves and journals a set the GPU thread estimated.
fn finish_estimated(
    cfg: &EngineConfig,
    job: ReadJob,
    est: Result<SetEstimate, String>,
    ctx: &WorkerCtx,
) -> WorkerReport {
    let t1 = Instant::now();
    let outputs = est
        .map(|est| job.read.outputs(cfg, &est, true, job.warning.as_deref()))
        .map_err(|why| anyhow::anyhow!("{}: {why}", job.read.set.result_name()));
    save(&job, outputs, job.took_estimate + t1.elapsed(), ctx)
}

/// The GPU thread: estimates the sets the workers read in batches, each batch what is
/// ready at that moment (at most [`RUN_GPU_BATCH`] sets), and hands them back to the
/// workers. It ends when no worker can send it more.
fn estimate_on_gpu(mut engine: Engine, sets: &Receiver<ReadJob>, done: &Sender<Estimated>) {
    const { assert!(RUN_GPU_BATCH <= MAX_GPU_BATCH) };
    while let Ok(first) = sets.recv() {
        let mut batch = vec![first];
        batch.extend(sets.try_iter().take(RUN_GPU_BATCH - 1));
        let n = batch.len();
        let t0 = Instant::now();
        let estimated = estimate_ready(&mut engine, batch);
        let took = t0.elapsed();
        log::debug!(
            "GPU: {n} sets in one batch, {:.1} ms",
            took.as_secs_f64() * 1000.0
        );
        for (mut job, est) in estimated {
            job.took_estimate = took / n as u32;
            if done.send(Box::new((job, est))).is_err() {
                return;
            }
        }
    }
}

/// Saves a computed set's outputs and journals it (computed, then saved).
fn save(
    job: &ReadJob,
    outputs: anyhow::Result<SetOutputs>,
    compute: Duration,
    ctx: &WorkerCtx,
) -> WorkerReport {
    let set = &job.read.set;
    let name = set.result_name().json();
    let outputs = match outputs {
        Ok(outputs) => outputs,
        Err(e) => {
            let why = format!("{e:#}");
            return WorkerReport::Failed { name, why };
        }
    };
    let sources: Vec<String> = set
        .members
        .iter()
        .map(|m| &m.key)
        .chain(&set.survey)
        .map(|p| ctx.roots.label(p))
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
        let why = format!("{name}: {e:#}");
        return WorkerReport::Failed { name, why };
    }
    let timings = SetTimings {
        read: job.took_read,
        compute,
        save: t2.elapsed(),
        ..SetTimings::default()
    };
    ctx.metrics.observe(StageTimer::Read, timings.read);
    ctx.metrics.observe(StageTimer::Compute, timings.compute);
    ctx.metrics.observe(StageTimer::Save, timings.save);
    WorkerReport::Saved { name, timings }
}

/// `--role ingest`: reads a complete set (a bad file is set aside as in `run`), publishes it
/// as one job and waits for the broker's confirm; journaled computed before and saved after,
/// so the only step left is deleting the sources.
fn enqueue(job: SetJob, publisher: &mut Option<JobPublisher>, ctx: &WorkerCtx) -> WorkerReport {
    let set = &job.set;
    let name = set.result_name().json();
    let t0 = Instant::now();
    // Checked when they settled, unless the coordinator could not keep them or they changed.
    if !job.parsed.as_ref().is_some_and(|p| unchanged(set, p))
        && let Err(BadMembers { rejected, good }) = read_set(set)
    {
        return WorkerReport::BadMembers {
            name,
            rejected,
            good,
        };
    }
    let paths: Vec<&PathBuf> = set
        .members
        .iter()
        .map(|m| &m.key)
        .chain(&set.survey)
        .collect();
    let mut files = Vec::with_capacity(paths.len());
    for p in &paths {
        match std::fs::read(p) {
            Ok(bytes) => files.push(JobFile {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes,
            }),
            Err(e) => {
                let why = format!("{name}: cannot read {}: {e}", p.display());
                return WorkerReport::Failed { name, why };
            }
        }
    }
    let read = t0.elapsed();
    let Some(amqp) = ctx.cfg.amqp.as_ref() else {
        let why = format!("{name}: RabbitMQ is not configured");
        return WorkerReport::Failed { name, why };
    };
    let publisher = publisher.get_or_insert_with(|| JobPublisher::new(amqp, &ctx.cfg.job_queue));
    let t1 = Instant::now();
    let publish = || -> anyhow::Result<()> {
        // The confirmed job must not be published again after a power loss: fsynced.
        let record = |stage, sources| {
            let mut j = ctx.journal.lock().unwrap_or_else(|e| e.into_inner());
            j.record_synced(&Entry {
                stage,
                result_name: name.clone(),
                sources,
            })
            .context("cannot write the journal")
        };
        record(
            Stage::Computed,
            paths.iter().map(|p| ctx.roots.label(p)).collect(),
        )?;
        publisher
            .publish(&Job { files })
            .with_context(|| format!("cannot publish the job to queue {}", ctx.cfg.job_queue))?;
        record(Stage::Saved, Vec::new())
    };
    if let Err(e) = publish() {
        let why = format!("{name}: {e:#}");
        return WorkerReport::Failed { name, why };
    }
    let timings = SetTimings {
        read,
        publish: t1.elapsed(),
        ..SetTimings::default()
    };
    WorkerReport::Saved { name, timings }
}

/// Writes a job's files into `dir` (each under a hidden name, then renamed); their paths in
/// the job's order.
fn stage_job(dir: &Path, job: &Job) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    job.files
        .iter()
        .map(|f| {
            let path = dir.join(&f.name);
            let part = dir.join(format!(".{}.part", f.name));
            std::fs::write(&part, &f.bytes)
                .and_then(|()| std::fs::rename(&part, &path))
                .map_err(|e| format!("cannot stage {}: {e}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// The set of a job's staged files: eight taps in order, then its survey file if any.
fn set_from_staged(paths: &[PathBuf]) -> Result<TapSet<PathBuf>, String> {
    let mut members = Vec::with_capacity(N_SENSORS);
    let mut survey = None;
    for p in paths {
        let file = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if SurveyName::parse(file).is_some() {
            survey = Some(p.clone());
            continue;
        }
        let name = TapName::parse(file).map_err(|e| format!("{file}: {e}"))?;
        members.push(Pending {
            name,
            key: p.clone(),
        });
    }
    members.sort_by_key(|m| m.name.tap);
    let device = members.first().and_then(|m| m.name.device.clone());
    let unix_s = members.iter().map(|m| m.name.unix_s).min().unwrap_or(0);
    let members = <[Pending<PathBuf>; N_SENSORS]>::try_from(members)
        .map_err(|m| format!("{} tap files where a set has eight", m.len()))?;
    if members
        .iter()
        .enumerate()
        .any(|(k, m)| m.name.tap as usize != k + 1)
    {
        return Err("the taps are not 1 to 8".into());
    }
    Ok(TapSet {
        device,
        unix_s,
        members,
        survey,
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        thread_nice().unwrap()
    }

    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let before = nice_of_this_thread();
        let (was, now) = std::thread::spawn(|| {
            let was = nice_of_this_thread();
            lower_thread_priority(3).unwrap();
            (was, nice_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(now, (was + 3).min(19));
        assert_eq!(nice_of_this_thread(), before);
        let capped = std::thread::spawn(|| {
            lower_thread_priority(15).unwrap();
            lower_thread_priority(15).unwrap();
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(capped, 19);
        let unchanged = std::thread::spawn(|| {
            let was = nice_of_this_thread();
            lower_thread_priority(0).unwrap();
            (was, nice_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(unchanged.0, unchanged.1);
    }
}
