//! Correlator backends side by side: CPU scalar, CPU SIMD and GPU on batches shaped like the
//! engine's gcc-phat batches (per set: 8 taps × 8 windows of 256 samples, 7 pairs per tap,
//! n_fft 512). Throughput is in sets. The GPU takes a software adapter when no real one is
//! present (its figures then say little); it is left out when there is no adapter at all.

use std::time::Duration;

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
    let gpu = match GpuGcc::new(N_FFT, true) {
        Ok(gpu) => {
            eprintln!("GPU adapter: {}", gpu.adapter_name());
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
    for n_sets in [1, 8, 64, 256, 1024] {
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
}

criterion_group!(benches, correlators);
criterion_main!(benches);
