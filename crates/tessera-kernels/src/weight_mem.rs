//! Memory for packed weights: large buffers are carved from 2 MiB-aligned
//! anonymous mappings advised onto transparent huge pages.
//!
//! Why: a tile GEMM streams its whole weight once per call, and a model's
//! weights (170 MB for BERT-base in bf16) overflow every cache, so each
//! 4 KiB page of a weight costs a TLB miss (a two-level walk under a
//! hypervisor) and stops the L2 stream prefetcher, which does not cross
//! pages. Measured on the Xeon (`benches/results/2026-11-27-math-attention/
//! hugepages_ab.txt`): 2048^3 bf16 +20% on one and two threads, weights
//! streamed from DRAM at M = 128 +2% to +16%, warm M = 128 mixed (-12% to
//! +18%), BERT end to end within the noise. Carving many weights from one
//! mapping keeps the waste to the unused tail of the last huge page, where
//! one mapping per weight would round each up to 2 MiB.
//!
//! Where huge pages are unavailable (THP `never`, not Linux), the mapping
//! still works with small pages. [`set_huge_pages`]`(false)`, or
//! `TESSERA_HUGE_PAGES=off` in the environment, turns the whole scheme off
//! (plain heap buffers), for A/B measurements or to save the memory.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use aligned_vec::{AVec, ConstAlign};

const HUGE_PAGE: usize = 2 << 20;
/// Buffers below this stay on the heap: they span few pages.
const MIN_ARENA_LEN: usize = 256 << 10;
/// Size of one mapping that buffers are carved from (more when one buffer
/// needs it).
const SEGMENT_LEN: usize = 64 << 20;
/// Alignment of carved buffers (tile rows need 64; a page keeps unrelated
/// buffers off each other's pages).
const CARVE_ALIGN: usize = 4096;

/// 0: not decided yet (read the environment), 1: on, 2: off.
static HUGE_PAGES: AtomicU8 = AtomicU8::new(0);

/// Turns the huge-page arena on or off for buffers allocated from now on.
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

pub fn huge_pages() -> bool {
    match HUGE_PAGES.load(Ordering::Relaxed) {
        0 => {
            let off = matches!(std::env::var("TESSERA_HUGE_PAGES").as_deref(), Ok("off" | "0"));
            set_huge_pages(!off);
            !off
        }
        v => v == 1,
    }
}

/// A zero-initialized, 64-byte aligned byte buffer for packed weights.
pub struct WeightBuf {
    inner: Inner,
}

enum Inner {
    Heap(AVec<u8, ConstAlign<64>>),
    /// `segment` is held to keep the mapping alive while `ptr` points into it.
    Carved {
        _segment: Arc<Segment>,
        ptr: *mut u8,
        len: usize,
    },
}

// SAFETY: a carved buffer is the only handle to its byte range (ranges of
// one segment never overlap, see `carve`), so moving it to another thread
// or sharing `&WeightBuf` is as safe as for a `Vec<u8>`.
unsafe impl Send for WeightBuf {}
// SAFETY: as above; `&WeightBuf` only gives out `&[u8]`.
unsafe impl Sync for WeightBuf {}

/// One anonymous mapping; unmapped when the last buffer carved from it is
/// dropped.
struct Segment {
    /// Owns the mapping (unmapped on drop); reached only through `base`.
    _map: memmap2::MmapMut,
    /// The mapping's first byte, taken from it mutably so that buffers may
    /// write through pointers derived from it.
    base: *mut u8,
    /// Offset of the first 2 MiB boundary inside the mapping.
    start: usize,
    /// Usable bytes from `start`.
    len: usize,
}

// SAFETY: `base` points into the mapping the segment owns; the segment
// itself never reads or writes through it, and the buffers carved from it
// own disjoint ranges (see `WeightBuf`'s Send and Sync).
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

struct Arena {
    /// The segment new buffers come from: weak, so that a segment whose
    /// buffers were all dropped is unmapped rather than kept resident.
    current: Weak<Segment>,
    cursor: usize,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena { current: Weak::new(), cursor: 0 });

impl WeightBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> WeightBuf {
        if len >= MIN_ARENA_LEN && huge_pages() {
            if let Some(buf) = carve(len) {
                return buf;
            }
        }
        WeightBuf { inner: Inner::Heap(AVec::from_iter(64, std::iter::repeat_n(0u8, len))) }
    }

    /// Whether this buffer lives in a huge-page mapping.
    pub fn is_carved(&self) -> bool {
        matches!(self.inner, Inner::Carved { .. })
    }
}

fn new_segment(min_len: usize) -> Option<Arc<Segment>> {
    let len = min_len.max(SEGMENT_LEN).div_ceil(HUGE_PAGE) * HUGE_PAGE;
    // Anonymous memory reads as zero until written, so carved buffers need
    // no initialization pass (and untouched tails cost no memory).
    let mut map = memmap2::MmapMut::map_anon(len + HUGE_PAGE).ok()?;
    let base = map.as_mut_ptr();
    let start = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
    #[cfg(target_os = "linux")]
    {
        // Best effort: with THP `never` the advice fails and the segment
        // keeps small pages.
        let _ = map.advise_range(memmap2::Advice::HugePage, start, len);
    }
    Some(Arc::new(Segment { _map: map, base, start, len }))
}

fn carve(len: usize) -> Option<WeightBuf> {
    let mut arena = ARENA.lock().unwrap_or_else(|e| e.into_inner());
    let fits = |seg: &Segment, cursor: usize| cursor + len <= seg.len;
    let seg = match arena.current.upgrade() {
        Some(seg) if fits(&seg, arena.cursor) => seg,
        _ => {
            let seg = new_segment(len)?;
            arena.current = Arc::downgrade(&seg);
            arena.cursor = 0;
            seg
        }
    };
    let offset = arena.cursor;
    arena.cursor = (offset + len).next_multiple_of(CARVE_ALIGN);
    // SAFETY: `start + offset + len <= start + seg.len <= mapping length`
    // (checked by `fits`, and `new_segment` maps `len + HUGE_PAGE` bytes with
    // `start < HUGE_PAGE`); the cursor only moves forward, so no two buffers
    // of one segment overlap; the pointer stays valid while `seg` (held by
    // the buffer) keeps the mapping alive.
    let ptr = unsafe { seg.base.add(seg.start + offset) };
    Some(WeightBuf { inner: Inner::Carved { _segment: seg, ptr, len } })
}

impl Deref for WeightBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Heap(v) => v,
            // SAFETY: `ptr..ptr + len` is this buffer's own range of a live
            // mapping (see `carve`).
            Inner::Carved { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl DerefMut for WeightBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Inner::Heap(v) => v,
            // SAFETY: as in `deref`; `&mut self` makes this the only access,
            // and no other buffer overlaps the range.
            Inner::Carved { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }
}

impl std::fmt::Debug for WeightBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightBuf({} bytes, {})", self.len(), if self.is_carved() { "arena" } else { "heap" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carved_buffers_are_zeroed_aligned_and_disjoint() {
        let lens = [300 << 10, 1 << 20, 5 << 20, 257 << 10, 70 << 20, 1000];
        let mut bufs: Vec<WeightBuf> = lens.iter().map(|&l| WeightBuf::zeroed(l)).collect();
        for (i, (b, &l)) in bufs.iter_mut().zip(&lens).enumerate() {
            assert_eq!(b.len(), l);
            assert_eq!(b.as_ptr() as usize % 64, 0);
            assert_eq!(b.is_carved(), l >= MIN_ARENA_LEN, "buffer {i} of {l} bytes");
            assert!(b.iter().all(|&v| v == 0), "buffer {i} not zeroed");
            b.fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&v| v == i as u8 + 1), "buffer {i} overwritten by another");
        }
        // Dropping the first ones must leave the later ones intact.
        let kept = bufs.split_off(2);
        drop(bufs);
        for (i, b) in kept.iter().enumerate() {
            assert!(b.iter().all(|&v| v == i as u8 + 3));
        }
    }

    #[test]
    fn a_segment_is_unmapped_with_its_last_buffer() {
        // A segment of its own: exactly one full segment, so that no
        // buffer of a concurrent test lands in it.
        let b = WeightBuf::zeroed(66 << 20);
        let Inner::Carved { _segment: segment, .. } = &b.inner else { panic!("expected a carved buffer") };
        let weak = Arc::downgrade(segment);
        let mut b = b;
        b.fill(1);
        // Where Linux gives huge pages only on request (THP "madvise"),
        // any anonymous huge page of this process is the arena's.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if thp.contains("[madvise]") {
            let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
            let kb: usize = rollup
                .lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            assert!(kb >= 2048, "no huge page backs the arena ({kb} kB of anonymous huge pages)");
        }
        drop(b);
        assert!(weak.upgrade().is_none(), "segment outlived its buffers");
    }
}
