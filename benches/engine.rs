//! Throughput benchmarks: parsing one tap file, estimating one set (default method and plain
//! GCC-PHAT), building its plain result and report, parsing and estimating together, the
//! set's tomogram (planning the rays, reconstruction with a plan and through the cache, and
//! the picture: drawing with PNG encoding), and a whole set after parsing (`per_set`).
//!
//! Files are simulated in memory (`simulate_many`, default parameters: 500 samples, about
//! 26 KB each, the size of a real device file), so the bench needs no data on disk.
//! Measurement time is kept short so `cargo bench` finishes in a couple of minutes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use terawang::device::{N_SENSORS, parse_tap};
use terawang::engine::{Engine, EngineConfig, Method};
use terawang::result::{ResultName, SetOutputs};
use terawang::simulate::{SimFile, SimParams, read_set, simulate_many};

fn one_set() -> Vec<SimFile> {
    let (files, _) = simulate_many(&SimParams::default(), 1, 1, false);
    assert_eq!(files.len(), N_SENSORS);
    files
}

fn parse(c: &mut Criterion) {
    let files = one_set();
    let file = &files[0];
    let mut group = c.benchmark_group("parse");
    group.throughput(criterion::Throughput::Bytes(file.json.len() as u64));
    group.bench_function("one_file", |b| {
        b.iter(|| parse_tap(black_box(&file.file_name), black_box(file.json.as_bytes())))
    });
    // Same-run reference: simd-json's borrowed value alone, the first half of the general
    // path the scanner replaces (the general path also copies the bytes and builds vectors).
    group.bench_function("simd_json_value_only", |b| {
        b.iter(|| {
            let mut bytes = black_box(file.json.as_bytes()).to_vec();
            simd_json::to_borrowed_value(&mut bytes)
                .map(|v| matches!(black_box(v), simd_json::BorrowedValue::Array(_)))
        })
    });
    group.finish();
}

fn engine(c: &mut Criterion) {
    let taps = read_set(&one_set());
    let mut engine = Engine::new(EngineConfig::default());
    let mut plain = Engine::new(EngineConfig {
        method: Method::GccPhat,
        ..EngineConfig::default()
    });
    let mut group = c.benchmark_group("engine");
    group.bench_function("one_set", |b| {
        b.iter(|| engine.estimate(black_box(&taps.input)))
    });
    // The computation the numpy reference script does (plain GCC-PHAT), for the comparison.
    group.bench_function("one_set_gcc_phat", |b| {
        b.iter(|| plain.estimate(black_box(&taps.input)))
    });
    group.finish();
}

/// The files of a set without the tomogram: the plain matrix and the report, in memory.
fn outputs(c: &mut Criterion) {
    let taps = read_set(&one_set());
    let cfg = EngineConfig::default();
    let est = Engine::new(cfg.clone())
        .estimate(&taps.input)
        .expect("the CPU engine never fails");
    let mut group = c.benchmark_group("outputs");
    group.bench_function("plain_and_report", |b| {
        b.iter(|| {
            SetOutputs::build(
                &ResultName::new(Some("x"), 1),
                black_box(&est),
                &cfg,
                &taps.files,
                false,
                None,
            )
        })
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let files = one_set();
    let mut engine = Engine::new(EngineConfig::default());
    let mut group = c.benchmark_group("end_to_end");
    group.bench_function("parse_8_files_and_estimate", |b| {
        b.iter(|| {
            let taps = read_set(black_box(&files));
            engine.estimate(&taps.input)
        })
    });
    group.finish();
}

/// The cross-section of one set: planning its rays, SIRT reconstruction with a plan and
/// through the cached path, and the picture (drawing plus PNG encoding).
fn tomogram(c: &mut Criterion) {
    use terawang::tomogram::{
        TomogramConfig, TomogramPlan, reconstruct, reconstruct_with_plan, render_png, usable_mask,
    };
    let taps = read_set(&one_set());
    let cfg = EngineConfig::default();
    let mut engine = Engine::new(cfg.clone());
    let matrix = engine
        .estimate(&taps.input)
        .expect("the CPU engine never fails")
        .plain_matrix();
    let tomo_cfg = TomogramConfig::default();
    let mask = usable_mask(&matrix, cfg.diameter_m);
    let plan = TomogramPlan::new(cfg.diameter_m, mask, &tomo_cfg).expect("a valid geometry");
    let picture = reconstruct(&matrix, cfg.diameter_m, &tomo_cfg).expect("enough rays");
    let mut group = c.benchmark_group("tomogram");
    // What a plan-cache miss costs: tracing the 28 chords and the weights.
    group.bench_function("plan", |b| {
        b.iter(|| TomogramPlan::new(cfg.diameter_m, black_box(mask), &tomo_cfg))
    });
    group.bench_function("reconstruct_with_plan", |b| {
        b.iter(|| reconstruct_with_plan(black_box(&matrix), &plan, &tomo_cfg))
    });
    // The path `process` takes: the plan from the thread's cache (a hit after the first).
    group.bench_function("reconstruct", |b| {
        b.iter(|| reconstruct(black_box(&matrix), cfg.diameter_m, &tomo_cfg))
    });
    group.bench_function("render_png", |b| {
        b.iter(|| {
            render_png(
                black_box(&picture),
                "20-79-18-81-6E-65 2025-08-21 05:01 UTC",
            )
        })
    });
    group.finish();
}

/// Everything a set costs after parsing, as `process` does it: estimate, tomogram, picture,
/// result and report, in memory.
fn per_set(c: &mut Criterion) {
    let taps = read_set(&one_set());
    let cfg = EngineConfig::default();
    let mut engine = Engine::new(cfg.clone());
    let name = ResultName::new(Some("20-79-18-81-6E-65"), 1_755_752_474);
    let mut group = c.benchmark_group("per_set");
    for (label, with_tomogram) in [("all_outputs", true), ("no_tomogram", false)] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let est = engine
                    .estimate(black_box(&taps.input))
                    .expect("the CPU engine never fails");
                SetOutputs::build(&name, &est, &cfg, &taps.files, with_tomogram, None)
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse, engine, outputs, end_to_end, tomogram, per_set
}
criterion_main!(benches);
