//! The hostile-model corpus in `tests/hostile/` (made by
//! `scripts/make_hostile_corpus.py`): every file must give its expected
//! outcome, every file must be listed here, and loading any of them must
//! stay within 8 × the file size + 1 MiB of heap at its peak (measured by a
//! counting global allocator in this test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY (of the impl): forwards to the system allocator unchanged; only
// counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Count the moment both blocks may exist.
            let now = CURRENT.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

enum Expect {
    /// Loads without error.
    Loads,
    /// Fails; the message contains this text.
    Fails(&'static str),
    /// Not a model: data used by another entry.
    Data,
}
use Expect::*;

const TABLE: &[(&str, Expect)] = &[
    ("ok_relu.onnx", Loads),
    ("empty.onnx", Fails("the file is empty")),
    ("truncated.onnx", Fails("corrupt protobuf")),
    ("random_bytes.onnx", Fails("invalid model")),
    ("wrong_magic_png.onnx", Fails("corrupt protobuf")),
    ("text_file.onnx", Fails("invalid model")),
    ("no_graph.onnx", Fails("the model has no graph")),
    ("huge_dims.onnx", Fails("initializer 'w' has dimension 1099511627776 (axis 0), more than the limit")),
    ("huge_numel.onnx", Fails("initializer 'w' of shape [1048576, 1048576, 1048576] has more than")),
    ("negative_dims.onnx", Fails("initializer 'w' has negative dimension -1")),
    ("huge_rank.onnx", Fails("initializer 'w' has rank 20000, more than the limit of 64")),
    ("raw_data_mismatch.onnx", Fails("initializer 'w': raw_data has 20 bytes, but shape [2, 3] of f32 needs 24")),
    ("typed_count_mismatch.onnx", Fails("initializer 'w': float_data has 3 values, but shape [4] needs 4")),
    ("typed_field_mismatch.onnx", Fails("initializer 'w' is i64 but its data is in float_data")),
    ("two_data_fields.onnx", Fails("initializer 'w' carries data in both raw_data and float_data")),
    ("no_data.onnx", Fails("initializer 'w' of shape [4] has no data")),
    ("unknown_dtype.onnx", Fails("initializer 'w': unknown ONNX data type 99")),
    ("string_initializer.onnx", Fails("initializer 'w' is a string tensor")),
    ("bad_data_location.onnx", Fails("initializer 'w' has unknown data_location 7")),
    ("zero_size.onnx", Loads),
    ("cyclic.onnx", Fails("graph has a cycle")),
    ("missing_value.onnx", Fails("reads 'ghost', which is neither an input")),
    ("output_never_produced.onnx", Fails("graph output 'nowhere' is never produced")),
    ("duplicate_producer.onnx", Fails("value 'y' is produced more than once")),
    ("unknown_op.onnx", Loads),
    ("dtype_mismatch.onnx", Loads),
    ("sequence_input.onnx", Fails("graph input 's' is a sequence")),
    (
        "attr_type_mismatch.onnx",
        Fails("attribute 'axis' of node 'sm' (Softmax) is declared INT but carries a FLOATS value"),
    ),
    ("attr_unknown_type.onnx", Fails("attribute 'axis' of node 'sm' (Softmax) has unknown attribute type 99")),
    ("attr_wrong_kind_for_op.onnx", Loads),
    ("attr_ref_outside_function.onnx", Fails("refers to 'outer_axis', which is only allowed inside a function")),
    ("ext_parent_escape.onnx", Fails("external data location '../../etc/passwd' leaves the model folder")),
    ("ext_absolute.onnx", Fails("external data location '/etc/passwd' is an absolute path")),
    ("ext_missing_file.onnx", Fails("external data location 'no_such_file.bin' cannot be opened")),
    ("ext_offset_beyond.bin", Data),
    ("ext_offset_beyond.onnx", Fails("external data range 1000..1016 lies outside 'ext_offset_beyond.bin' (16 bytes)")),
    ("ext_offset_overflow.onnx", Fails("lies outside 'ext_offset_beyond.bin'")),
    ("ext_length_mismatch.onnx", Fails("external data length is 8 bytes, but shape [4] of f32 needs 16")),
    ("ext_ok.bin", Data),
    ("ext_ok.onnx", Loads),
    ("huge_declared_length.onnx", Fails("declares 4611686018427387904 bytes but only 32 remain")),
    ("packed_overrun.onnx", Fails("declares 1000000000 bytes")),
    ("varint_overflow.onnx", Fails("varint longer than 10 bytes")),
    ("protobuf_group.onnx", Fails("protobuf groups")),
    ("many_empty_nodes.onnx", Fails("too many tiny messages")),
    ("bad_utf8_name.onnx", Fails("cannot decode the model protobuf")),
    ("deep_nesting.onnx", Fails("nested deeper than 64")),
    ("function_bomb.onnx", Fails("inlining the model-local functions would make 8388608 nodes")),
    ("function_constant_bomb.onnx", Fails("inlining the model-local functions would make 549117952 bytes of nodes")),
    ("function_recursive.onnx", Fails("model-local function 'self' calls itself")),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/hostile").canonicalize().expect("tests/hostile exists")
}

#[test]
fn hostile_corpus() {
    let dir = corpus_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/hostile exists")
        .map(|e| e.expect("readable entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let listed: Vec<&str> = TABLE.iter().map(|e| e.0).collect();
    let missing: Vec<&String> = files.iter().filter(|f| !listed.contains(&f.as_str())).collect();
    assert!(missing.is_empty(), "files in tests/hostile/ missing from the table in hostile.rs: {missing:?}");
    let stale: Vec<&&str> = listed.iter().filter(|f| !files.iter().any(|g| g == **f)).collect();
    assert!(stale.is_empty(), "table entries without a file (rerun scripts/make_hostile_corpus.py?): {stale:?}");

    let mut failures = Vec::new();
    for (name, expect) in TABLE {
        if matches!(expect, Data) {
            continue;
        }
        let path = dir.join(name);
        let size = std::fs::metadata(&path).expect("file exists").len() as usize;
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let result = tessera_onnx::load_model(&path);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let outcome = match &result {
            Ok(_) => "loads".to_string(),
            Err(e) => e.to_string(),
        };
        drop(result);
        let limit = 8 * size + (1 << 20);
        eprintln!("{name:32} {size:>6} bytes, peak heap {peak:>8}: {outcome}");
        if peak > limit {
            failures.push(format!("{name}: peak heap {peak} bytes exceeds {limit} (file is {size} bytes)"));
        }
        match expect {
            Loads if outcome != "loads" => failures.push(format!("{name}: expected to load, got: {outcome}")),
            Fails(s) if !outcome.contains(s) => {
                failures.push(format!("{name}: expected an error containing {s:?}, got: {outcome}"))
            }
            _ => {}
        }
        // Errors are one line.
        assert!(!outcome.contains('\n'), "{name}: multi-line error: {outcome}");
    }
    assert!(failures.is_empty(), "hostile corpus:\n{}", failures.join("\n"));
}
