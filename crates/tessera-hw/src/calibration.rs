//! Expected peaks per precision, and the calibration cache they fall back
//! to for chips the atlas has no figures for.
//!
//! A calibration is a short measurement (`tessera calibrate`) stored as
//! JSON in the cache directory: `$TESSERA_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/tessera`, else `~/.cache/tessera`. One file per
//! machine, named by a hash of the machine key (model, logical core count
//! and a hash of the feature set), so a cache shared between machines (a
//! home directory on NFS) keeps them apart; the key is stored inside and
//! checked on load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atlas::{self, PerPrecision};
use crate::machine::Machine;
use crate::MachineReport;

/// Environment variable overriding the cache directory.
pub const CACHE_DIR_ENV: &str = "TESSERA_CACHE_DIR";

/// Measured throughput, GFLOP/s (int8: GOP/s); `None` where not measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeasuredPeaks {
    pub fp32: Option<f64>,
    pub bf16: Option<f64>,
    pub fp16: Option<f64>,
    pub int8: Option<f64>,
}

/// One calibration run of one machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`machine_key`] of the machine measured.
    pub machine_key: String,
    pub measured: MeasuredPeaks,
    /// When it was measured, seconds since the Unix epoch (UTC).
    pub when: u64,
    /// The tessera version that measured it.
    pub tool_version: String,
    /// Threads the measurement used.
    pub threads: usize,
    /// What was timed, per precision.
    pub method: String,
}

/// Where expected peaks come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", content = "from", rename_all = "snake_case")]
pub enum PeakSource {
    /// The atlas row of this name.
    Atlas(String),
    /// A calibration file.
    Calibrated(PathBuf),
    /// Neither: no figure is claimed.
    Unknown,
}

/// Expected peak per precision (GFLOP/s; int8 GOP/s) and where it comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Peaks {
    pub fp32: Option<f64>,
    pub bf16: Option<f64>,
    pub fp16: Option<f64>,
    pub int8: Option<f64>,
    pub source: PeakSource,
    /// How the figures were obtained, or what to do to get some.
    pub note: String,
}

/// 64-bit FNV-1a: a stable hash (std's `DefaultHasher` may change between
/// Rust releases, and cache file names must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The key a calibration is stored under: model, logical cores and a hash
/// of the features present. Another CPU, core count or feature set (a VM
/// moved to other hardware) means another key and a new calibration.
pub fn machine_key(m: &Machine) -> String {
    let features = m.features.present().join(",");
    format!("{}|{} cpus|features {:016x}", m.model.trim(), m.logical_cores, fnv1a(features.as_bytes()))
}

/// The cache directory given an environment lookup (pure, for tests).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(dir) = set(CACHE_DIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = set("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("tessera"));
    }
    set("HOME").map(|home| PathBuf::from(home).join(".cache").join("tessera"))
}

/// The cache directory of this process' environment.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|k| std::env::var(k).ok())
}

/// The file a machine's calibration lives in, inside `dir`.
pub fn calibration_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("calibration-{:016x}.json", fnv1a(key.as_bytes())))
}

/// Writes `cal` into `dir` (created if missing) and returns the file path.
/// Written to a temporary file first and renamed, so a reader never sees
/// half a file.
pub fn store(cal: &Calibration, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = calibration_path(dir, &cal.machine_key);
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let text = serde_json::to_string_pretty(cal).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The calibration of the machine `key` in `dir`, if there is a readable
/// one for that key. A corrupt file or another machine's reads as none.
pub fn load(dir: &Path, key: &str) -> Option<(Calibration, PathBuf)> {
    let path = calibration_path(dir, key);
    let text = std::fs::read_to_string(&path).ok()?;
    let cal: Calibration = serde_json::from_str(&text).ok()?;
    (cal.machine_key == key).then_some((cal, path))
}

/// [`expected_peaks_in`] with the cache directory of this environment.
pub fn expected_peaks(report: &MachineReport) -> Peaks {
    expected_peaks_in(report, cache_dir().as_deref())
}

/// Expected peaks: the atlas row's figures where it has some, else this
/// machine's calibration in `cache_dir`, else none (with what to run).
pub fn expected_peaks_in(report: &MachineReport, cache_dir: Option<&Path>) -> Peaks {
    let m = &report.machine;
    let row = atlas::lookup_machine(m);
    if let Some(row) = row {
        let (p, note) = atlas::peaks_for_machine(row, m);
        if p.any() {
            return from_values(p, PeakSource::Atlas(row.name.to_string()), note);
        }
    }
    if let Some((cal, path)) = cache_dir.and_then(|d| load(d, &machine_key(m))) {
        let p = PerPrecision {
            fp32: cal.measured.fp32,
            bf16: cal.measured.bf16,
            fp16: cal.measured.fp16,
            int8: cal.measured.int8,
        };
        let note = format!(
            "measured by tessera {} with {} thread(s) at unix time {}: {}",
            cal.tool_version, cal.threads, cal.when, cal.method
        );
        return from_values(p, PeakSource::Calibrated(path), note);
    }
    let note = match row {
        Some(r) => format!("atlas row '{}' has no public peak figure; run `tessera calibrate`", r.name),
        None => "not in the atlas and not calibrated; run `tessera calibrate`".to_string(),
    };
    from_values(PerPrecision::NONE, PeakSource::Unknown, note)
}

fn from_values(p: PerPrecision, source: PeakSource, note: String) -> Peaks {
    Peaks { fp32: p.fp32, bf16: p.bf16, fp16: p.fp16, int8: p.int8, source, note }
}
