//! The tomogram's core over its ring ([`Tomogram::core_over_ring`]) for every plain result in
//! each folder given: the figures of docs/accuracy.md, "The tomogram on simulated trunks".
//!
//! Usage: `cargo run --release --example core_ring -- [--diameter M] DIR...`

use std::path::PathBuf;

use terawang::result::read_plain;
use terawang::tomogram::{TomogramConfig, reconstruct};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let mut diameter_m = 0.3;
    if args.peek().map(String::as_str) == Some("--diameter") {
        args.next();
        diameter_m = args.next().unwrap_or_default().parse()?;
    }
    let cfg = TomogramConfig::default();
    for dir in args.map(PathBuf::from) {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.to_string_lossy();
                name.ends_with(".json") && !name.ends_with(".report.json")
            })
            .collect();
        paths.sort();
        let mut ratios = Vec::new();
        let mut low = Vec::new();
        for path in &paths {
            let t = reconstruct(&read_plain(path)?, diameter_m, &cfg)?;
            ratios.push(t.core_over_ring());
            low.push(t.low_coverage_share());
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| {
                (a.min(r), b.max(r))
            });
        let below = ratios.iter().filter(|&&r| r < 0.9).count();
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let low_mean = low.iter().sum::<f64>() / low.len().max(1) as f64;
        println!(
            "{}: {} sets, core/ring {lo:.3}–{hi:.3}, {below} below 0.9, low coverage {:.0} % [{}]",
            dir.display(),
            ratios.len(),
            100.0 * low_mean,
            list.join(" ")
        );
    }
    Ok(())
}
