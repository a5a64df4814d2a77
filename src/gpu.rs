//! The GPU correlator: batched GCC-PHAT in WGSL compute shaders (`shaders/gcc_phat.wgsl`)
//! through wgpu, driven synchronously (`pollster::block_on` plus a blocking device poll).
//!
//! [`GpuGcc`] implements [`Correlator`] with the CPU's contract: `out[pair·n_fft + lag]` is the
//! circular PHAT-weighted cross-correlation of the pair's windows, scaled by 1/n_fft. One
//! context owns the device, queue, pipelines and persistent buffers; the buffers are sized to
//! the largest batch seen so far and grown when a bigger one arrives. A batch bigger than one
//! storage binding (64 MiB) is run in chunks of pairs. The first shader transforms every
//! window once, the second forms each pair's PHAT-weighted cross-spectrum and inverts it.
//!
//! A software adapter (llvmpipe, `DeviceType::Cpu`) is used only when asked for
//! (`allow_software`, or [`ALLOW_SOFTWARE_ENV`]`=1`). A build without the `gpu` feature has a
//! stub [`GpuGcc::new`] with the same API that returns [`GpuError::NotCompiled`].

use crate::engine::gcc::{Correlator, CorrelatorError, CorrelatorKind, PairBatch};

/// Setting this to `1` lets a software adapter count as a GPU (for tests and CI).
pub const ALLOW_SOFTWARE_ENV: &str = "TERAWANG_GPU_ALLOW_SOFTWARE";

/// Largest FFT length the shaders handle (their workgroup buffer).
pub const MAX_FFT: usize = 1024;

/// Whether [`ALLOW_SOFTWARE_ENV`] asks for software adapters to be allowed.
pub fn software_allowed_by_env() -> bool {
    matches!(
        std::env::var(ALLOW_SOFTWARE_ENV).as_deref(),
        Ok("1" | "true" | "yes")
    )
}

/// Why no GPU correlator could be built.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("GPU support is not compiled in (build with --features gpu)")]
    NotCompiled,
    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU correlator needs a power-of-two FFT length in 2..={MAX_FFT}, got {0}")]
    UnsupportedFftLength(usize),
    #[error("cannot set up the GPU device {adapter}: {reason}")]
    Device { adapter: String, reason: String },
}

fn check_n_fft(n_fft: usize) -> Result<(), GpuError> {
    if n_fft.is_power_of_two() && (2..=MAX_FFT).contains(&n_fft) {
        Ok(())
    } else {
        Err(GpuError::UnsupportedFftLength(n_fft))
    }
}

#[cfg(feature = "gpu")]
pub use enabled::GpuGcc;

#[cfg(not(feature = "gpu"))]
pub use disabled::GpuGcc;

#[cfg(not(feature = "gpu"))]
mod disabled {
    use super::*;

    /// Stand-in for the GPU correlator in a build without the `gpu` feature.
    pub struct GpuGcc {
        _never: std::convert::Infallible,
    }

    impl GpuGcc {
        /// Always fails: GPU support is not compiled in.
        pub fn new(n_fft: usize, allow_software: bool) -> Result<Self, GpuError> {
            let _ = (n_fft, allow_software, check_n_fft);
            Err(GpuError::NotCompiled)
        }

        pub fn adapter_name(&self) -> &str {
            match self._never {}
        }
    }

    impl Correlator for GpuGcc {
        fn n_fft(&self) -> usize {
            match self._never {}
        }

        fn correlate(&mut self, _: &PairBatch, _: &mut [f32]) -> Result<(), CorrelatorError> {
            match self._never {}
        }

        fn name(&self) -> &'static str {
            "gpu"
        }

        fn kind(&self) -> CorrelatorKind {
            CorrelatorKind::Gpu
        }
    }
}

#[cfg(feature = "gpu")]
mod enabled {
    use super::*;

    const SHADER: &str = include_str!("../shaders/gcc_phat.wgsl");
    /// Workgroups along x per dispatch row (`ROW` in the shader).
    const ROW: u32 = 32768;
    /// Largest storage binding one chunk of a batch uses.
    const MAX_CHUNK_BYTES: u64 = 64 << 20;

    /// Uniform block of the shaders (`Params`).
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Params {
        n_fft: u32,
        log2_n: u32,
        n_windows: u32,
        n_pairs: u32,
    }

    /// Buffers sized for `windows_cap` windows and `pairs_cap` pairs, and their bind group.
    struct Buffers {
        windows_cap: usize,
        pairs_cap: usize,
        windows: wgpu::Buffer,
        pairs: wgpu::Buffer,
        out: wgpu::Buffer,
        readback: wgpu::Buffer,
        bind_group: wgpu::BindGroup,
    }

    /// The GPU correlator for one FFT length.
    pub struct GpuGcc {
        n_fft: usize,
        adapter: String,
        device: wgpu::Device,
        queue: wgpu::Queue,
        layout: wgpu::BindGroupLayout,
        forward: wgpu::ComputePipeline,
        cross: wgpu::ComputePipeline,
        params: wgpu::Buffer,
        twiddles: wgpu::Buffer,
        buffers: Option<Buffers>,
        /// Largest number of windows / pairs one chunk may hold.
        max_windows: usize,
        max_pairs: usize,
        /// Host scratch for batches run in chunks.
        local_windows: Vec<f32>,
        local_pairs: Vec<[u32; 2]>,
        remap: Vec<u32>,
    }

    /// The best adapter: a discrete GPU over an integrated one over anything else; a software
    /// adapter only when `allow_software`.
    fn pick_adapter(allow_software: bool) -> Result<wgpu::Adapter, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let mut seen = Vec::new();
        let mut best: Option<(u8, wgpu::Adapter)> = None;
        for adapter in adapters {
            let info = adapter.get_info();
            seen.push(format!(
                "{} ({:?}, {:?})",
                info.name, info.device_type, info.backend
            ));
            let compute = adapter
                .get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
            let rank = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => 4,
                wgpu::DeviceType::IntegratedGpu => 3,
                wgpu::DeviceType::VirtualGpu => 2,
                wgpu::DeviceType::Other => 1,
                wgpu::DeviceType::Cpu => 0,
            };
            if !compute || (rank == 0 && !allow_software) {
                continue;
            }
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, adapter));
            }
        }
        match best {
            Some((_, adapter)) => Ok(adapter),
            None if seen.is_empty() => Err(GpuError::NoAdapter(
                "no adapter found (is a Vulkan, Metal or DX12 driver installed?)".into(),
            )),
            None => Err(GpuError::NoAdapter(format!(
                "only software or compute-less adapters found: {} \
                 (set {ALLOW_SOFTWARE_ENV}=1 to use a software adapter)",
                seen.join(", ")
            ))),
        }
    }

    fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }
    }

    /// Workgroup grid for `count` workgroups: rows of at most [`ROW`].
    fn grid(count: usize) -> (u32, u32) {
        let count = count as u32;
        (count.min(ROW), count.div_ceil(ROW))
    }

    fn gpu_err(what: &'static str, e: impl std::fmt::Display) -> CorrelatorError {
        CorrelatorError::Gpu {
            what,
            detail: e.to_string(),
        }
    }

    impl GpuGcc {
        /// Opens the best adapter and builds the pipelines for `n_fft` (a power of two up to
        /// [`MAX_FFT`]). Software adapters count only when `allow_software`.
        pub fn new(n_fft: usize, allow_software: bool) -> Result<Self, GpuError> {
            check_n_fft(n_fft)?;
            let adapter = pick_adapter(allow_software)?;
            let info = adapter.get_info();
            let name = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
            let device_err = |reason: String| GpuError::Device {
                adapter: name.clone(),
                reason,
            };
            let available = adapter.limits();
            let limits = wgpu::Limits {
                max_storage_buffers_per_shader_stage: 5,
                max_storage_buffer_binding_size: available
                    .max_storage_buffer_binding_size
                    .min(MAX_CHUNK_BYTES),
                max_buffer_size: available.max_buffer_size.min(MAX_CHUNK_BYTES),
                ..wgpu::Limits::downlevel_defaults()
            };
            let (device, queue) =
                pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                    label: Some("terawang"),
                    required_limits: limits.clone(),
                    ..Default::default()
                }))
                .map_err(|e| device_err(e.to_string()))?;
            // Errors inside `correlate` are caught by error scopes; anything else is logged
            // rather than panicking a worker.
            device.on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| {
                log::error!("GPU error: {e}")
            }));

            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("gcc_phat.wgsl"),
                source: wgpu::ShaderSource::Wgsl(SHADER.into()),
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("gcc_phat"),
                entries: &[
                    wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    },
                    storage_entry(1, true),
                    storage_entry(2, true),
                    storage_entry(3, true),
                    storage_entry(4, false),
                    storage_entry(5, false),
                ],
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("gcc_phat"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = |entry: &str| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    // Every workgroup writes its buffer before reading it.
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &[],
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            };
            let (forward, cross) = (pipeline("forward"), pipeline("cross"));

            let params = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: std::mem::size_of::<Params>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            // exp(-2πi·k/n) for k < n/2, computed in f64: the shader's sin/cos are too coarse.
            let twiddle_values: Vec<[f32; 2]> = (0..n_fft / 2)
                .map(|k| {
                    let a = -std::f64::consts::TAU * k as f64 / n_fft as f64;
                    [a.cos() as f32, a.sin() as f32]
                })
                .collect();
            let twiddles = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("twiddles"),
                size: (twiddle_values.len() * 8) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&twiddles, 0, bytemuck::cast_slice(&twiddle_values));
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(device_err(e.to_string()));
            }
            let binding = limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size);
            let max_windows = (binding / (n_fft as u64 * 8)) as usize;
            let max_pairs = (binding / (n_fft as u64 * 4)) as usize;
            if max_windows < 2 {
                return Err(device_err(format!(
                    "storage buffers of {binding} bytes are too small"
                )));
            }
            log::info!("GPU correlator on {name}");
            Ok(GpuGcc {
                n_fft,
                adapter: name,
                device,
                queue,
                layout,
                forward,
                cross,
                params,
                twiddles,
                buffers: None,
                max_windows,
                max_pairs,
                local_windows: Vec::new(),
                local_pairs: Vec::new(),
                remap: Vec::new(),
            })
        }

        /// Name, type and backend of the adapter in use.
        pub fn adapter_name(&self) -> &str {
            &self.adapter
        }

        /// Makes sure the buffers hold `n_windows` windows and `n_pairs` pairs.
        fn ensure_buffers(&mut self, n_windows: usize, n_pairs: usize) {
            if let Some(b) = &self.buffers
                && b.windows_cap >= n_windows
                && b.pairs_cap >= n_pairs
            {
                return;
            }
            let old = self
                .buffers
                .as_ref()
                .map_or((0, 0), |b| (b.windows_cap, b.pairs_cap));
            // Grow geometrically so a slowly growing batch does not reallocate every time.
            let windows_cap = n_windows
                .max(old.0)
                .next_power_of_two()
                .min(self.max_windows.max(n_windows));
            let pairs_cap = n_pairs
                .max(old.1)
                .next_power_of_two()
                .min(self.max_pairs.max(n_pairs));
            let n = self.n_fft as u64;
            let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage,
                    mapped_at_creation: false,
                })
            };
            use wgpu::BufferUsages as U;
            let windows = buffer(
                "windows",
                windows_cap as u64 * n * 4,
                U::STORAGE | U::COPY_DST,
            );
            let pairs = buffer("pairs", pairs_cap as u64 * 8, U::STORAGE | U::COPY_DST);
            let spectra = buffer("spectra", windows_cap as u64 * n * 8, U::STORAGE);
            let out = buffer("out", pairs_cap as u64 * n * 4, U::STORAGE | U::COPY_SRC);
            let readback = buffer(
                "readback",
                pairs_cap as u64 * n * 4,
                U::MAP_READ | U::COPY_DST,
            );
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("gcc_phat"),
                layout: &self.layout,
                entries: &[
                    (0, &self.params),
                    (1, &self.twiddles),
                    (2, &windows),
                    (3, &pairs),
                    (4, &spectra),
                    (5, &out),
                ]
                .map(|(binding, buf)| wgpu::BindGroupEntry {
                    binding,
                    resource: buf.as_entire_binding(),
                }),
            });
            self.buffers = Some(Buffers {
                windows_cap,
                pairs_cap,
                windows,
                pairs,
                out,
                readback,
                bind_group,
            });
        }

        /// One submission: upload, both shaders, read back `pairs.len()·n_fft` values.
        fn run_chunk(
            &mut self,
            windows: &[f32],
            pairs: &[[u32; 2]],
            out: &mut [f32],
        ) -> Result<(), CorrelatorError> {
            let n = self.n_fft;
            let (n_windows, n_pairs) = (windows.len() / n, pairs.len());
            let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            self.ensure_buffers(n_windows, n_pairs);
            let bufs = self.buffers.as_ref().expect("buffers were just made");
            let params = Params {
                n_fft: n as u32,
                log2_n: n.trailing_zeros(),
                n_windows: n_windows as u32,
                n_pairs: n_pairs as u32,
            };
            self.queue
                .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
            self.queue
                .write_buffer(&bufs.windows, 0, bytemuck::cast_slice(windows));
            self.queue
                .write_buffer(&bufs.pairs, 0, bytemuck::cast_slice(pairs));
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("gcc_phat"),
                });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("gcc_phat"),
                    timestamp_writes: None,
                });
                pass.set_bind_group(0, &bufs.bind_group, &[]);
                pass.set_pipeline(&self.forward);
                let (x, y) = grid(n_windows);
                pass.dispatch_workgroups(x, y, 1);
                pass.set_pipeline(&self.cross);
                let (x, y) = grid(n_pairs);
                pass.dispatch_workgroups(x, y, 1);
            }
            let out_bytes = (n_pairs * n * 4) as u64;
            encoder.copy_buffer_to_buffer(&bufs.out, 0, &bufs.readback, 0, out_bytes);
            let submission = self.queue.submit([encoder.finish()]);
            let slice = bufs.readback.slice(..out_bytes);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            let polled = self.device.poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            });
            let oom = pollster::block_on(oom.pop());
            let validation = pollster::block_on(validation.pop());
            let read = || -> Result<(), CorrelatorError> {
                if let Some(e) = oom {
                    return Err(gpu_err("out of memory", e));
                }
                if let Some(e) = validation {
                    return Err(gpu_err("validation error", e));
                }
                polled.map_err(|e| gpu_err("poll failed", e))?;
                rx.recv()
                    .map_err(|e| gpu_err("map callback lost", e))?
                    .map_err(|e| gpu_err("read-back failed", e))?;
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| gpu_err("read-back failed", e))?;
                out.copy_from_slice(bytemuck::cast_slice(&view));
                Ok(())
            };
            let result = read();
            // Unmapped on failure too (a pending map is cancelled), so the next batch can map.
            bufs.readback.unmap();
            result
        }

        /// Runs a batch too big for one binding: chunks of consecutive pairs, each with only
        /// the windows it uses (renumbered).
        fn run_chunked(
            &mut self,
            batch: &PairBatch,
            out: &mut [f32],
        ) -> Result<(), CorrelatorError> {
            let n = self.n_fft;
            let mut local_windows = std::mem::take(&mut self.local_windows);
            let mut local_pairs = std::mem::take(&mut self.local_pairs);
            let mut remap = std::mem::take(&mut self.remap);
            remap.clear();
            remap.resize(batch.n_windows(), u32::MAX);
            let mut start = 0;
            let mut result = Ok(());
            while start < batch.n_pairs() && result.is_ok() {
                local_windows.clear();
                local_pairs.clear();
                let mut end = start;
                while end < batch.n_pairs() && local_pairs.len() < self.max_pairs {
                    let [r, s] = batch.pairs[end];
                    let fresh = (remap[r as usize] == u32::MAX) as usize
                        + (s != r && remap[s as usize] == u32::MAX) as usize;
                    if local_windows.len() / n + fresh > self.max_windows {
                        break;
                    }
                    let mut local = |w: u32| {
                        if remap[w as usize] == u32::MAX {
                            remap[w as usize] = (local_windows.len() / n) as u32;
                            let w = w as usize;
                            local_windows.extend_from_slice(&batch.windows[w * n..(w + 1) * n]);
                        }
                        remap[w as usize]
                    };
                    local_pairs.push([local(r), local(s)]);
                    end += 1;
                }
                result = self.run_chunk(&local_windows, &local_pairs, &mut out[start * n..end * n]);
                for &[r, s] in &batch.pairs[start..end] {
                    remap[r as usize] = u32::MAX;
                    remap[s as usize] = u32::MAX;
                }
                start = end;
            }
            self.local_windows = local_windows;
            self.local_pairs = local_pairs;
            self.remap = remap;
            result
        }
    }

    impl Correlator for GpuGcc {
        fn n_fft(&self) -> usize {
            self.n_fft
        }

        fn correlate(&mut self, batch: &PairBatch, out: &mut [f32]) -> Result<(), CorrelatorError> {
            if batch.n_fft != self.n_fft {
                return Err(CorrelatorError::FftLength {
                    batch: batch.n_fft,
                    correlator: self.n_fft,
                });
            }
            if out.len() != batch.out_len() {
                return Err(CorrelatorError::OutputLength {
                    found: out.len(),
                    needed: batch.out_len(),
                });
            }
            let n_windows = batch.n_windows() as u32;
            if let Some(p) = batch
                .pairs
                .iter()
                .position(|&[r, s]| r >= n_windows || s >= n_windows)
            {
                return Err(CorrelatorError::PairOutOfRange {
                    pair: p,
                    n_windows: n_windows as usize,
                });
            }
            if batch.n_pairs() == 0 {
                return Ok(());
            }
            if batch.n_windows() <= self.max_windows && batch.n_pairs() <= self.max_pairs {
                // The engine's case: the whole batch in one submission, no host copies.
                return self.run_chunk(&batch.windows, &batch.pairs, out);
            }
            self.run_chunked(batch, out)
        }

        fn name(&self) -> &'static str {
            "gpu"
        }

        fn kind(&self) -> CorrelatorKind {
            CorrelatorKind::Gpu
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::device::N_SENSORS;
        use crate::engine::gcc::find_peak;
        use crate::engine::{CpuGcc, Engine, EngineConfig, Kernel, Method, SetInput, n_fft_for};
        use crate::rng::Rng;
        use crate::simulate::{SimParams, read_set, simulate_many};

        /// The GPU correlator, software adapters allowed; `None` (and a skip message) when
        /// the machine has no adapter at all.
        fn gpu_or_skip(n_fft: usize) -> Option<GpuGcc> {
            match GpuGcc::new(n_fft, true) {
                Ok(gpu) => {
                    eprintln!("GPU tests on {}", gpu.adapter_name());
                    Some(gpu)
                }
                Err(GpuError::NoAdapter(why)) => {
                    eprintln!(
                        "SKIPPED: no GPU adapter ({why}); install a Vulkan driver \
                         (mesa-vulkan-drivers) to run the GPU tests"
                    );
                    None
                }
                Err(e) => panic!("GPU correlator failed to build: {e}"),
            }
        }

        /// `n_taps` taps shaped like the engine's: a reference window and seven delayed,
        /// noisy copies of it, seven pairs. Returns the batch and each pair's delay.
        fn random_batch(rng: &mut Rng, n_taps: usize, n_fft: usize) -> (PairBatch, Vec<usize>) {
            let mut batch = PairBatch::new(n_fft);
            let mut delays = Vec::new();
            let len = n_fft / 2;
            let max_delay = (n_fft / 8).min(30);
            for _ in 0..n_taps {
                let scale = 10f64.powf(rng.uniform(-1.0, 3.0)) as f32;
                let source: Vec<f32> = (0..len + max_delay)
                    .map(|_| scale * rng.normal() as f32)
                    .collect();
                let r = batch.push_window(&source[..len]);
                for _ in 0..N_SENSORS - 1 {
                    let d = (rng.unit() * max_delay as f64) as usize;
                    delays.push(d);
                    let sig: Vec<f32> = (0..len)
                        .map(|t| {
                            let clean = if t >= d { source[t - d] } else { 0.0 };
                            clean + 0.05 * scale * rng.normal() as f32
                        })
                        .collect();
                    let s = batch.push_window(&sig);
                    batch.push_pair(r, s);
                }
            }
            (batch, delays)
        }

        fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        }

        /// Runs `batch` on the GPU and the CPU and checks they agree and find the delays.
        fn check_against_cpu(gpu: &mut GpuGcc, batch: &PairBatch, delays: &[usize]) {
            let mut cpu = CpuGcc::new(batch.n_fft, Kernel::Scalar);
            let (mut want, mut got) = (vec![0.0; batch.out_len()], vec![7.0; batch.out_len()]);
            cpu.correlate(batch, &mut want).unwrap();
            gpu.correlate(batch, &mut got).unwrap();
            let diff = max_abs_diff(&want, &got);
            eprintln!(
                "n_fft {} pairs {}: max |gpu - cpu| = {diff:e}",
                batch.n_fft,
                batch.n_pairs()
            );
            assert!(
                diff < 1e-4,
                "n_fft {}: max |gpu - cpu| = {diff}",
                batch.n_fft
            );
            for (p, &d) in delays.iter().enumerate() {
                let corr = batch.correlation(&got, p as u32);
                let peak = find_peak(corr, 0, (batch.n_fft / 4) as isize).unwrap();
                assert!(
                    (peak.lag - d as f64).abs() < 0.3,
                    "pair {p}: {} vs {d}",
                    peak.lag
                );
            }
        }

        #[test]
        fn gpu_matches_cpu_on_random_batches() {
            for n_fft in [64, 512] {
                let Some(mut gpu) = gpu_or_skip(n_fft) else {
                    return;
                };
                let mut rng = Rng::new(50 + n_fft as u64);
                // Small, then bigger (buffers grow), then small again (buffers reused).
                for n_taps in [1, 5, 40, 3] {
                    let (batch, delays) = random_batch(&mut rng, n_taps, n_fft);
                    check_against_cpu(&mut gpu, &batch, &delays);
                }
            }
        }

        #[test]
        fn chunked_batches_match_cpu() {
            let Some(mut gpu) = gpu_or_skip(64) else {
                return;
            };
            // Tiny chunks force the renumbering path, including windows shared across chunks.
            gpu.max_windows = 5;
            gpu.max_pairs = 3;
            let mut rng = Rng::new(61);
            let (mut batch, _) = random_batch(&mut rng, 4, 64);
            batch.push_pair(0, 0);
            batch.push_pair(9, 1);
            let mut cpu = CpuGcc::new(64, Kernel::Simd);
            let (mut want, mut got) = (vec![0.0; batch.out_len()], vec![7.0; batch.out_len()]);
            cpu.correlate(&batch, &mut want).unwrap();
            gpu.correlate(&batch, &mut got).unwrap();
            let diff = max_abs_diff(&want, &got);
            assert!(diff < 1e-4, "max |gpu - cpu| = {diff}");
        }

        #[test]
        fn bad_batches_are_errors_not_panics() {
            assert!(matches!(
                GpuGcc::new(100, true),
                Err(GpuError::UnsupportedFftLength(100))
            ));
            let Some(mut gpu) = gpu_or_skip(64) else {
                return;
            };
            let mut batch = PairBatch::new(64);
            gpu.correlate(&batch, &mut []).unwrap();
            let w = batch.push_window(&[1.0, 2.0]);
            batch.push_pair(w, w + 1);
            let mut out = vec![0.0; batch.out_len()];
            assert!(gpu.correlate(&batch, &mut out).is_err());
            assert!(gpu.correlate(&PairBatch::new(128), &mut []).is_err());
            assert!(gpu.correlate(&batch, &mut [0.0; 3]).is_err());
        }

        fn simulated_sets(n_sets: usize, seed: u64) -> Vec<SetInput> {
            let (files, _) = simulate_many(&SimParams::default(), n_sets, seed, false);
            files
                .chunks_exact(N_SENSORS)
                .map(|set| read_set(set).input)
                .collect()
        }

        #[test]
        fn engine_on_gpu_matches_cpu_on_simulated_sets() {
            let sets = simulated_sets(6, 77);
            for method in [Method::Onset, Method::GccPhat] {
                let cfg = EngineConfig {
                    method,
                    ..EngineConfig::default()
                };
                let Some(gpu) = gpu_or_skip(n_fft_for(&cfg)) else {
                    return;
                };
                let mut on_gpu = Engine::with_correlator(cfg.clone(), Box::new(gpu));
                let mut on_cpu = Engine::new(cfg);
                let want = on_cpu.estimate_batch(&sets).unwrap();
                let got = on_gpu.estimate_batch(&sets).unwrap();
                let mut n_usable = 0;
                for (s, (w, g)) in want.iter().zip(&got).enumerate() {
                    for i in 0..N_SENSORS {
                        for j in 0..N_SENSORS {
                            if i == j || !w.flags[i][j].usable() {
                                continue;
                            }
                            n_usable += 1;
                            let (vw, vg) = (w.velocity_m_s[i][j], g.velocity_m_s[i][j]);
                            assert!(
                                g.flags[i][j].usable() && ((vg - vw) / vw).abs() < 0.005,
                                "{method} set {s} ray {i}->{j}: cpu {vw} m/s, gpu {vg} m/s \
                                 ({:?})",
                                g.flags[i][j]
                            );
                        }
                    }
                }
                eprintln!("{method}: {n_usable} usable rays agree");
                assert!(
                    n_usable > sets.len() * 20,
                    "{method}: only {n_usable} usable rays"
                );
            }
        }
    }
}
