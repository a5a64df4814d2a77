//! The file-system floor of `terawang process --no-tomogram`: reads every tap file of a folder
//! and, per eight files, writes a plain result and a report of typical sizes through the same
//! atomic write as `process`, with no parsing and no computing. No program that reads and
//! writes these files one by one can be faster, so `numpy time / this time` bounds the ratio
//! `benches/compare/run.sh` can ever show on the machine.
//!
//! Usage: `cargo run --release --example io_floor -- DATA_DIR OUT_DIR`

use std::path::PathBuf;
use std::time::Instant;

use terawang::process::collect_inputs;
use terawang::result::{Durability, write_atomic};

/// Sizes of a `--no-tomogram` plain result and report of a simulated set, bytes.
const PLAIN_BYTES: usize = 400;
const REPORT_BYTES: usize = 10_500;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [data, out] = args.as_slice() else {
        anyhow::bail!("usage: io_floor DATA_DIR OUT_DIR");
    };
    std::fs::create_dir_all(out)?;
    let payload = vec![b' '; REPORT_BYTES];
    let started = Instant::now();
    let files = collect_inputs(std::slice::from_ref(data))?;
    let mut bytes_read = 0;
    let mut sets = 0;
    for (k, chunk) in files.chunks_exact(8).enumerate() {
        for path in chunk {
            bytes_read += std::fs::read(path)?.len();
        }
        let stem = format!("result_floor_{k}");
        write_atomic(
            out,
            out,
            &format!("{stem}.report.json"),
            &payload,
            Durability::Fast,
        )?;
        let plain = &payload[..PLAIN_BYTES];
        write_atomic(out, out, &format!("{stem}.json"), plain, Durability::Fast)?;
        sets += 1;
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "read {} files ({bytes_read} bytes) and wrote {} files: {ms:.1} ms total, {:.3} ms per set",
        sets * 8,
        sets * 2,
        ms / sets.max(1) as f64
    );
    Ok(())
}
