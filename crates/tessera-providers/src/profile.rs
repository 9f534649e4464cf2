//! Per-operator time, collected when profiling is switched on (`tessera
//! bench --profile`, or `TESSERA_PROFILE=1`), so a user sees where a model's
//! time goes and on which provider.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Option<HashMap<String, (u64, f64)>>> = Mutex::new(None);

pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    // Read the environment once: this is asked on every operator run.
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ENABLED.load(Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| std::env::var_os("TESSERA_PROFILE").is_some_and(|v| v == "1"))
}

pub fn record(key: &str, seconds: f64) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let e = t.get_or_insert_with(HashMap::new).entry(key.to_string()).or_insert((0, 0.0));
    e.0 += 1;
    e.1 += seconds;
}

/// (provider:op, calls, total seconds), slowest first; clears the table.
pub fn take() -> Vec<(String, u64, f64)> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = t.take().unwrap_or_default().into_iter().map(|(k, (n, s))| (k, n, s)).collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}
