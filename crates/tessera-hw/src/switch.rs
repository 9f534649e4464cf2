//! The user's switch for turning hardware features off, separate from what
//! the hardware can do: `TESSERA_DISABLE=amx,avx512` in the environment, or
//! [`set_disabled`] (the CLI's `--disable`, the Session API).

use std::sync::Mutex;

/// Environment variable holding a comma-separated list of features to disable.
pub const DISABLE_ENV: &str = "TESSERA_DISABLE";

/// Feature names some part of tessera looks at. Others are accepted and
/// recorded but change nothing.
pub const KNOWN_SWITCHES: &[&str] = &["amx", "avx512", "sme", "accelerate"];

pub(crate) const DISABLED_AMX: &str = "disabled by the user (--disable amx / TESSERA_DISABLE)";

static SET_BY_API: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Splits a `TESSERA_DISABLE`-style list: comma-separated, case-insensitive,
/// surrounding whitespace and empty entries ignored, duplicates removed.
pub fn parse_disable_list(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in list.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Turns `feature` off for the rest of the process (all threads). Accepts a
/// comma-separated list too. There is no way to turn a feature back on.
pub fn set_disabled(feature: &str) {
    let mut set = SET_BY_API.lock().unwrap_or_else(|e| e.into_inner());
    for name in parse_disable_list(feature) {
        if !set.contains(&name) {
            set.push(name);
        }
    }
}

/// Whether the user turned `feature` off, through `TESSERA_DISABLE` (read at
/// every call) or [`set_disabled`]. Case-insensitive.
pub fn disabled_by_user(feature: &str) -> bool {
    let feature = feature.trim().to_ascii_lowercase();
    disabled_features().contains(&feature)
}

/// All features the user turned off: `TESSERA_DISABLE` entries first, then
/// those from [`set_disabled`], without duplicates.
pub fn disabled_features() -> Vec<String> {
    let mut out = parse_disable_list(&std::env::var(DISABLE_ENV).unwrap_or_default());
    for name in SET_BY_API.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}
