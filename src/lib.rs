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
pub mod journal;
pub mod process;
pub mod result;
pub mod rng;
pub mod service;
pub mod simulate;
pub mod sink;
pub mod tls;
pub mod tomogram;
pub mod watch;
