//! The chip atlas: public figures for the chips tessera meets, one row per
//! chip configuration (Apple bins differ in cores and bandwidth, so each
//! bin is a row), each row citing where its figures come from.
//!
//! Peaks are GFLOP/s (int8: GOP/s), two operations per multiply-add. A row
//! gives them in one of two ways, never by guess:
//! - `published_peak`: a whole-chip figure measured or published by the
//!   cited party, used as is;
//! - `per_core_per_cycle` x cores x `clock_ghz`: the vendor's published
//!   per-cycle rate of the unit each precision runs on, times the cores,
//!   times the SKU's base clock. That is a nominal ceiling: tile and
//!   512-bit units often run below base clock under load, and turbo can
//!   run above it.
//!
//! Where no source gives a figure the field is `None`. Apple does not
//! publish the throughput of its AMX units (M1-M3), so those rows carry no
//! peak; `tessera calibrate` measures one instead (see [`crate::calibration`]).

use serde::Serialize;

use crate::machine::Machine;
use crate::microarch::{apple_chip, Microarch};
use crate::MachineReport;

/// One value per precision: fp32, bf16, fp16, int8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PerPrecision {
    pub fp32: Option<f64>,
    pub bf16: Option<f64>,
    pub fp16: Option<f64>,
    pub int8: Option<f64>,
}

impl PerPrecision {
    pub const NONE: PerPrecision = PerPrecision { fp32: None, bf16: None, fp16: None, int8: None };

    pub fn any(&self) -> bool {
        self.fp32.is_some() || self.bf16.is_some() || self.fp16.is_some() || self.int8.is_some()
    }

    fn scaled(&self, factor: f64) -> PerPrecision {
        PerPrecision {
            fp32: self.fp32.map(|v| v * factor),
            bf16: self.bf16.map(|v| v * factor),
            fp16: self.fp16.map(|v| v * factor),
            int8: self.int8.map(|v| v * factor),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChipRow {
    /// Unique name of the configuration ("Apple M3 Max 14-core CPU").
    pub name: &'static str,
    pub vendor: &'static str,
    pub microarchitecture: Microarch,
    /// Apple: the exact brand string ("Apple M3 Max"). x86: the SKU as it
    /// appears in the brand string ("Platinum 8480+"); other SKUs of the
    /// same microarchitecture match the row by microarchitecture.
    pub brand: &'static str,
    pub performance_cores: u32,
    pub efficiency_cores: u32,
    /// GPU core counts this CPU configuration ships with.
    pub gpu_cores: &'static [u32],
    pub neural_engine_cores: Option<u32>,
    pub neural_engine_tops: Option<f64>,
    /// Peak DRAM bandwidth in GB/s (x86: channels x MT/s x 8 bytes, one socket).
    pub memory_bandwidth_gb_s: Option<f64>,
    pub matrix_unit: &'static str,
    /// FLOP (int8: OP) per cycle per performance core, where published.
    pub per_core_per_cycle: PerPrecision,
    /// The base clock the per-cycle formula uses, GHz.
    pub clock_ghz: Option<f64>,
    /// Whole-chip figures measured or published by the cited source.
    pub published_peak: PerPrecision,
    pub source: &'static str,
}

/// How the x86 peaks are computed, printed beside them.
pub const PEAK_FORMULA: &str = "peak GFLOP/s = FLOP per cycle per core x cores x clock GHz";

impl ChipRow {
    /// Whole-chip peaks: the published figure where there is one, else the
    /// per-cycle formula at the row's core count and base clock.
    pub fn peak_gflops(&self) -> PerPrecision {
        if self.published_peak.any() {
            return self.published_peak;
        }
        match self.clock_ghz {
            Some(ghz) => self.per_core_per_cycle.scaled(self.performance_cores as f64 * ghz),
            None => PerPrecision::NONE,
        }
    }

    /// Peaks for `cores` cores at `ghz` by the per-cycle formula.
    pub fn peak_for(&self, cores: usize, ghz: f64) -> PerPrecision {
        self.per_core_per_cycle.scaled(cores as f64 * ghz)
    }

    pub fn is_apple(&self) -> bool {
        self.microarchitecture.is_apple_m()
    }
}

#[allow(clippy::too_many_arguments)]
const fn apple(
    name: &'static str,
    microarchitecture: Microarch,
    brand: &'static str,
    p: u32,
    e: u32,
    gpu_cores: &'static [u32],
    ne_cores: u32,
    ne_tops: Option<f64>,
    bandwidth: f64,
    matrix_unit: &'static str,
    source: &'static str,
) -> ChipRow {
    ChipRow {
        name,
        vendor: "Apple",
        microarchitecture,
        brand,
        performance_cores: p,
        efficiency_cores: e,
        gpu_cores,
        neural_engine_cores: Some(ne_cores),
        neural_engine_tops: ne_tops,
        memory_bandwidth_gb_s: Some(bandwidth),
        matrix_unit,
        per_core_per_cycle: PerPrecision::NONE,
        clock_ghz: None,
        published_peak: PerPrecision::NONE,
        source,
    }
}

const M1_AMX: &str = "Apple AMX coprocessor, reached through Accelerate";
const M2_AMX: &str = "Apple AMX coprocessor (adds bf16), reached through Accelerate";
const M4_SME: &str = "Arm SME, 512-bit streaming vectors";

const SRC_M1: &str = "Apple Newsroom 2020-11-10 'Apple unleashes M1' (4P+4E, 16-core Neural Engine, 11 TOPS); \
     bandwidth computed from LPDDR4X-4266 on a 128-bit bus; 7-core GPU bin: MacBook Air (M1, 2020) tech specs; \
     shared/README.md chip table";
const SRC_M1_PRO_MAX: &str = "Apple Newsroom 2021-10-18 'Introducing M1 Pro and M1 Max' (up to 8P+2E; 16-core GPU \
     and 200GB/s for M1 Pro, 32-core GPU and 400GB/s for M1 Max; 11 TOPS); 8-core CPU / 14-core GPU and 24-core GPU \
     bins: MacBook Pro (14-inch, 2021) tech specs";
const SRC_M1_ULTRA: &str = "Apple Newsroom 2022-03-08 'Apple unveils M1 Ultra' (16P+4E, up to 64-core GPU, 32-core \
     Neural Engine 22 TOPS, 800GB/s); 48-core GPU bin: Mac Studio (2022) tech specs";
const SRC_M2: &str = "Apple Newsroom 2022-06-06 'Apple unveils M2' (4P+4E, up to 10-core GPU, 15.8 TOPS, 100GB/s); \
     8-core GPU bin: MacBook Air (M2, 2022) tech specs";
const SRC_M2_PRO_MAX: &str = "Apple Newsroom 2023-01-17 'Apple unveils M2 Pro and M2 Max' (up to 8P+4E; up to \
     19-core GPU and 200GB/s for M2 Pro, up to 38-core GPU and 400GB/s for M2 Max; 15.8 TOPS); 10-core CPU / 16-core \
     GPU and 30-core GPU bins: MacBook Pro (2023) tech specs";
const SRC_M2_ULTRA: &str = "Apple Newsroom 2023-06-05 'Apple introduces M2 Ultra' (16P+8E, up to 76-core GPU, \
     32-core Neural Engine 31.6 TOPS, 800GB/s); 60-core GPU bin: Mac Studio (2023) tech specs";
const SRC_M3: &str = "Apple Newsroom 2023-10-30 'Apple unveils M3, M3 Pro, and M3 Max' (M3 4P+4E, up to 10-core GPU, \
     100GB/s; M3 Pro up to 6P+6E, 18-core GPU, 150GB/s; M3 Max up to 12P+4E, 40-core GPU, 400GB/s; 16-core Neural \
     Engine, 18 TOPS per shared/README.md); bins (M3 Pro 5P+6E / 14-core GPU, M3 Max 10P+4E / 30-core GPU / 300GB/s): \
     MacBook Pro (November 2023) tech specs";
const SRC_M3_ULTRA: &str = "Apple Newsroom 2025-03-05 'Apple reveals M3 Ultra' (up to 24P+8E, up to 80-core GPU, \
     32-core Neural Engine, over 800GB/s; Neural Engine TOPS not published); 20P+8E / 60-core GPU bin: Mac Studio \
     (2025) tech specs; 819 GB/s per shared/README.md";
const SRC_M4: &str = "Apple Newsroom 2024-05-07 'Apple introduces M4 chip' (up to 4P+6E, 10-core GPU, 38 TOPS, \
     120GB/s; 3P+6E in 256GB/512GB iPad Pro); 4P+4E / 8-core GPU bin: iMac (2024) tech specs; SME fp32 peak 'over \
     2.3 FP32 TFLOPS' measured on an M4 iPad Pro (4P+6E) by Remke and Breuer, 'Hello SME!', arXiv:2409.18779";
const SRC_M4_PRO_MAX: &str = "Apple Newsroom 2024-10-30 'Apple introduces M4 Pro and M4 Max' (M4 Pro up to 10P+4E, \
     up to 20-core GPU, 273GB/s; M4 Max up to 12P+4E, up to 40-core GPU, 546GB/s; 16-core Neural Engine); bins \
     (M4 Pro 8P+4E / 16-core GPU; M4 Max 10P+4E / 32-core GPU / 410GB/s): MacBook Pro (2024) and Mac mini (2024) \
     tech specs; 38 TOPS per shared/README.md";

/// Where the Intel per-cycle rates come from (a macro so `concat!` can
/// append it to each Intel row's source).
macro_rules! intel_rates {
    () => {
        "per-cycle rates: Intel AMX documentation (2048 INT8 / 1024 BF16 operations per cycle per core) and the \
         Intel 64 and IA-32 Architectures Optimization Reference Manual (two 512-bit FMA units per core: 64 fp32 \
         FLOP/cycle; AVX512-FP16: 128 fp16 FLOP/cycle)"
    };
}

/// Intel per-core rates with AVX512-FP16 for fp16 (Sapphire and Emerald Rapids).
const INTEL_SPR_RATES: PerPrecision =
    PerPrecision { fp32: Some(64.0), bf16: Some(1024.0), fp16: Some(128.0), int8: Some(2048.0) };
/// Granite Rapids adds AMX-FP16, whose per-cycle rate the cited sources do
/// not state, so fp16 stays unknown.
const INTEL_GNR_RATES: PerPrecision =
    PerPrecision { fp32: Some(64.0), bf16: Some(1024.0), fp16: None, int8: Some(2048.0) };
/// Zen 3 and Zen 4: two 256-bit FMA pipes (Zen 4 runs AVX-512 on them in two halves).
const AMD_256_RATES: PerPrecision = PerPrecision { fp32: Some(32.0), bf16: None, fp16: None, int8: None };
/// Zen 5: two FMA pipes with a full 512-bit datapath.
const AMD_512_RATES: PerPrecision = PerPrecision { fp32: Some(64.0), bf16: None, fp16: None, int8: None };

#[allow(clippy::too_many_arguments)]
const fn x86(
    name: &'static str,
    vendor: &'static str,
    microarchitecture: Microarch,
    brand: &'static str,
    cores: u32,
    clock_ghz: f64,
    bandwidth: f64,
    matrix_unit: &'static str,
    rates: PerPrecision,
    source: &'static str,
) -> ChipRow {
    ChipRow {
        name,
        vendor,
        microarchitecture,
        brand,
        performance_cores: cores,
        efficiency_cores: 0,
        gpu_cores: &[],
        neural_engine_cores: None,
        neural_engine_tops: None,
        memory_bandwidth_gb_s: Some(bandwidth),
        matrix_unit,
        per_core_per_cycle: rates,
        clock_ghz: Some(clock_ghz),
        published_peak: PerPrecision::NONE,
        source,
    }
}

use Microarch::*;

static ROWS: &[ChipRow] = &[
    // ---- Apple M1 ----
    apple("Apple M1", AppleM1, "Apple M1", 4, 4, &[7, 8], 16, Some(11.0), 68.25, M1_AMX, SRC_M1),
    apple(
        "Apple M1 Pro 10-core CPU",
        AppleM1,
        "Apple M1 Pro",
        8,
        2,
        &[14, 16],
        16,
        Some(11.0),
        200.0,
        M1_AMX,
        SRC_M1_PRO_MAX,
    ),
    apple(
        "Apple M1 Pro 8-core CPU",
        AppleM1,
        "Apple M1 Pro",
        6,
        2,
        &[14],
        16,
        Some(11.0),
        200.0,
        M1_AMX,
        SRC_M1_PRO_MAX,
    ),
    apple("Apple M1 Max", AppleM1, "Apple M1 Max", 8, 2, &[24, 32], 16, Some(11.0), 400.0, M1_AMX, SRC_M1_PRO_MAX),
    apple("Apple M1 Ultra", AppleM1, "Apple M1 Ultra", 16, 4, &[48, 64], 32, Some(22.0), 800.0, M1_AMX, SRC_M1_ULTRA),
    // ---- Apple M2 ----
    apple("Apple M2", AppleM2, "Apple M2", 4, 4, &[8, 10], 16, Some(15.8), 100.0, M2_AMX, SRC_M2),
    apple(
        "Apple M2 Pro 12-core CPU",
        AppleM2,
        "Apple M2 Pro",
        8,
        4,
        &[19],
        16,
        Some(15.8),
        200.0,
        M2_AMX,
        SRC_M2_PRO_MAX,
    ),
    apple(
        "Apple M2 Pro 10-core CPU",
        AppleM2,
        "Apple M2 Pro",
        6,
        4,
        &[16],
        16,
        Some(15.8),
        200.0,
        M2_AMX,
        SRC_M2_PRO_MAX,
    ),
    apple("Apple M2 Max", AppleM2, "Apple M2 Max", 8, 4, &[30, 38], 16, Some(15.8), 400.0, M2_AMX, SRC_M2_PRO_MAX),
    apple("Apple M2 Ultra", AppleM2, "Apple M2 Ultra", 16, 8, &[60, 76], 32, Some(31.6), 800.0, M2_AMX, SRC_M2_ULTRA),
    // ---- Apple M3 ----
    apple("Apple M3", AppleM3, "Apple M3", 4, 4, &[8, 10], 16, Some(18.0), 100.0, M2_AMX, SRC_M3),
    apple("Apple M3 Pro 12-core CPU", AppleM3, "Apple M3 Pro", 6, 6, &[18], 16, Some(18.0), 150.0, M2_AMX, SRC_M3),
    apple("Apple M3 Pro 11-core CPU", AppleM3, "Apple M3 Pro", 5, 6, &[14], 16, Some(18.0), 150.0, M2_AMX, SRC_M3),
    apple("Apple M3 Max 16-core CPU", AppleM3, "Apple M3 Max", 12, 4, &[40], 16, Some(18.0), 400.0, M2_AMX, SRC_M3),
    apple("Apple M3 Max 14-core CPU", AppleM3, "Apple M3 Max", 10, 4, &[30], 16, Some(18.0), 300.0, M2_AMX, SRC_M3),
    apple("Apple M3 Ultra 32-core CPU", AppleM3, "Apple M3 Ultra", 24, 8, &[80], 32, None, 819.0, M2_AMX, SRC_M3_ULTRA),
    apple("Apple M3 Ultra 28-core CPU", AppleM3, "Apple M3 Ultra", 20, 8, &[60], 32, None, 819.0, M2_AMX, SRC_M3_ULTRA),
    // ---- Apple M4 ----
    ChipRow {
        published_peak: PerPrecision { fp32: Some(2300.0), bf16: None, fp16: None, int8: None },
        ..apple("Apple M4 10-core CPU", AppleM4, "Apple M4", 4, 6, &[8, 10], 16, Some(38.0), 120.0, M4_SME, SRC_M4)
    },
    apple("Apple M4 9-core CPU", AppleM4, "Apple M4", 3, 6, &[10], 16, Some(38.0), 120.0, M4_SME, SRC_M4),
    apple("Apple M4 8-core CPU", AppleM4, "Apple M4", 4, 4, &[8], 16, Some(38.0), 120.0, M4_SME, SRC_M4),
    apple(
        "Apple M4 Pro 14-core CPU",
        AppleM4,
        "Apple M4 Pro",
        10,
        4,
        &[20],
        16,
        Some(38.0),
        273.0,
        M4_SME,
        SRC_M4_PRO_MAX,
    ),
    apple(
        "Apple M4 Pro 12-core CPU",
        AppleM4,
        "Apple M4 Pro",
        8,
        4,
        &[16],
        16,
        Some(38.0),
        273.0,
        M4_SME,
        SRC_M4_PRO_MAX,
    ),
    apple(
        "Apple M4 Max 16-core CPU",
        AppleM4,
        "Apple M4 Max",
        12,
        4,
        &[40],
        16,
        Some(38.0),
        546.0,
        M4_SME,
        SRC_M4_PRO_MAX,
    ),
    apple(
        "Apple M4 Max 14-core CPU",
        AppleM4,
        "Apple M4 Max",
        10,
        4,
        &[32],
        16,
        Some(38.0),
        410.0,
        M4_SME,
        SRC_M4_PRO_MAX,
    ),
    // ---- x86 servers ----
    x86(
        "Intel Xeon 4th gen (Sapphire Rapids), Platinum 8480+",
        "GenuineIntel",
        SapphireRapids,
        "Platinum 8480+",
        56,
        2.0,
        307.2,
        "Intel AMX (BF16, INT8) + AVX-512 with AVX512-FP16",
        INTEL_SPR_RATES,
        concat!("Intel ark, Xeon Platinum 8480+ (56 cores, 2.0 GHz base, 8 channels DDR5-4800); ", intel_rates!()),
    ),
    x86(
        "Intel Xeon 5th gen (Emerald Rapids), Platinum 8592+",
        "GenuineIntel",
        EmeraldRapids,
        "Platinum 8592+",
        64,
        1.9,
        358.4,
        "Intel AMX (BF16, INT8) + AVX-512 with AVX512-FP16",
        INTEL_SPR_RATES,
        concat!("Intel ark, Xeon Platinum 8592+ (64 cores, 1.9 GHz base, 8 channels DDR5-5600); ", intel_rates!()),
    ),
    x86(
        "Intel Xeon 6 (Granite Rapids), 6980P",
        "GenuineIntel",
        GraniteRapids,
        "6980P",
        128,
        2.0,
        614.4,
        "Intel AMX (BF16, FP16, INT8) + AVX-512",
        INTEL_GNR_RATES,
        concat!(
            "Intel ark, Xeon 6980P (128 cores, 2.0 GHz base, 12 channels DDR5-6400); AMX-FP16 per the Intel \
             Architecture Instruction Set Extensions reference (no published per-cycle rate, so no fp16 figure); ",
            intel_rates!()
        ),
    ),
    x86(
        "AMD EPYC 3rd gen (Zen 3, Milan), EPYC 7763",
        "AuthenticAMD",
        Zen3,
        "EPYC 7763",
        64,
        2.45,
        204.8,
        "no matrix unit; AVX2 on two 256-bit FMA pipes",
        AMD_256_RATES,
        "AMD EPYC 7763 product page (64 cores, 2.45 GHz base, 8 channels DDR4-3200); 32 fp32 FLOP/cycle from \
         AMD's Zen 3 description (two 256-bit FMA pipes); no published bf16/int8 rate",
    ),
    x86(
        "AMD EPYC 4th gen (Zen 4, Genoa), EPYC 9654",
        "AuthenticAMD",
        Zen4,
        "EPYC 9654",
        96,
        2.4,
        460.8,
        "no matrix unit; AVX-512 (incl. BF16, VNNI) on 256-bit datapaths",
        AMD_256_RATES,
        "AMD EPYC 9654 product page (96 cores, 2.4 GHz base, 12 channels DDR5-4800); 32 fp32 FLOP/cycle from \
         AMD's Zen 4 description (AVX-512 executed on 256-bit datapaths); no published bf16/int8 rate",
    ),
    x86(
        "AMD EPYC 5th gen (Zen 5, Turin), EPYC 9755",
        "AuthenticAMD",
        Zen5,
        "EPYC 9755",
        128,
        2.7,
        576.0,
        "no matrix unit; AVX-512 on a full 512-bit datapath",
        AMD_512_RATES,
        "AMD EPYC 9755 product page (128 cores, 2.7 GHz base, 12 channels DDR5-6000); 64 fp32 FLOP/cycle from \
         AMD's Zen 5 description (full 512-bit datapath, two FMA pipes); no published bf16/int8 rate",
    ),
];

/// Every row of the atlas.
pub fn rows() -> &'static [ChipRow] {
    ROWS
}

/// The row for this machine, matched by detected model and microarchitecture.
pub fn lookup(report: &MachineReport) -> Option<&'static ChipRow> {
    lookup_machine(&report.machine)
}

/// [`lookup`] on a [`Machine`].
///
/// Apple: the brand string names the chip ("Apple M3 Max"); the detected
/// performance/efficiency core counts pick the bin. A bin not in the atlas
/// gives `None` rather than a neighbour's figures; unknown counts give the
/// top bin. x86: a row whose SKU appears in the brand string, else the row
/// of the same microarchitecture (its per-cycle rates then apply to the
/// detected cores, see [`peaks_for_machine`]).
pub fn lookup_machine(m: &Machine) -> Option<&'static ChipRow> {
    let brand = m.model.trim();
    if apple_chip(brand).is_some() {
        let bins: Vec<&ChipRow> = ROWS.iter().filter(|r| r.brand == brand).collect();
        let (p, e) = (m.performance_cores(), m.efficiency_cores());
        return match (p, e) {
            (Some(p), Some(e)) if p > 0 => {
                bins.into_iter().find(|r| r.performance_cores as usize == p && r.efficiency_cores as usize == e)
            }
            _ => bins.into_iter().next(),
        };
    }
    if m.microarchitecture == Microarch::Unknown || m.microarchitecture.is_apple_m() {
        return None;
    }
    let same_arch = || ROWS.iter().filter(|r| r.microarchitecture == m.microarchitecture);
    same_arch().find(|r| brand.contains(r.brand)).or_else(|| same_arch().next())
}

/// Expected peaks of this machine from its atlas row, with a note saying
/// how they were obtained. Apple rows and an x86 SKU row whose core count
/// matches give the row's whole-chip figures; otherwise the per-cycle
/// rates are applied to the detected cores and clock (the SKU's base clock
/// when the brand names it, else the clock the OS reports).
pub fn peaks_for_machine(row: &ChipRow, m: &Machine) -> (PerPrecision, String) {
    if row.is_apple() {
        let what =
            if row.published_peak.any() { "published/measured whole-chip figures" } else { "no public peak figure" };
        return (row.peak_gflops(), format!("{what} ({})", row.name));
    }
    let sku = m.model.contains(row.brand);
    let cores = m.physical_cores.unwrap_or(m.logical_cores);
    if sku && cores == row.performance_cores as usize {
        return (row.peak_gflops(), format!("whole chip: {PEAK_FORMULA} at the {} GHz base clock", fmt(row.clock_ghz)));
    }
    let clock = if sku {
        row.clock_ghz.map(|g| (g, format!("{} GHz base clock of {}", fmt(Some(g)), row.brand)))
    } else {
        m.nominal_clock_mhz.map(|mhz| {
            (
                mhz / 1000.0,
                format!("{:.2} GHz from {}", mhz / 1000.0, m.nominal_clock_source.as_deref().unwrap_or("the OS")),
            )
        })
    };
    match clock {
        Some((ghz, clock_note)) if cores > 0 => (
            row.peak_for(cores, ghz),
            format!(
                "{PEAK_FORMULA}, with the {} per-cycle rates, {cores} detected cores, {clock_note}",
                row.microarchitecture
            ),
        ),
        _ => (PerPrecision::NONE, "no clock or core count known, so the per-cycle rates cannot be applied".into()),
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map(|g| format!("{g}")).unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_row_cites_a_source() {
        let mut names: Vec<&str> = ROWS.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ROWS.len());
        for r in ROWS {
            assert!(r.source.len() > 20, "{}", r.name);
            assert!(r.performance_cores > 0, "{}", r.name);
        }
    }

    #[test]
    fn every_apple_chip_and_bin_of_the_shared_table_is_present() {
        // (brand, P, E, top GPU cores, bandwidth) as in shared/README.md's table (top bins).
        let top = [
            ("Apple M1", 4, 4, 8, 68.25),
            ("Apple M1 Pro", 8, 2, 16, 200.0),
            ("Apple M1 Max", 8, 2, 32, 400.0),
            ("Apple M1 Ultra", 16, 4, 64, 800.0),
            ("Apple M2", 4, 4, 10, 100.0),
            ("Apple M2 Pro", 8, 4, 19, 200.0),
            ("Apple M2 Max", 8, 4, 38, 400.0),
            ("Apple M2 Ultra", 16, 8, 76, 800.0),
            ("Apple M3", 4, 4, 10, 100.0),
            ("Apple M3 Pro", 6, 6, 18, 150.0),
            ("Apple M3 Max", 12, 4, 40, 400.0),
            ("Apple M3 Ultra", 24, 8, 80, 819.0),
            ("Apple M4", 4, 6, 10, 120.0),
            ("Apple M4 Pro", 10, 4, 20, 273.0),
            ("Apple M4 Max", 12, 4, 40, 546.0),
        ];
        for (brand, p, e, gpu, bw) in top {
            let r = ROWS
                .iter()
                .find(|r| r.brand == brand && r.performance_cores == p && r.efficiency_cores == e)
                .unwrap_or_else(|| panic!("{brand} {p}+{e} missing"));
            assert_eq!(r.gpu_cores.iter().max(), Some(&gpu), "{}", r.name);
            assert_eq!(r.memory_bandwidth_gb_s, Some(bw), "{}", r.name);
            // The top bin is the first row of its chip, so unknown core counts pick it.
            assert_eq!(ROWS.iter().find(|x| x.brand == brand).unwrap().name, r.name);
        }
        let tops = |brand: &str| ROWS.iter().find(|r| r.brand == brand).unwrap().neural_engine_tops;
        assert_eq!(tops("Apple M1"), Some(11.0));
        assert_eq!(tops("Apple M1 Ultra"), Some(22.0));
        assert_eq!(tops("Apple M2 Ultra"), Some(31.6));
        assert_eq!(tops("Apple M3"), Some(18.0));
        assert_eq!(tops("Apple M3 Ultra"), None);
        assert_eq!(tops("Apple M4 Max"), Some(38.0));
    }

    #[test]
    fn x86_peaks_follow_the_formula() {
        let spr = ROWS.iter().find(|r| r.brand == "Platinum 8480+").unwrap();
        let p = spr.peak_gflops();
        // 56 cores x 2.0 GHz x {64, 1024, 128, 2048}.
        assert_eq!(p.fp32, Some(7168.0));
        assert_eq!(p.bf16, Some(114688.0));
        assert_eq!(p.fp16, Some(14336.0));
        assert_eq!(p.int8, Some(229376.0));
        let zen4 = ROWS.iter().find(|r| r.brand == "EPYC 9654").unwrap();
        assert_eq!(zen4.peak_gflops().fp32, Some(32.0 * 96.0 * 2.4));
        assert_eq!(zen4.peak_gflops().bf16, None);
        let m4 = ROWS.iter().find(|r| r.name == "Apple M4 10-core CPU").unwrap();
        assert_eq!(m4.peak_gflops().fp32, Some(2300.0));
        assert!(!ROWS.iter().find(|r| r.name == "Apple M3 Max 16-core CPU").unwrap().peak_gflops().any());
    }
}
