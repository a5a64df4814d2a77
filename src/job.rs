//! Scale-out over RabbitMQ: one complete set travels as one job message.
//!
//! The ingest role (`run --role ingest`) and `terawang enqueue` publish each complete set to
//! `RABBITMQ_JOB_QUEUE` (durable; a quorum queue where the broker has them) as a [`Job`]: the
//! set's eight tap files, tap 1 first, and its survey file where it has one, byte for byte,
//! so a worker on another machine needs no shared disk. Workers (`run --role worker`) consume
//! with manual acknowledgement ([`JobConsumer`]); a job is acknowledged only after its result
//! reached every configured sink, and a job that cannot be read goes to the dead-letter queue
//! `<RABBITMQ_JOB_QUEUE>_rejected` with its reason in the `x-reason` header.
//!
//! The body is `terawang-job 1\n`, then per file `<name> <length>\n<bytes>\n`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Receiver;

use crate::config::AmqpConfig;
use crate::device::{MAX_FILE_BYTES, N_SENSORS, TapName};
use crate::survey::SurveyName;
use crate::tls;

const MAGIC: &[u8] = b"terawang-job 1\n";
const NET_TIMEOUT: Duration = Duration::from_secs(5);

/// The dead-letter queue of a job queue.
pub fn dead_letter_queue(job_queue: &str) -> String {
    format!("{job_queue}_rejected")
}

/// One file of a job, as it was on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A complete set: eight tap files, tap 1 first, then its survey file where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub files: Vec<JobFile>,
}

impl Job {
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self.files.iter().map(|f| f.bytes.len() + 64).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + len);
        out.extend_from_slice(MAGIC);
        for f in &self.files {
            out.extend_from_slice(format!("{} {}\n", f.name, f.bytes.len()).as_bytes());
            out.extend_from_slice(&f.bytes);
            out.push(b'\n');
        }
        out
    }

    /// Reads a job body; the error says what is wrong with it.
    pub fn decode(body: &[u8]) -> Result<Job, String> {
        let mut rest = body
            .strip_prefix(MAGIC)
            .ok_or("not a terawang job (no `terawang-job 1` header)")?;
        let mut files = Vec::new();
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("a file header without its line end")?;
            let header =
                std::str::from_utf8(&rest[..end]).map_err(|_| "a file header is not UTF-8")?;
            let (name, len) = header
                .rsplit_once(' ')
                .ok_or_else(|| format!("file header {header:?} is not `<name> <length>`"))?;
            let len: usize = len
                .parse()
                .map_err(|_| format!("file header {header:?}: the length is not a number"))?;
            if len as u64 > MAX_FILE_BYTES {
                return Err(format!(
                    "{name}: {len} bytes, over the {MAX_FILE_BYTES}-byte limit"
                ));
            }
            rest = &rest[end + 1..];
            if rest.len() < len + 1 || rest[len] != b'\n' {
                return Err(format!("{name}: cut short ({len} bytes announced)"));
            }
            files.push(JobFile {
                name: name.to_string(),
                bytes: rest[..len].to_vec(),
            });
            rest = &rest[len + 1..];
        }
        let job = Job { files };
        job.check()?;
        Ok(job)
    }

    /// Eight tap files of one device, taps 1..=8 in order, then at most one survey file of
    /// that device: names that can never address another folder.
    fn check(&self) -> Result<(), String> {
        if self.files.len() < N_SENSORS || self.files.len() > N_SENSORS + 1 {
            return Err(format!(
                "{} files; a job holds eight taps and at most one survey file",
                self.files.len()
            ));
        }
        let mut device = None;
        for (k, f) in self.files[..N_SENSORS].iter().enumerate() {
            let tap = TapName::parse(&f.name).map_err(|e| format!("{}: {e}", f.name))?;
            if tap.tap as usize != k + 1 {
                return Err(format!(
                    "{}: tap {} where tap {} belongs",
                    f.name,
                    tap.tap,
                    k + 1
                ));
            }
            if k > 0 && device != Some(tap.device.clone()) {
                return Err(format!("{}: another device than tap 1's", f.name));
            }
            device = Some(tap.device);
        }
        if let Some(f) = self.files.get(N_SENSORS) {
            let survey = SurveyName::parse(&f.name)
                .ok_or_else(|| format!("{}: the ninth file must be a survey file", f.name))?;
            if device != Some(Some(survey.device)) {
                return Err(format!("{}: another device than the taps'", f.name));
            }
        }
        Ok(())
    }
}

/// A connection to the broker for jobs: the job queue and its dead-letter queue declared,
/// publisher confirms on.
struct JobLink {
    // Field order: the channel closes before the connection.
    channel: amiquip::Channel,
    confirms: Receiver<amiquip::Confirm>,
    conn: amiquip::Connection,
}

impl JobLink {
    /// `cfg.queue` is the job queue.
    fn connect(cfg: &AmqpConfig) -> anyhow::Result<JobLink> {
        let mut conn = tls::open_broker(cfg, NET_TIMEOUT)?;
        let mut channel = conn.open_channel(None)?;
        let mut quorum = amiquip::FieldTable::new();
        quorum.insert(
            "x-queue-type".into(),
            amiquip::AmqpValue::LongString("quorum".into()),
        );
        let durable = |arguments| amiquip::QueueDeclareOptions {
            durable: true,
            arguments,
            ..Default::default()
        };
        if let Err(e) = channel.queue_declare(cfg.queue.as_str(), durable(quorum)) {
            // An existing classic queue (406), or a broker without quorum queues: the channel
            // is closed; declare it as it is.
            log::debug!("job queue {} as a quorum queue: {e}", cfg.queue);
            channel = conn.open_channel(None)?;
            channel
                .queue_declare(cfg.queue.as_str(), durable(Default::default()))
                .with_context(|| format!("cannot declare the job queue {}", cfg.queue))?;
        }
        let dlq = dead_letter_queue(&cfg.queue);
        channel
            .queue_declare(dlq.as_str(), durable(Default::default()))
            .with_context(|| format!("cannot declare the dead-letter queue {dlq}"))?;
        let confirms = channel.listen_for_publisher_confirms()?;
        channel.enable_publisher_confirms()?;
        Ok(JobLink {
            channel,
            confirms,
            conn,
        })
    }

    /// Publishes persistently to `queue` and waits for the broker's confirm.
    fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: amiquip::FieldTable,
    ) -> anyhow::Result<()> {
        let mut properties = amiquip::AmqpProperties::default().with_delivery_mode(2);
        if !headers.is_empty() {
            properties = properties.with_headers(headers);
        }
        self.channel.basic_publish(
            "",
            amiquip::Publish::with_properties(body, queue, properties),
        )?;
        match self
            .confirms
            .recv_timeout(NET_TIMEOUT)
            .context("no publisher confirm from the broker")?
        {
            amiquip::Confirm::Ack(_) => Ok(()),
            amiquip::Confirm::Nack(_) => anyhow::bail!("the broker refused the job (nack)"),
        }
    }
}

/// Publishes jobs, keeping its connection between them.
pub struct JobPublisher {
    cfg: AmqpConfig,
    link: Option<JobLink>,
}

impl JobPublisher {
    /// Publishes to `job_queue` on the broker of `amqp`.
    pub fn new(amqp: &AmqpConfig, job_queue: &str) -> JobPublisher {
        JobPublisher {
            cfg: AmqpConfig {
                queue: job_queue.to_string(),
                durable: true,
                graph_queue: None,
                ..amqp.clone()
            },
            link: None,
        }
    }

    /// Publishes one job and waits for its confirm.
    pub fn publish(&mut self, job: &Job) -> anyhow::Result<()> {
        if self.link.is_none() {
            self.link = Some(JobLink::connect(&self.cfg)?);
        }
        let link = self.link.as_ref().expect("just connected");
        let r = link.publish(&self.cfg.queue, &job.encode(), Default::default());
        if r.is_err() {
            self.link = None;
        }
        r
    }
}

/// A job as the worker's consumer received it: its id (for [`JobControl`]) and the job, or
/// why its body cannot be read.
#[derive(Debug)]
pub struct Incoming {
    pub id: u64,
    pub job: Result<Job, String>,
}

/// What the worker's coordinator tells the consumer about a job.
#[derive(Debug)]
pub enum JobControl {
    /// Delivered to every sink: acknowledge it.
    Ack(u64),
    /// Cannot be computed: to the dead-letter queue with the reason, then acknowledge it.
    DeadLetter(u64, String),
}

/// The worker's consumer thread; dropping it stops it (unacknowledged jobs go back to the
/// queue when its connection closes).
pub struct JobConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JobConsumer {
    /// Consumes `job_queue` with a prefetch of `prefetch` unacknowledged jobs, hands each to
    /// `forward`, and carries out the `control` messages.
    pub fn spawn(
        amqp: &AmqpConfig,
        job_queue: &str,
        prefetch: u16,
        retry_max: Duration,
        control: Receiver<JobControl>,
        forward: impl Fn(Incoming) + Send + 'static,
    ) -> anyhow::Result<JobConsumer> {
        let cfg = AmqpConfig {
            queue: job_queue.to_string(),
            durable: true,
            graph_queue: None,
            ..amqp.clone()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("jobs".into())
                .spawn(move || {
                    let mut next_id = 0u64;
                    let mut backoff =
                        crate::sink::Backoff::new(Duration::from_millis(500), retry_max);
                    let mut failing: Option<String> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let r = consume(
                            &cfg,
                            prefetch,
                            &stop,
                            &control,
                            &forward,
                            &mut next_id,
                            &mut backoff,
                        );
                        if let Err(e) = r {
                            let why = format!("{e:#}");
                            let wait = backoff.failed(Instant::now());
                            if failing.as_deref() != Some(why.as_str()) {
                                log::warn!(
                                    "job queue {}: {why}; retrying in {:.1} s",
                                    cfg.queue,
                                    wait.as_secs_f64()
                                );
                                failing = Some(why);
                            }
                            let until = Instant::now() + wait;
                            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        } else {
                            failing = None;
                        }
                    }
                })?
        };
        Ok(JobConsumer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for JobConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection's life: consume until `stop` or a broker error.
fn consume(
    cfg: &AmqpConfig,
    prefetch: u16,
    stop: &AtomicBool,
    control: &Receiver<JobControl>,
    forward: &impl Fn(Incoming),
    next_id: &mut u64,
    backoff: &mut crate::sink::Backoff,
) -> anyhow::Result<()> {
    let mut link = JobLink::connect(cfg)?;
    let consume_channel = link.conn.open_channel(None)?;
    consume_channel.qos(0, prefetch.max(1), false)?;
    let consumer = consume_channel.basic_consume(
        cfg.queue.as_str(),
        amiquip::ConsumerOptions {
            no_ack: false,
            ..Default::default()
        },
    )?;
    backoff.succeeded();
    log::info!(
        "consuming jobs from queue {} (prefetch {prefetch})",
        cfg.queue
    );
    let dlq = dead_letter_queue(&cfg.queue);
    let mut held: HashMap<u64, amiquip::Delivery> = HashMap::new();
    // Control messages for jobs of an earlier connection are stale: those jobs went back to
    // the queue when it closed.
    let first_id = *next_id + 1;
    while !stop.load(Ordering::Relaxed) {
        match consumer.receiver().recv_timeout(Duration::from_millis(20)) {
            Ok(amiquip::ConsumerMessage::Delivery(delivery)) => {
                *next_id += 1;
                let job = Job::decode(&delivery.body);
                held.insert(*next_id, delivery);
                forward(Incoming { id: *next_id, job });
            }
            Ok(other) => anyhow::bail!("the broker ended the consumer: {other:?}"),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the connection to the broker closed")
            }
        }
        while let Ok(msg) = control.try_recv() {
            match msg {
                JobControl::Ack(id) if id >= first_id => {
                    if let Some(d) = held.remove(&id) {
                        consumer.ack(d)?;
                    }
                }
                JobControl::DeadLetter(id, why) if id >= first_id => {
                    if let Some(d) = held.remove(&id) {
                        let mut headers = amiquip::FieldTable::new();
                        headers.insert(
                            "x-reason".into(),
                            amiquip::AmqpValue::LongString(why.clone()),
                        );
                        link.publish(&dlq, &d.body, headers)?;
                        log::warn!("job {id} to {dlq}: {why}");
                        consumer.ack(d)?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> Job {
        Job {
            files: (1..=n)
                .map(|k| JobFile {
                    name: if k <= N_SENSORS {
                        format!("D-1_u{k}_1755752474_{k}.json")
                    } else {
                        "D-1_1755752500_survey.json".into()
                    },
                    bytes: format!("{{\"tap\": {k}}}\n with a line end").into_bytes(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_job_comes_back_byte_for_byte() {
        for n in [8, 9] {
            let j = job(n);
            assert_eq!(Job::decode(&j.encode()), Ok(j));
        }
    }

    #[test]
    fn bad_jobs_are_named() {
        let good = job(8).encode();
        assert!(
            Job::decode(b"hello")
                .unwrap_err()
                .contains("not a terawang job")
        );
        let cut = &good[..good.len() - 5];
        assert!(Job::decode(cut).unwrap_err().contains("cut short"));
        let mut seven = job(8);
        seven.files.pop();
        assert!(
            Job::decode(&seven.encode())
                .unwrap_err()
                .contains("7 files")
        );
        let mut swapped = job(8);
        swapped.files.swap(0, 1);
        assert!(
            Job::decode(&swapped.encode())
                .unwrap_err()
                .contains("tap 2 where tap 1")
        );
        let mut escape = job(8);
        escape.files[3].name = "../D-1_u_1755752474_4.json".into();
        assert!(Job::decode(&escape.encode()).is_err());
        let mut other = job(9);
        other.files[8].name = "E-2_1755752500_survey.json".into();
        assert!(
            Job::decode(&other.encode())
                .unwrap_err()
                .contains("another device")
        );
    }
}

/// What `terawang enqueue` did.
#[derive(Debug, Default)]
pub struct EnqueueSummary {
    /// Sets published and confirmed.
    pub sets: usize,
    /// Files that could not be read (their sets were not published), with the reason.
    pub rejected: Vec<(std::path::PathBuf, String)>,
    /// Tap files in no complete set, and other files that are not tap or survey files.
    pub left: usize,
    /// Files removed after their job was confirmed (`--delete`).
    pub deleted: usize,
}

/// `terawang enqueue`: publishes every complete set among `inputs` (files and folders, one
/// level deep) as a job, each with its survey file where it has one, and waits for each
/// confirm. With `delete`, a set's files are removed once its job is confirmed.
pub fn enqueue_files(
    amqp: &AmqpConfig,
    job_queue: &str,
    inputs: &[std::path::PathBuf],
    window_s: i64,
    delete: bool,
) -> anyhow::Result<EnqueueSummary> {
    use crate::group::Grouper;
    let mut summary = EnqueueSummary::default();
    let mut grouper = Grouper::new(window_s);
    let mut surveys = Vec::new();
    for path in crate::process::collect_inputs(inputs)? {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(name) = SurveyName::parse(file) {
            match crate::survey::read_survey(&path) {
                Ok(_) => surveys.push((name, path)),
                Err(e) => summary.rejected.push((path, e.problem.to_string())),
            }
        } else if let Ok(name) = TapName::parse(file) {
            grouper.add(name, path);
        } else {
            summary.left += 1;
        }
    }
    let sets = grouper.take_complete();
    summary.left += grouper.take_stale().len();
    summary.left += grouper.pending().count();
    let keys: Vec<(Option<&str>, i64)> = sets
        .iter()
        .map(|s| (s.device.as_deref(), s.unix_s))
        .collect();
    let names: Vec<SurveyName> = surveys.iter().map(|(n, _)| n.clone()).collect();
    let survey_of = crate::survey::newest_per_set(&keys, &names, window_s);
    let mut publisher = JobPublisher::new(amqp, job_queue);
    for (set, survey) in sets.iter().zip(survey_of) {
        if let Err(bad) = crate::process::read_set(set) {
            for e in bad.rejected {
                let why = e.kind.to_string();
                summary.rejected.push((e.path, why));
            }
            continue;
        }
        let paths: Vec<std::path::PathBuf> = set
            .members
            .iter()
            .map(|m| m.key.clone())
            .chain(survey.map(|k| surveys[k].1.clone()))
            .collect();
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(JobFile { name, bytes });
        }
        publisher.publish(&Job { files }).with_context(|| {
            format!(
                "cannot publish {} to queue {job_queue}",
                set.result_name().json()
            )
        })?;
        summary.sets += 1;
        if delete {
            for p in &paths {
                std::fs::remove_file(p)
                    .with_context(|| format!("cannot delete {}", p.display()))?;
                summary.deleted += 1;
            }
        }
    }
    Ok(summary)
}
