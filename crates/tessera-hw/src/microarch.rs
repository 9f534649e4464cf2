//! Microarchitecture from what the OS reports: x86 vendor + family/model
//! (+ stepping where Intel reused a model number), Arm MIDR implementer +
//! part (Linux `/proc/cpuinfo`), or the Apple brand string (macOS).
//!
//! Tables (all numbers as the OS prints them):
//! - Intel family 6 models: Intel SDM vol. 4 table 2-1 and the Linux
//!   `arch/x86/include/asm/intel-family.h` names.
//! - AMD families 0x17 / 0x19 / 0x1a and model ranges: AMD's processor
//!   programming references per family; Zen 3 and Zen 4 share family 0x19
//!   and are told apart by model range.
//! - Arm parts: Linux `arch/arm64/include/asm/cputype.h` (implementer 0x41
//!   Arm, 0x61 Apple, 0xc0 Ampere).

use serde::{Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Microarch {
    #[default]
    Unknown,
    // Intel client
    TigerLake,
    AlderLake,
    RaptorLake,
    MeteorLake,
    LunarLake,
    ArrowLake,
    // Intel server
    SkylakeServer,
    CascadeLake,
    CooperLake,
    IceLakeServer,
    SapphireRapids,
    EmeraldRapids,
    GraniteRapids,
    SierraForest,
    // AMD
    Zen,
    Zen2,
    Zen3,
    Zen4,
    Zen5,
    // Apple
    AppleM1,
    AppleM2,
    AppleM3,
    AppleM4,
    AppleM5,
    // Arm Ltd. cores
    CortexA53,
    CortexA55,
    CortexA57,
    CortexA72,
    CortexA73,
    CortexA75,
    CortexA76,
    CortexA77,
    CortexA78,
    CortexX1,
    CortexA510,
    CortexA710,
    CortexX2,
    CortexA715,
    CortexX3,
    CortexA520,
    CortexA720,
    CortexX4,
    NeoverseN1,
    NeoverseV1,
    NeoverseN2,
    NeoverseV2,
    NeoverseV3,
    NeoverseN3,
    // Others
    AmpereOne,
}

impl Microarch {
    pub fn name(self) -> &'static str {
        use Microarch::*;
        match self {
            Unknown => "unknown",
            TigerLake => "Tiger Lake",
            AlderLake => "Alder Lake",
            RaptorLake => "Raptor Lake",
            MeteorLake => "Meteor Lake",
            LunarLake => "Lunar Lake",
            ArrowLake => "Arrow Lake",
            SkylakeServer => "Skylake-SP",
            CascadeLake => "Cascade Lake",
            CooperLake => "Cooper Lake",
            IceLakeServer => "Ice Lake-SP",
            SapphireRapids => "Sapphire Rapids",
            EmeraldRapids => "Emerald Rapids",
            GraniteRapids => "Granite Rapids",
            SierraForest => "Sierra Forest",
            Zen => "Zen / Zen+",
            Zen2 => "Zen 2",
            Zen3 => "Zen 3",
            Zen4 => "Zen 4",
            Zen5 => "Zen 5",
            AppleM1 => "Apple M1",
            AppleM2 => "Apple M2",
            AppleM3 => "Apple M3",
            AppleM4 => "Apple M4",
            AppleM5 => "Apple M5",
            CortexA53 => "Cortex-A53",
            CortexA55 => "Cortex-A55",
            CortexA57 => "Cortex-A57",
            CortexA72 => "Cortex-A72",
            CortexA73 => "Cortex-A73",
            CortexA75 => "Cortex-A75",
            CortexA76 => "Cortex-A76",
            CortexA77 => "Cortex-A77",
            CortexA78 => "Cortex-A78",
            CortexX1 => "Cortex-X1",
            CortexA510 => "Cortex-A510",
            CortexA710 => "Cortex-A710",
            CortexX2 => "Cortex-X2",
            CortexA715 => "Cortex-A715",
            CortexX3 => "Cortex-X3",
            CortexA520 => "Cortex-A520",
            CortexA720 => "Cortex-A720",
            CortexX4 => "Cortex-X4",
            NeoverseN1 => "Neoverse N1",
            NeoverseV1 => "Neoverse V1",
            NeoverseN2 => "Neoverse N2",
            NeoverseV2 => "Neoverse V2",
            NeoverseV3 => "Neoverse V3",
            NeoverseN3 => "Neoverse N3",
            AmpereOne => "AmpereOne",
        }
    }

    pub fn is_apple_m(self) -> bool {
        use Microarch::*;
        matches!(self, AppleM1 | AppleM2 | AppleM3 | AppleM4 | AppleM5)
    }
}

impl std::fmt::Display for Microarch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialized as its display name ("Sapphire Rapids"), which is what a
/// reader of `tessera detect --json` looks for.
impl Serialize for Microarch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// x86: vendor id ("GenuineIntel", "AuthenticAMD") with the decimal family,
/// model and stepping of `/proc/cpuinfo` (or CPUID leaf 1 decoded the same way).
pub fn x86_microarch(vendor: &str, family: u32, model: u32, stepping: u32) -> Microarch {
    use Microarch::*;
    match (vendor, family) {
        ("GenuineIntel", 6) => match model {
            140 | 141 => TigerLake,
            151 | 154 => AlderLake,
            183 | 186 | 191 => RaptorLake,
            170 | 172 => MeteorLake,
            189 => LunarLake,
            197 | 198 => ArrowLake,
            // Model 85 covers three server generations; the stepping tells them apart.
            85 => match stepping {
                0..=4 => SkylakeServer,
                5..=7 => CascadeLake,
                _ => CooperLake,
            },
            106 | 108 => IceLakeServer,
            143 => SapphireRapids,
            207 => EmeraldRapids,
            173 | 174 => GraniteRapids,
            175 => SierraForest,
            _ => Unknown,
        },
        ("AuthenticAMD", 0x17) => {
            if model < 0x30 {
                Zen
            } else {
                Zen2
            }
        }
        ("AuthenticAMD", 0x19) => match model {
            0x00..=0x0f | 0x20..=0x5f => Zen3,
            0x10..=0x1f | 0x60..=0x7f | 0xa0..=0xaf => Zen4,
            _ => Unknown,
        },
        ("AuthenticAMD", 0x1a) => Zen5,
        _ => Unknown,
    }
}

/// Arm: MIDR implementer and part number (Linux `CPU implementer` / `CPU part`).
pub fn arm_microarch(implementer: u32, part: u32) -> Microarch {
    use Microarch::*;
    match (implementer, part) {
        (0x41, 0xd03) => CortexA53,
        (0x41, 0xd05) => CortexA55,
        (0x41, 0xd07) => CortexA57,
        (0x41, 0xd08) => CortexA72,
        (0x41, 0xd09) => CortexA73,
        (0x41, 0xd0a) => CortexA75,
        (0x41, 0xd0b) => CortexA76,
        (0x41, 0xd0c) => NeoverseN1,
        (0x41, 0xd0d) => CortexA77,
        (0x41, 0xd40) => NeoverseV1,
        (0x41, 0xd41) => CortexA78,
        (0x41, 0xd44) => CortexX1,
        (0x41, 0xd46) => CortexA510,
        (0x41, 0xd47) => CortexA710,
        (0x41, 0xd48) => CortexX2,
        (0x41, 0xd49) => NeoverseN2,
        (0x41, 0xd4d) => CortexA715,
        (0x41, 0xd4e) => CortexX3,
        (0x41, 0xd4f) => NeoverseV2,
        (0x41, 0xd80) => CortexA520,
        (0x41, 0xd81) => CortexA720,
        (0x41, 0xd82) => CortexX4,
        (0x41, 0xd84) => NeoverseV3,
        (0x41, 0xd8e) => NeoverseN3,
        // Apple cores as Linux (Asahi) sees them: M1 0x022-0x029, M2 0x032-0x039.
        (0x61, 0x022..=0x029) => AppleM1,
        (0x61, 0x032..=0x039) => AppleM2,
        (0xc0, 0xac3 | 0xac4) => AmpereOne,
        _ => Unknown,
    }
}

/// Apple chip generation and tier from a brand string such as
/// "Apple M3 Max". `None` for anything that is not an Apple M-series name.
pub fn apple_chip(brand: &str) -> Option<(Microarch, AppleTier)> {
    let rest = brand.trim().strip_prefix("Apple M")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let gen = match digits.parse::<u32>().ok()? {
        1 => Microarch::AppleM1,
        2 => Microarch::AppleM2,
        3 => Microarch::AppleM3,
        4 => Microarch::AppleM4,
        5 => Microarch::AppleM5,
        _ => return None,
    };
    let tier = match rest[digits.len()..].trim() {
        "" => AppleTier::Base,
        "Pro" => AppleTier::Pro,
        "Max" => AppleTier::Max,
        "Ultra" => AppleTier::Ultra,
        _ => return None,
    };
    Some((gen, tier))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AppleTier {
    Base,
    Pro,
    Max,
    Ultra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intel_models() {
        let i = |m| x86_microarch("GenuineIntel", 6, m, 0);
        assert_eq!(i(143), Microarch::SapphireRapids);
        assert_eq!(i(207), Microarch::EmeraldRapids);
        assert_eq!(i(151), Microarch::AlderLake);
        assert_eq!(i(154), Microarch::AlderLake);
        for m in [183, 186, 191] {
            assert_eq!(i(m), Microarch::RaptorLake);
        }
        assert_eq!(i(173), Microarch::GraniteRapids);
        assert_eq!(i(1), Microarch::Unknown);
        assert_eq!(x86_microarch("GenuineIntel", 6, 85, 7), Microarch::CascadeLake);
        assert_eq!(x86_microarch("GenuineIntel", 6, 85, 4), Microarch::SkylakeServer);
        assert_eq!(x86_microarch("GenuineIntel", 15, 143, 0), Microarch::Unknown);
    }

    #[test]
    fn amd_families() {
        let a = |f, m| x86_microarch("AuthenticAMD", f, m, 0);
        assert_eq!(a(0x19, 0x01), Microarch::Zen3);
        assert_eq!(a(0x19, 0x21), Microarch::Zen3);
        assert_eq!(a(0x19, 0x50), Microarch::Zen3);
        assert_eq!(a(0x19, 0x11), Microarch::Zen4);
        assert_eq!(a(0x19, 0x61), Microarch::Zen4);
        assert_eq!(a(0x19, 0xa0), Microarch::Zen4);
        assert_eq!(a(0x19, 0x90), Microarch::Unknown);
        assert_eq!(a(0x1a, 0x02), Microarch::Zen5);
        assert_eq!(a(0x17, 0x31), Microarch::Zen2);
        assert_eq!(a(0x17, 0x08), Microarch::Zen);
        // An Intel family/model under the AMD vendor id means nothing.
        assert_eq!(a(6, 143), Microarch::Unknown);
    }

    #[test]
    fn arm_parts_and_apple_brands() {
        assert_eq!(arm_microarch(0x41, 0xd0b), Microarch::CortexA76);
        assert_eq!(arm_microarch(0x41, 0xd4f), Microarch::NeoverseV2);
        assert_eq!(arm_microarch(0x61, 0x023), Microarch::AppleM1);
        assert_eq!(arm_microarch(0x61, 0x039), Microarch::AppleM2);
        assert_eq!(arm_microarch(0x42, 0xd0b), Microarch::Unknown);
        assert_eq!(apple_chip("Apple M4 Max"), Some((Microarch::AppleM4, AppleTier::Max)));
        assert_eq!(apple_chip("Apple M1"), Some((Microarch::AppleM1, AppleTier::Base)));
        assert_eq!(apple_chip(" Apple M2 Ultra "), Some((Microarch::AppleM2, AppleTier::Ultra)));
        assert_eq!(apple_chip("Apple M9"), None);
        assert_eq!(apple_chip("Apple M3 Extreme"), None);
        assert_eq!(apple_chip("Apple A17 Pro"), None);
        assert_eq!(apple_chip("Apple M"), None);
        assert_eq!(serde_json_name(Microarch::SapphireRapids), "\"Sapphire Rapids\"");
    }

    fn serde_json_name(m: Microarch) -> String {
        serde_json::to_string(&m).unwrap()
    }
}
