//! Power/energy sensors Linux exposes in sysfs. Only reports what exists;
//! nothing is read repeatedly or interpreted.

use std::fs;
use std::path::Path;

fn sorted_entries(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn access(p: &Path) -> &'static str {
    if fs::read_to_string(p).is_ok() {
        "readable"
    } else {
        "not readable by this user"
    }
}

/// Sensors under a sysfs root (normally `/sys/class`), one line each:
/// - `powercap/intel-rapl*/energy_uj` (RAPL energy counters; also on AMD),
/// - `hwmon/*/power*_input` (instantaneous power, microwatts),
/// - `power_supply/*` entries with `power_now` or `current_now`.
pub fn find_power_sensors_in(class_root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (name, path) in sorted_entries(&class_root.join("powercap")) {
        let energy = path.join("energy_uj");
        if name.starts_with("intel-rapl") && energy.exists() {
            let zone = read_trim(&path.join("name")).unwrap_or_default();
            out.push(format!("{} (RAPL {zone}, {})", energy.display(), access(&energy)));
        }
    }
    for (_, path) in sorted_entries(&class_root.join("hwmon")) {
        let chip = read_trim(&path.join("name")).unwrap_or_default();
        for (file, fpath) in sorted_entries(&path) {
            if file.starts_with("power") && file.ends_with("_input") {
                out.push(format!("{} (hwmon {chip}, {})", fpath.display(), access(&fpath)));
            }
        }
    }
    for (_, path) in sorted_entries(&class_root.join("power_supply")) {
        let kind = read_trim(&path.join("type")).unwrap_or_default();
        for file in ["power_now", "current_now"] {
            let f = path.join(file);
            if f.exists() {
                out.push(format!("{} (power_supply {kind}, {})", f.display(), access(&f)));
                break;
            }
        }
    }
    out
}

/// [`find_power_sensors_in`] on `/sys/class`; empty on non-Linux systems.
pub fn find_power_sensors() -> Vec<String> {
    find_power_sensors_in(Path::new("/sys/class"))
}
