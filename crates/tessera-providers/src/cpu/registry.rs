//! How CPU operators are built and run.
//!
//! Building happens once per session: a builder parses the node's
//! attributes, may read constant inputs (to prepack weights, for instance)
//! and returns a [`CpuOp`]. Running happens on every inference.

use std::collections::HashMap;

use tessera_core::{DType, Node, Result, Tensor};

/// What a builder may look at besides the node itself.
pub struct BuildCtx<'a> {
    /// Opset version of the node's domain.
    pub opset: i64,
    /// Looks up a constant (initializer or folded value) by name.
    pub constant: &'a dyn Fn(&str) -> Option<Tensor>,
}

impl BuildCtx<'_> {
    /// The constant tensor feeding input `i` of `node`, if it is constant.
    pub fn const_input(&self, node: &Node, i: usize) -> Option<Tensor> {
        node.input(i).and_then(|n| (self.constant)(n))
    }
}

type Buffer = tessera_core::tensor::AlignedBytes;

/// Buffers of dead tensors, shared by every run and partition of the
/// process: a fresh allocation of a large buffer costs a page fault per
/// 4 KiB page on first touch, so steady-state inference should allocate
/// nothing. Bounded in count and bytes.
static SHARED_POOL: std::sync::Mutex<Vec<Buffer>> = std::sync::Mutex::new(Vec::new());
const SHARED_POOL_MAX_BUFFERS: usize = 256;
const SHARED_POOL_MAX_BYTES: usize = 1 << 30;

fn fits(b: &Buffer, need: usize) -> bool {
    b.capacity() >= need && b.capacity() <= need.saturating_mul(2).max(4096)
}

fn shared_take(need: usize) -> Option<Buffer> {
    let mut pool = SHARED_POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pos = pool.iter().position(|b| fits(b, need))?;
    Some(pool.swap_remove(pos))
}

fn shared_put(bufs: impl IntoIterator<Item = Buffer>) {
    let mut pool = SHARED_POOL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bytes: usize = pool.iter().map(|b| b.capacity()).sum();
    for b in bufs {
        if b.capacity() >= 4096 && pool.len() < SHARED_POOL_MAX_BUFFERS && bytes + b.capacity() <= SHARED_POOL_MAX_BYTES
        {
            bytes += b.capacity();
            pool.push(b);
        }
    }
}

/// Hands a dead tensor's memory to the shared pool (when no one else holds
/// it); the session calls this for values that die between partitions.
pub fn recycle(t: Tensor) {
    if let Some(b) = t.into_buffer() {
        shared_put([b]);
    }
}

/// Per-run context: where outputs get their memory.
#[derive(Default)]
pub struct RunCtx {
    pool: Vec<Buffer>,
}

impl RunCtx {
    /// A zeroed output tensor, reusing a released buffer when one is big enough.
    pub fn alloc(&mut self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let buf = self.take(dtype, shape)?;
        Tensor::from_pool(dtype, shape, buf)
    }

    /// [`RunCtx::alloc`] for an op that writes every element of its output:
    /// the contents start unspecified (a recycled buffer's old values), not
    /// zeroed.
    pub fn alloc_for_overwrite(&mut self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let buf = self.take(dtype, shape)?;
        Tensor::from_pool_for_overwrite(dtype, shape, buf)
    }

    fn take(&mut self, dtype: DType, shape: &[usize]) -> Result<Option<Buffer>> {
        let need = tessera_core::tensor::checked_numel(shape)? * dtype.size();
        Ok(match self.pool.iter().position(|b| fits(b, need)) {
            Some(p) => Some(self.pool.swap_remove(p)),
            None if need >= 4096 => shared_take(need),
            None => None,
        })
    }

    /// Hands a dead tensor's memory back for reuse.
    pub fn release(&mut self, t: Tensor) {
        if let Some(b) = t.into_buffer() {
            if b.capacity() >= 4096 && self.pool.len() < 256 {
                self.pool.push(b);
            }
        }
    }
}

impl Drop for RunCtx {
    fn drop(&mut self) {
        shared_put(self.pool.drain(..));
    }
}

/// A built operator ready to run.
pub trait CpuOp: Send + Sync {
    /// `inputs[i]` is None for an omitted optional input.
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>>;
}

impl<F> CpuOp for F
where
    F: Fn(&[Option<&Tensor>], &mut RunCtx) -> Result<Vec<Tensor>> + Send + Sync,
{
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        self(inputs, ctx)
    }
}

pub type Builder = fn(&Node, &BuildCtx) -> Result<Box<dyn CpuOp>>;

/// Operator builders keyed by (domain, op_type). The default ONNX domain is
/// stored as "".
#[derive(Default)]
pub struct OpRegistry {
    builders: HashMap<(String, String), Builder>,
}

pub fn canonical_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

impl OpRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry with every CPU operator.
    pub fn with_all_ops() -> Self {
        let mut r = Self::new();
        super::ops::register_all(&mut r);
        r
    }

    /// Registers an operator of the default ONNX domain.
    pub fn add(&mut self, op_type: &str, b: Builder) {
        self.add_domain("", op_type, b);
    }

    pub fn add_domain(&mut self, domain: &str, op_type: &str, b: Builder) {
        self.builders.insert((domain.to_string(), op_type.to_string()), b);
    }

    pub fn get(&self, domain: &str, op_type: &str) -> Option<Builder> {
        self.builders.get(&(canonical_domain(domain).to_string(), op_type.to_string())).copied()
    }

    pub fn supports(&self, node: &Node) -> bool {
        self.get(&node.domain, &node.op_type).is_some()
    }

    pub fn op_names(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.builders.keys().map(|(d, o)| if d.is_empty() { o.clone() } else { format!("{d}:{o}") }).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_for_overwrite_reuses_without_zeroing_and_sizes_exactly() {
        let mut ctx = RunCtx::default();
        // A buffer of exactly 2048 floats (not one from the process-wide
        // pool, which other tests fill), released into this context's pool.
        ctx.release(Tensor::from_vec(&[2048], vec![7.0f32; 2048]).unwrap());
        // Smaller: the same buffer, its old values kept, the length exact.
        let t = ctx.alloc_for_overwrite(DType::F32, &[1500]).unwrap();
        assert_eq!(t.shape(), &[1500]);
        assert_eq!(t.as_slice::<f32>().unwrap().len(), 1500);
        assert!(t.as_slice::<f32>().unwrap().iter().all(|&v| v == 7.0));
        ctx.release(t);
        // Larger again: the buffer kept its whole length (nothing zeroed,
        // the old values throughout).
        let t = ctx.alloc_for_overwrite(DType::F32, &[2000]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap().len(), 2000);
        assert!(t.as_slice::<f32>().unwrap().iter().all(|&v| v == 7.0));
        ctx.release(t);
        // `alloc` still zeroes a recycled buffer.
        let t = ctx.alloc(DType::F32, &[1800]).unwrap();
        assert!(t.as_slice::<f32>().unwrap().iter().all(|&v| v == 0.0));
    }
}
