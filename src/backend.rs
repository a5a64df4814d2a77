//! Picking the correlator backend once: `cpu`, `gpu` or `auto` (a real GPU when there is one,
//! else the CPU, with a log line saying why). A software adapter counts as no GPU for `auto`;
//! `gpu` takes one only when `allow_software` (or `TERAWANG_GPU_ALLOW_SOFTWARE=1`) says so.

use crate::engine::{Correlator, CorrelatorKind, CpuGcc, Kernel};
use crate::gpu::{GpuError, GpuGcc, software_allowed_by_env};

/// Which correlator computes the GCC-PHAT batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// rustfft with the SIMD PHAT kernel.
    #[default]
    Cpu,
    /// wgpu compute shaders; fails when no usable GPU adapter is found.
    Gpu,
    /// The GPU when a real one is present, else the CPU.
    Auto,
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendChoice::Cpu => "cpu",
            BackendChoice::Gpu => "gpu",
            BackendChoice::Auto => "auto",
        })
    }
}

/// One correlator per worker, all built before any work so that a backend that cannot start
/// fails cleanly, with `auto` decided once for all of them.
pub fn make_correlators(
    choice: BackendChoice,
    n_fft: usize,
    count: usize,
) -> Result<Vec<Box<dyn Correlator>>, GpuError> {
    let mut backend = choice;
    let mut correlators = Vec::with_capacity(count);
    for _ in 0..count {
        let correlator = make_correlator(backend, n_fft, false)?;
        backend = settled(correlator.as_ref());
        correlators.push(correlator);
    }
    Ok(correlators)
}

/// Builds the correlator for `n_fft` on the chosen backend. `gpu` takes a software adapter
/// when `allow_software` or `TERAWANG_GPU_ALLOW_SOFTWARE=1`; `auto` never does.
pub fn make_correlator(
    choice: BackendChoice,
    n_fft: usize,
    allow_software: bool,
) -> Result<Box<dyn Correlator>, GpuError> {
    let cpu = || Box::new(CpuGcc::new(n_fft, Kernel::Simd)) as Box<dyn Correlator>;
    match choice {
        BackendChoice::Cpu => Ok(cpu()),
        BackendChoice::Gpu => Ok(Box::new(GpuGcc::new(
            n_fft,
            allow_software || software_allowed_by_env(),
        )?)),
        BackendChoice::Auto => match GpuGcc::new(n_fft, false) {
            Ok(gpu) => Ok(Box::new(gpu)),
            Err(e) => {
                log::info!("backend auto: using the CPU ({e})");
                Ok(cpu())
            }
        },
    }
}

/// The concrete backend a correlator runs on, so that `auto` is decided only once.
pub fn settled(correlator: &dyn Correlator) -> BackendChoice {
    match correlator.kind() {
        CorrelatorKind::Gpu => BackendChoice::Gpu,
        CorrelatorKind::Cpu => BackendChoice::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_builds_and_auto_never_fails() {
        let cpu = make_correlator(BackendChoice::Cpu, 64, false).unwrap();
        assert_eq!((cpu.kind(), cpu.name()), (CorrelatorKind::Cpu, "cpu"));
        assert_eq!(settled(cpu.as_ref()), BackendChoice::Cpu);
        let auto = make_correlator(BackendChoice::Auto, 512, false).unwrap();
        assert!(["cpu", "gpu"].contains(&auto.name()));
        assert_eq!(auto.n_fft(), 512);
        assert_ne!(settled(auto.as_ref()), BackendChoice::Auto);
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn gpu_without_the_feature_says_so() {
        let e = make_correlator(BackendChoice::Gpu, 64, true).err().unwrap();
        assert!(e.to_string().contains("--features gpu"), "{e}");
    }
}
