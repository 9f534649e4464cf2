//! One typed description of the machine: CPU identity, microarchitecture,
//! core classes with their caches, SIMD and matrix features, memory, GPUs,
//! Neural Engine and power sensors. Filled by the pure parsers in
//! [`crate::linux`] and [`crate::macos`] (fixture-tested) and, on a live
//! machine, by [`crate::detect_machine`].

use serde::Serialize;

use crate::microarch::Microarch;

/// What `gpus` says while no GPU provider exists to fill it.
pub const GPUS_NOTE: &str = "filled by the GPU provider when it exists";

/// The machine as detected. Fields the source does not provide stay `None`
/// (or empty); nothing is guessed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Machine {
    /// Where the facts came from: "linux /proc + /sys", "macOS sysctl", ...
    pub source: String,
    /// "GenuineIntel", "AuthenticAMD", "Apple", "ARM", ... ("unknown" when absent).
    pub vendor: String,
    /// The brand string ("Apple M4 Max", "Intel(R) Xeon(R) Platinum 8480+").
    pub model: String,
    /// macOS `hw.model` ("Mac16,5"); `None` elsewhere.
    pub hw_model: Option<String>,
    /// The microarchitecture of the performance cores.
    pub microarchitecture: Microarch,
    /// x86 family / model / stepping as the OS reports them (decimal).
    pub x86_signature: Option<X86Signature>,
    /// Arm MIDR implementer and part of the performance cores (Linux).
    pub arm_id: Option<ArmCpuId>,
    /// Running under a hypervisor (x86 `hypervisor` flag, macOS `kern.hv_vmm_present`).
    pub hypervisor: bool,
    /// Logical CPUs the OS has online (not limited by this process' affinity).
    pub logical_cores: usize,
    /// Physical cores, when the source says how logical CPUs pair up.
    pub physical_cores: Option<usize>,
    /// CPU packages, when the source says so.
    pub sockets: Option<usize>,
    /// Performance and efficiency classes (one `Uniform` class on machines
    /// whose cores are all alike).
    pub core_classes: Vec<CoreClass>,
    /// Clock in MHz that peak formulas may use, and where it came from.
    pub nominal_clock_mhz: Option<f64>,
    pub nominal_clock_source: Option<String>,
    pub features: CpuFeatures,
    /// Installed memory in bytes (Linux MemTotal, macOS `hw.memsize`).
    pub memory_bytes: Option<u64>,
    /// CPU and GPU share one memory (Apple silicon).
    pub unified_memory: bool,
    /// GPUs; empty until a GPU provider fills it (see [`GPUS_NOTE`]).
    pub gpus: Vec<Gpu>,
    pub gpus_note: String,
    /// The Neural Engine, on Apple M-series chips.
    pub neural_engine: Option<NeuralEngine>,
    /// Power/energy sensor files (see [`crate::find_power_sensors_in`]).
    pub power_sensors: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct X86Signature {
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArmCpuId {
    /// MIDR_EL1.Implementer (0x41 Arm, 0x61 Apple, 0xc0 Ampere, ...).
    pub implementer: u32,
    /// MIDR_EL1.PartNum.
    pub part: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreKind {
    Performance,
    Efficiency,
    /// All cores of the machine are of one kind.
    #[default]
    Uniform,
}

/// One class of cores and the caches one core of it sees.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CoreClass {
    pub kind: CoreKind,
    /// The OS's name for the class: macOS `hw.perflevelN.name`, Linux
    /// `cpu_core` / `cpu_atom`, "capacity N", or "all".
    pub name: String,
    pub microarchitecture: Option<Microarch>,
    pub logical_cpus: usize,
    pub physical_cores: Option<usize>,
    /// Linux cpulist of the class ("0-7"), when known.
    pub cpu_list: Option<String>,
    /// Linux `cpu_capacity` of the class (1024 = the fastest), when known.
    pub capacity: Option<u32>,
    pub l1d_bytes: Option<u64>,
    /// L2 as one core sees it (on Apple silicon shared by the cluster).
    pub l2_bytes: Option<u64>,
    pub l3_bytes: Option<u64>,
    /// CPUs sharing one L2 (macOS `cpusperl2`, Linux `shared_cpu_list`).
    pub cpus_per_l2: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gpu {
    pub name: String,
    pub vendor: String,
    pub memory_bytes: Option<u64>,
    pub unified_memory: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeuralEngine {
    pub cores: Option<u32>,
    /// Peak trillions of operations per second as published (atlas), if known.
    pub tops: Option<f64>,
    /// Where the figures come from.
    pub source: String,
}

macro_rules! cpu_features {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// SIMD and matrix features. x86 names are those of Linux
        /// `/proc/cpuinfo` (so a flag there maps to the field of the same
        /// name); Arm names follow the architecture's FEAT_* names.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct CpuFeatures {
            $($(#[$doc])* pub $field: bool,)*
            /// SME streaming vector length in bits, when known.
            pub sme_vector_bits: Option<u32>,
            /// How `sme_vector_bits` was obtained (read or derived, and from what).
            pub sme_vector_bits_source: Option<String>,
        }

        impl CpuFeatures {
            /// Names of the features present, in declaration order.
            pub fn present(&self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $(if self.$field { out.push(stringify!($field)); })*
                out
            }

            /// The field named `name`, if there is one.
            pub fn flag_mut(&mut self, name: &str) -> Option<&mut bool> {
                match name {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }

            /// The value of the field named `name`, if there is one.
            pub fn get(&self, name: &str) -> Option<bool> {
                match name {
                    $(stringify!($field) => Some(self.$field),)*
                    _ => None,
                }
            }

            /// Whether the feature named `name` is present (false for unknown names).
            pub fn has(&self, name: &str) -> bool {
                self.get(name).unwrap_or(false)
            }
        }
    };
}

cpu_features! {
    // ---- x86 vector ----
    avx2,
    fma,
    f16c,
    avx_vnni,
    avx512f,
    avx512cd,
    avx512dq,
    avx512bw,
    avx512vl,
    avx512ifma,
    avx512vbmi,
    avx512_vbmi2,
    avx512_vnni,
    avx512_bitalg,
    avx512_vpopcntdq,
    avx512_bf16,
    avx512_fp16,
    avx512_vp2intersect,
    // Xeon Phi subsets, listed so that every avx512 flag Linux can print has a field.
    avx512pf,
    avx512er,
    avx512_4vnniw,
    avx512_4fmaps,
    // ---- x86 matrix (Intel AMX) ----
    amx_tile,
    amx_bf16,
    amx_int8,
    amx_fp16,
    // ---- Arm ----
    /// Advanced SIMD (Linux `asimd`, macOS `hw.optional.neon`).
    neon,
    /// FEAT_DotProd (Linux `asimddp`).
    dotprod,
    /// FEAT_I8MM.
    i8mm,
    /// FEAT_BF16.
    bf16,
    /// FEAT_FP16 (Linux `fphp`/`asimdhp`).
    fp16,
    sve,
    sve2,
    /// FEAT_SME.
    sme,
    /// FEAT_SME2.
    sme2,
}

impl Machine {
    /// A machine about which nothing is known yet.
    pub fn unknown(source: &str) -> Machine {
        Machine {
            source: source.to_string(),
            vendor: "unknown".into(),
            model: "unknown".into(),
            gpus_note: GPUS_NOTE.into(),
            ..Default::default()
        }
    }

    /// Physical cores of the performance class (all cores on a uniform machine).
    pub fn performance_cores(&self) -> Option<usize> {
        self.class_cores(&[CoreKind::Performance, CoreKind::Uniform])
    }

    /// Physical cores of the efficiency classes (0 on a uniform machine).
    pub fn efficiency_cores(&self) -> Option<usize> {
        if self.core_classes.iter().all(|c| c.kind != CoreKind::Efficiency) {
            return Some(0);
        }
        self.class_cores(&[CoreKind::Efficiency])
    }

    fn class_cores(&self, kinds: &[CoreKind]) -> Option<usize> {
        let classes: Vec<&CoreClass> = self.core_classes.iter().filter(|c| kinds.contains(&c.kind)).collect();
        if classes.is_empty() {
            return None;
        }
        classes.iter().map(|c| c.physical_cores).sum()
    }

    /// Fills what the atlas knows about this chip's Neural Engine (cores,
    /// TOPS). Called by the parsers, so fixtures see the same result.
    pub(crate) fn attach_atlas_facts(&mut self) {
        if self.microarchitecture.is_apple_m() {
            let row = crate::atlas::lookup_machine(self);
            self.neural_engine = Some(NeuralEngine {
                cores: row.and_then(|r| r.neural_engine_cores),
                tops: row.and_then(|r| r.neural_engine_tops),
                source: match row {
                    Some(r) => format!("atlas row '{}' ({})", r.name, r.source),
                    None => "every Apple M-series chip has one; this chip or bin is not in the atlas".to_string(),
                },
            });
        }
    }
}
