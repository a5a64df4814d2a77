//! Correlator backends side by side: CPU scalar, CPU SIMD and GPU on batches shaped like the
//! engine's gcc-phat batches (per set: 8 taps × 8 windows of 256 samples, 7 pairs per tap,
//! n_fft 512). Throughput is in sets. The GPU takes a software adapter when no real one is
//! present (its figures then say little); it is left out when there is no adapter at all.
//! After criterion's figures it prints sets per second against the batch size for each
//! backend, timed again in one pass (the best of a few runs each), and the crossover: the
//! smallest batch at which the GPU delivers more sets per second than `cpu-simd`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use terawang::engine::{Correlator, CpuGcc, Kernel, PairBatch};
use terawang::gpu::GpuGcc;
use terawang::rng::Rng;

const N_FFT: usize = 512;
const TAPS_PER_SET: usize = 8;
const WINDOWS_PER_TAP: usize = 8;

fn batch_of_sets(n_sets: usize, rng: &mut Rng) -> PairBatch {
    let mut batch = PairBatch::new(N_FFT);
    let samples: Vec<f32> = (0..N_FFT / 2).map(|_| 0.0).collect();
    let mut window = samples;
    for _ in 0..n_sets * TAPS_PER_SET {
        let mut first = 0;
        for k in 0..WINDOWS_PER_TAP {
            window
                .iter_mut()
                .for_each(|x| *x = 300.0 * rng.normal() as f32);
            let w = batch.push_window(&window);
            if k == 0 {
                first = w;
            } else {
                batch.push_pair(first, w);
            }
        }
    }
    batch
}

fn correlators(c: &mut Criterion) {
    let mut adapter = None;
    let gpu = match GpuGcc::new(N_FFT, true) {
        Ok(gpu) => {
            eprintln!("GPU adapter: {}", gpu.adapter_name());
            adapter = Some(gpu.adapter_name().to_string());
            Some(gpu)
        }
        Err(e) => {
            eprintln!("GPU left out: {e}");
            None
        }
    };
    let mut backends: Vec<(&str, Box<dyn Correlator>)> = vec![
        ("cpu-scalar", Box::new(CpuGcc::new(N_FFT, Kernel::Scalar))),
        ("cpu-simd", Box::new(CpuGcc::new(N_FFT, Kernel::Simd))),
    ];
    if let Some(gpu) = gpu {
        backends.push(("gpu", Box::new(gpu)));
    }
    let mut group = c.benchmark_group("correlate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let mut rng = Rng::new(5);
    for n_sets in BATCHES {
        let batch = batch_of_sets(n_sets, &mut rng);
        let mut out = vec![0.0; batch.out_len()];
        group.throughput(Throughput::Elements(n_sets as u64));
        for (name, correlator) in &mut backends {
            group.bench_with_input(BenchmarkId::new(*name, n_sets), &batch, |b, batch| {
                b.iter(|| correlator.correlate(batch, &mut out).unwrap())
            });
        }
    }
    group.finish();
    summary(&mut backends, adapter.as_deref());
}

/// Sets per batch, as benched.
const BATCHES: [usize; 5] = [1, 8, 64, 256, 1024];

/// Prints sets per second against the batch size for each backend and the crossover batch
/// size, all timed in this one pass.
fn summary(backends: &mut [(&str, Box<dyn Correlator>)], adapter: Option<&str>) {
    let mut rng = Rng::new(5);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
    for n_sets in BATCHES {
        let batch = batch_of_sets(n_sets, &mut rng);
        let mut out = vec![0.0; batch.out_len()];
        for ((_, correlator), rates) in backends.iter_mut().zip(&mut rates) {
            // The best of at least three runs, and of as many as fit in half a second.
            let t0 = Instant::now();
            let mut best = f64::INFINITY;
            for run in 0.. {
                if run >= 3 && t0.elapsed() > Duration::from_millis(500) {
                    break;
                }
                let t = Instant::now();
                correlator.correlate(&batch, &mut out).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            rates.push(n_sets as f64 / best);
        }
    }
    println!();
    println!(
        "sets per second by batch size (GPU adapter: {})",
        adapter.unwrap_or("none")
    );
    print!("{:>8}", "sets");
    for (name, _) in backends.iter() {
        print!("{name:>14}");
    }
    println!();
    for (k, n_sets) in BATCHES.iter().enumerate() {
        print!("{n_sets:>8}");
        for rates in &rates {
            print!("{:>14.0}", rates[k]);
        }
        println!();
    }
    let column = |name: &str| backends.iter().position(|(n, _)| *n == name);
    match (column("gpu"), column("cpu-simd")) {
        (Some(gpu), Some(cpu)) => {
            match BATCHES
                .iter()
                .zip(rates[gpu].iter().zip(&rates[cpu]))
                .find(|(_, (g, c))| g > c)
            {
                Some((n, _)) => println!("crossover: the GPU is faster from {n} sets per batch"),
                None => println!(
                    "crossover: none up to {} sets per batch (cpu-simd is faster at every size)",
                    BATCHES[BATCHES.len() - 1]
                ),
            }
        }
        _ => println!("crossover: no GPU adapter"),
    }
}

criterion_group!(benches, correlators);
criterion_main!(benches);
