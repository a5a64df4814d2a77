//! terawang: stress-wave tree tomography, from raw device recordings to velocity matrices.
//!
//! Stages, one module each: [`device`] reads tap files, [`group`] groups them into sets,
//! [`engine`] computes times of flight and velocities, [`process`] runs the batch command,
//! [`simulate`] makes realistic files with ground truth, [`tomogram`] reconstructs and draws
//! the cross-section. The service `run` is [`service`]:
//! [`config`] → [`watch`] → [`group`] → [`engine`] → [`sink`], with [`journal`] keeping state
//! and [`tls`] securing the sinks' connections.
//! [`backend`] picks the correlator: the CPU, or the GPU in [`gpu`]. [`calibrate`] measures a
//! device's trigger lead on a specimen of known velocity.
//!
//! # The engine on its own
//!
//! The engine takes samples and sample times, nothing else: no file, no name, no guid. Eight
//! [`Recording`](engine::Recording)s (one per tap, each with all eight channels) make a
//! [`SetInput`](engine::SetInput), and [`Engine::estimate`](engine::Engine::estimate) gives the
//! times of flight and the 8×8 velocity matrix. Here a synthetic trunk 0.3 m across, sound wood
//! at 1500 m/s, sampled every 27 µs:
//!
//! ```
//! use terawang::engine::{Engine, EngineConfig, N_SENSORS, Recording, SetInput};
//! use terawang::geometry::chord_m;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (diameter_m, velocity_m_s) = (0.3, 1500.0);
//! let times_ns: Vec<i64> = (0..256).map(|k| k * 27_000).collect();
//! // The tap on sensor `tap`, half a sample before the first sample: the tapped channel clips,
//! // every other channel rests at 2100 counts until the wave arrives along its chord.
//! let tap = |tap: usize| {
//!     let channels = std::array::from_fn(|j| {
//!         let arrival_us = chord_m(tap, j, diameter_m) / velocity_m_s * 1e6;
//!         times_ns
//!             .iter()
//!             .map(|&t| {
//!                 let h = (t as f64 / 1000.0 + 13.5 - arrival_us).max(0.0);
//!                 let wave = (h / 50.0).sin() * (-h / 150.0).exp();
//!                 if j == tap { 4080.0 } else { 2100.0 + 600.0 * wave as f32 }
//!             })
//!             .collect()
//!     });
//!     Recording::new(channels, times_ns.clone())
//! };
//! let recordings: Vec<Recording> = (0..N_SENSORS).map(tap).collect::<Result<_, _>>()?;
//! let set = SetInput::try_from(recordings)?;
//!
//! let mut engine = Engine::new(EngineConfig { diameter_m, ..EngineConfig::default() });
//! let estimate = engine.estimate(&set)?;
//! // m/s, row = tapped sensor, column = receiving sensor; 0 on the diagonal and where a ray
//! // could not be trusted.
//! let matrix = estimate.plain_matrix();
//! let usable: Vec<f64> = matrix.iter().flatten().copied().filter(|&v| v > 0.0).collect();
//! assert_eq!(usable.len(), 56);
//! assert!(usable.iter().all(|v| (v - velocity_m_s).abs() < 0.01 * velocity_m_s));
//! # Ok(())
//! # }
//! ```
//!
//! Reading device files is [`device`]'s part: [`device::SetRecording`] splits eight read files
//! into the engine's input and the file names and guids the reports carry.

// Ray matrices are indexed [tapped][receiver]; index loops read closer to the physics.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod calibrate;
pub mod config;
pub mod device;
pub mod engine;
pub mod evaluate;
pub mod geometry;
pub mod gpu;
pub mod group;
pub mod job;
pub mod journal;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod remote;
pub mod result;
pub mod rng;
pub mod service;
pub mod simulate;
pub mod sink;
pub mod survey;
pub mod tls;
pub mod tomogram;
pub mod watch;
