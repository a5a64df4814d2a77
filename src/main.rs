//! The `terawang` binary: parses the command line, builds the stages, and turns the final
//! error into an exit code in one place. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use terawang::backend::BackendChoice;
use terawang::calibrate::{CalibrateRequest, calibrate_command};
use terawang::engine::{DEFAULT_TRIGGER_LEAD, EngineConfig, Method};
use terawang::evaluate::{EvaluationGrid, Trigger, print_table};
use terawang::geometry::check_diameter;
use terawang::logging;
use terawang::process::{ProcessOptions, run};
use terawang::result::{render_plain, report_diameter};
use terawang::simulate::{Decay, SimParams, WaveModel, write_simulated};

#[derive(Parser)]
#[command(
    name = "terawang",
    version,
    about = "Stress-wave tree tomography: device recordings to velocity matrices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute the velocity matrix of every complete set among files and folders.
    Process(ProcessArgs),
    /// Write realistic simulated device files plus truth.json (the ground truth).
    Simulate(SimulateArgs),
    /// Simulate sets across a grid and print the error table against ground truth.
    Evaluate(EvaluateArgs),
    /// Redraw the tomogram picture of an existing plain result file.
    Render(RenderArgs),
    /// Measure a device's trigger lead (TRIGGER_LEAD) on sets tapped on a sound, uniform
    /// specimen whose velocity is known.
    Calibrate(CalibrateArgs),
    /// The service: watch DATA_DIR, compute each set, save, upload, publish, delete sources.
    Run(RunArgs),
    /// Publish every complete set among files and folders as a job for `run --role worker`
    /// (an archive to compute again), and exit once the broker confirmed them all.
    Enqueue(EnqueueArgs),
}

#[derive(Args)]
struct EnqueueArgs {
    /// Tap files (and survey files) and/or folders holding them (one level deep).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Largest span of a set's file times, seconds.
    #[arg(long, default_value_t = 900)]
    window: i64,
    /// Remove a set's files once the broker confirmed its job.
    #[arg(long)]
    delete: bool,
    /// Settings file (RABBITMQ_* and RABBITMQ_JOB_QUEUE); defaults to ./.env when present.
    #[arg(long)]
    env_file: Option<PathBuf>,
}

#[derive(Args)]
struct RenderArgs {
    /// A plain result file, `result_<device>_<unix>.json`.
    result: PathBuf,
    /// Trunk diameter in metres; defaults to the one in the report beside the result, else 0.3.
    #[arg(long)]
    diameter: Option<f64>,
    /// The picture to write; defaults to the result's name with `.png`.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CalibrateArgs {
    /// Tap files and/or folders holding them: sets tapped on the specimens, one input per
    /// specimen when there are several.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The specimen's velocity, m/s, the same along every chord (sound, uniform wood); one
    /// value for all inputs, or one per input (comma-separated, in the inputs' order).
    #[arg(long, value_delimiter = ',', required = true)]
    velocity: Vec<f64>,
    /// The specimen's diameter in metres (the circle the sensors sit on); one value for all
    /// inputs, or one per input.
    #[arg(long, env = "DIAMETER", value_delimiter = ',', default_value = "0.3")]
    diameter: Vec<f64>,
    /// Largest span of a set's file times, seconds.
    #[arg(long, default_value_t = 900)]
    window: i64,
}

#[derive(Args)]
struct RunArgs {
    /// `all` does everything in one process; `ingest` watches and groups and publishes each
    /// complete set as a job to RABBITMQ_JOB_QUEUE; `worker` computes and delivers jobs.
    #[arg(long, value_enum, default_value_t = terawang::service::Role::All)]
    role: terawang::service::Role,
    /// Process the files present at start, try each sink once per set, then exit
    /// (exit code 4 when a set stays undelivered).
    #[arg(long)]
    once: bool,
    /// Compute backend: `auto` uses a real GPU when present, else the CPU. A GPU is one
    /// context for the process; the sets ready together (up to 64) go into one dispatch.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    backend: BackendChoice,
    /// Settings file; defaults to ./.env when present. Real environment variables win.
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Engine threads; defaults to the number of cores.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct EngineArgs {
    /// Trunk diameter in metres.
    #[arg(long, env = "DIAMETER", default_value_t = 0.3)]
    diameter: f64,
    /// How ToFs are estimated.
    #[arg(long, value_parser = method_parser(), default_value_t = Method::Onset)]
    method: Method,
    /// Slowest plausible velocity, m/s: bounds the lag search and flags slower rays.
    #[arg(long, default_value_t = 300.0)]
    min_velocity: f64,
    /// Fastest plausible velocity, m/s: faster rays are flagged.
    #[arg(long, default_value_t = 3000.0)]
    max_velocity: f64,
    /// Mean time from the hammer's impact to a file's first sample, in sampling intervals
    /// (`onset` method; 0–4). The tapped channel clips from its first sample, so the data
    /// cannot tell it: 0.5 is a trigger on the impact that samples from its next clock tick;
    /// 0 is a device whose first sample is the impact. It shifts every time of flight by the
    /// same amount, so set it once per device type (README, "The trigger lead").
    #[arg(long, env = "TRIGGER_LEAD", default_value_t = DEFAULT_TRIGGER_LEAD)]
    trigger_lead: f64,
}

impl EngineArgs {
    fn config(&self) -> anyhow::Result<EngineConfig> {
        check_diameter("--diameter/DIAMETER", self.diameter)?;
        if !(self.min_velocity > 0.0 && self.min_velocity < self.max_velocity) {
            anyhow::bail!("--min-velocity must be positive and below --max-velocity");
        }
        Ok(EngineConfig {
            diameter_m: self.diameter,
            min_velocity_m_s: self.min_velocity,
            max_velocity_m_s: self.max_velocity,
            method: self.method,
            trigger_lead: EngineConfig::check_trigger_lead(self.trigger_lead)
                .map_err(|e| anyhow::anyhow!("--trigger-lead/TRIGGER_LEAD: {e}"))?,
            ..EngineConfig::default()
        })
    }
}

#[derive(Args)]
struct ProcessArgs {
    /// Tap files and/or folders holding them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Folder for the result files (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
    /// Compute backend: `auto` uses a real GPU when present, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    backend: BackendChoice,
    /// Worker threads; defaults to the number of cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Largest span of a set's file times, seconds.
    #[arg(long, default_value_t = 900)]
    window: i64,
    /// Skip the tomogram (the `.png` and the report's grid), for bulk reprocessing.
    #[arg(long)]
    no_tomogram: bool,
}

#[derive(Args)]
struct SimulateArgs {
    /// Folder for the files and truth.json (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Number of sets.
    #[arg(long, default_value_t = 1)]
    sets: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Trunk diameter in metres.
    #[arg(long, default_value_t = 0.3)]
    diameter: f64,
    /// Sound-wood velocity, m/s.
    #[arg(long, default_value_t = 1500.0)]
    velocity: f64,
    /// Signal-to-noise ratio of the receivers, dB.
    #[arg(long, default_value_t = 40.0)]
    snr_db: f64,
    /// A slow decayed disc: X,Y,RADIUS,FACTOR in units of the trunk radius, e.g. 0.1,0,0.4,0.5.
    #[arg(long)]
    decay: Option<Decay>,
    /// Draw velocity, diameter and decay per set from realistic ranges instead.
    #[arg(long)]
    vary: bool,
    /// How the receivers' recordings are made: `shared` (one pulse shape per set, its
    /// largest lobe first, noise that grows with each ray's amplitude), `field` (as on real
    /// recordings: a weak first arrival ahead of a bigger, slower phase, a shape per path, and
    /// the amplifier's noise alone), `field-close` (the weak first arrival only 2–4 samples
    /// ahead) or `dispersive` (a first arrival whose rise lengthens with the travel time).
    #[arg(long, default_value_t = WaveModel::Shared)]
    model: WaveModel,
    /// A device with a pre-trigger buffer: each impact comes 0.2–1.5 samples after its
    /// file's first sample, so the tapped channel rests before it rises.
    #[arg(long)]
    pre_trigger: bool,
    /// Time from the tap to each file's first sample, in sampling intervals; by default drawn
    /// uniformly within the sample before the first.
    #[arg(long)]
    lead: Option<f64>,
}

#[derive(Args)]
struct EvaluateArgs {
    /// Sets per grid cell.
    #[arg(long, default_value_t = 20)]
    sets: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// SNRs to evaluate, dB.
    #[arg(long, value_delimiter = ',', default_values_t = [40.0, 30.0, 20.0, 10.0])]
    snr_db: Vec<f64>,
    /// Methods to evaluate.
    #[arg(long, value_parser = method_parser(), value_delimiter = ',', default_values_t = Method::ALL)]
    method: Vec<Method>,
    /// Simulator wave models to evaluate (see `simulate --help`).
    #[arg(long, value_delimiter = ',', default_values_t = WaveModel::ALL)]
    model: Vec<WaveModel>,
    /// When the simulated records start: `clip` (the impact comes before the first sample,
    /// the tapped channel clips from it) and `pre` (a pre-trigger buffer: the impact comes
    /// 0.2–1.5 samples after the first sample).
    #[arg(long, value_delimiter = ',', default_values_t = [Trigger::Clip])]
    trigger: Vec<Trigger>,
    /// The simulator's time from the tap to each file's first sample, in sampling intervals;
    /// by default drawn uniformly within the sample before the first.
    #[arg(long)]
    sim_lead: Option<f64>,
    /// The engine's trigger lead, in sampling intervals (see `process --help`).
    #[arg(long, default_value_t = DEFAULT_TRIGGER_LEAD)]
    trigger_lead: f64,
}

/// Exit codes, one table for every command (2 is clap's usage error).
const EXIT_CODES: &str = "Exit codes: 0 success; 1 fatal error (bad settings, I/O); 2 usage error \
    (bad command line); 3 done, but some input was rejected or a set could not be written \
    (process, calibrate, enqueue; calibrate: also a lead outside 0-4); 4 run --once left a set undelivered (it stays \
    in the journal for the next run).";
const EXIT_INPUT_REJECTED: u8 = 3;
const EXIT_UNDELIVERED: u8 = 4;

/// `--method`: the engine's methods, each with its summary in the help.
fn method_parser() -> impl clap::builder::TypedValueParser<Value = Method> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let names = Method::ALL.map(|m| PossibleValue::new(m.name()).help(m.summary()));
    PossibleValuesParser::new(names).try_map(|name| name.parse::<Method>())
}

fn main() -> ExitCode {
    quiet_wayland_probe();
    // `run --help` lists every setting the service reads, from the one table in `config`.
    let command = Cli::command()
        .after_help(EXIT_CODES)
        .mut_subcommand("run", |c| c.after_help(settings_help()));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Run(_)) {
        // `run` reads LOG_FORMAT from its settings (the .env too); the others from the
        // environment.
        let format = std::env::var("LOG_FORMAT")
            .ok()
            .and_then(|f| f.parse().ok())
            .unwrap_or_default();
        logging::init(format);
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", logging::clean(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// The Vulkan driver loads libwayland-client when the GPU is probed, and on a machine with no
/// display it prints "error: XDG_RUNTIME_DIR is invalid or not set" for every probe. Pointing
/// the variable at a folder with no compositor in it makes that lookup fail quietly.
fn quiet_wayland_probe() {
    let usable =
        std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|v| v.to_string_lossy().starts_with('/'));
    if !usable {
        let none = std::env::temp_dir().join("terawang-no-display");
        // SAFETY: the first thing main does, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", none) };
    }
}

/// The settings of `terawang run`, one line each: name, default, meaning.
fn settings_help() -> String {
    let mut text = String::from(
        "Settings come from the environment or the .env file (the environment wins); \
         .env.example lists them all:\n",
    );
    for (name, default, meaning) in terawang::config::VARIABLES {
        let default = if default.is_empty() {
            "(empty)"
        } else {
            default
        };
        text.push_str(&format!("  {name} = {default}\n      {meaning}\n"));
    }
    text
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Process(a) => {
            let opts = ProcessOptions {
                inputs: a.inputs,
                out_dir: a.out,
                engine: a.engine.config()?,
                backend: a.backend,
                threads: a
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                window_s: a.window,
                progress: true,
                tomogram: !a.no_tomogram,
                // Only a --diameter on the command line overrides survey files (DIAMETER is
                // the default for sets without one).
                diameter_fixed: std::env::args_os().any(|arg| {
                    arg == "--diameter" || arg.to_string_lossy().starts_with("--diameter=")
                }),
            };
            let summary = run(&opts)?;
            summary.print(&mut std::io::stdout())?;
            Ok(
                if summary.rejected.is_empty()
                    && summary.failed.is_empty()
                    && summary.rejected_surveys.is_empty()
                {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_INPUT_REJECTED)
                },
            )
        }
        Command::Simulate(a) => {
            let base = SimParams {
                diameter_m: a.diameter,
                velocity_m_s: a.velocity,
                snr_db: a.snr_db,
                decay: a.decay,
                model: a.model,
                tap_lead: check_sim_lead(a.lead)?,
                pre_trigger: a.pre_trigger,
                ..SimParams::default()
            };
            let n_files = write_simulated(&a.out, &base, a.sets, a.seed, a.vary)?;
            println!(
                "{} sets, {n_files} files written to {}",
                a.sets,
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(a) => {
            let diameter = a
                .diameter
                .or_else(|| report_diameter(&a.result))
                .unwrap_or(0.3);
            check_diameter("--diameter", diameter)?;
            let out = a.out.unwrap_or_else(|| a.result.with_extension("png"));
            let png = render_plain(&a.result, diameter)?;
            std::fs::write(&out, png).with_context(|| format!("cannot write {}", out.display()))?;
            println!("{} (diameter {diameter} m)", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => {
            let raw = terawang::config::RawConfig::load(a.env_file.as_deref())?;
            logging::init(terawang::config::log_format(&raw)?);
            for secret in ["FTP_PASSWORD", "RABBITMQ_PASSWORD"] {
                if let Some(value) = raw.vars.get(secret) {
                    logging::redact(value);
                }
            }
            let cfg = terawang::config::Config::from_raw(&raw)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("cannot install the signal handlers")?;
            }
            let opts = terawang::service::ServiceOptions {
                role: a.role,
                once: a.once,
                backend: a.backend,
                threads: a
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            };
            let summary = terawang::service::run(&cfg, &opts, stop)?;
            log::info!(
                "stopped: {} sets delivered, {} undelivered (kept in the journal), {} files rejected",
                summary.delivered,
                summary.undelivered,
                summary.rejected
            );
            Ok(if summary.undelivered > 0 {
                ExitCode::from(EXIT_UNDELIVERED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Enqueue(a) => {
            let raw = terawang::config::RawConfig::load(a.env_file.as_deref())?;
            for secret in ["FTP_PASSWORD", "RABBITMQ_PASSWORD"] {
                if let Some(value) = raw.vars.get(secret) {
                    logging::redact(value);
                }
            }
            let cfg = terawang::config::Config::from_raw(&raw)?;
            let amqp = cfg
                .amqp
                .as_ref()
                .context("enqueue publishes to RabbitMQ: RABBITMQ_HOST is empty")?;
            let summary =
                terawang::job::enqueue_files(amqp, &cfg.job_queue, &a.inputs, a.window, a.delete)?;
            for (path, why) in &summary.rejected {
                eprintln!("rejected {}: {why}", path.display());
            }
            println!(
                "enqueued {} sets to queue {} ({} files deleted); {} files rejected, {} in no set",
                summary.sets,
                cfg.job_queue,
                summary.deleted,
                summary.rejected.len(),
                summary.left
            );
            Ok(if summary.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INPUT_REJECTED)
            })
        }
        Command::Calibrate(a) => {
            let all_good = calibrate_command(&CalibrateRequest {
                inputs: a.inputs,
                velocities: a.velocity,
                diameters: a.diameter,
                window_s: a.window,
            })?;
            Ok(if all_good {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INPUT_REJECTED)
            })
        }
        Command::Evaluate(a) => {
            let trigger_lead = EngineConfig::check_trigger_lead(a.trigger_lead)
                .map_err(|e| anyhow::anyhow!("--trigger-lead: {e}"))?;
            let tap_lead = check_sim_lead(a.sim_lead)?;
            let grid = EvaluationGrid {
                models: a.model.clone(),
                triggers: a.trigger.clone(),
                snrs_db: a.snr_db.clone(),
                methods: a.method.clone(),
                sets: a.sets,
                seed: a.seed,
                sim_lead: tap_lead,
                trigger_lead,
            };
            print_table(&grid, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The simulator's fixed tap lead, when given: samples in [0, 4].
fn check_sim_lead(lead: Option<f64>) -> anyhow::Result<Option<f64>> {
    lead.map(|l| {
        EngineConfig::check_trigger_lead(l)
            .map_err(|e| anyhow::anyhow!("the simulator's lead: {e}"))
    })
    .transpose()
}
