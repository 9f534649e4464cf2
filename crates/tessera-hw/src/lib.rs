//! Hardware detection (filled in by the AMX and atlas issues).
