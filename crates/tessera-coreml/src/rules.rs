//! What the Neural Engine takes (filled in below).
