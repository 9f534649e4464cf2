//! The Accelerate provider: fp32 matrix products through a BLAS `sgemm`, on
//! macOS Apple's Accelerate framework. On M1-M3 Accelerate's sgemm runs on
//! the matrix coprocessor (AMX), which Apple exposes only through its
//! libraries. On M4 and later the same call is Apple's to map onto SME
//! (not verified here: no Mac has run this code). The session's `auto`
//! puts this provider first for fp32 products on macOS.
//!
//! It claims fp32 MatMul (any rank, ONNX batch broadcasting), Gemm (transA,
//! transB, alpha, beta, C broadcast to the output), `tessera:FusedMatMul`
//! (bias, activation, residual) and Conv of group 1 (im2col, then one sgemm
//! per block of output positions). Operands may be constants or computed
//! values: BLAS needs no packed weights. Products are fp32 whatever the
//! session's precision (fp32 is at least as accurate as every setting).
//!
//! The BLAS call sits behind [`Sgemm`]: `AccelerateBlas` (macOS only),
//! [`PortableSgemm`] (the kernels' fp32 GEMM) elsewhere, which the tests use
//! to check all the graph-level logic on Linux. The provider runs its ops
//! with the CPU provider's partition executor.

mod blas;
#[cfg(target_os = "macos")]
mod ffi;
mod ops;

use std::sync::Arc;

pub use blas::{PortableSgemm, Sgemm, Transpose};
#[cfg(target_os = "macos")]
pub use ffi::AccelerateBlas;

use tessera_core::{DType, Graph, Node, Result};

use crate::cpu::provider::compile_partition;
use crate::provider::{claim_each, CompiledPartition, ExecutionProvider, NodeVerdict, Subgraph};

pub struct AccelerateProvider {
    blas: Arc<dyn Sgemm>,
}

impl AccelerateProvider {
    /// The provider on Accelerate, or why there is none: Accelerate exists
    /// only on macOS, and the user may have switched it off
    /// (`--disable accelerate` / `TESSERA_DISABLE=accelerate`).
    pub fn new() -> std::result::Result<AccelerateProvider, String> {
        #[cfg(target_os = "macos")]
        {
            if tessera_hw::disabled_by_user("accelerate") {
                return Err("disabled by the user (--disable accelerate / TESSERA_DISABLE)".into());
            }
            Ok(Self::with_blas(Arc::new(AccelerateBlas)))
        }
        #[cfg(not(target_os = "macos"))]
        {
            Err("Accelerate is macOS-only".into())
        }
    }

    /// The provider on a given sgemm: tests run it on [`PortableSgemm`].
    pub fn with_blas(blas: Arc<dyn Sgemm>) -> AccelerateProvider {
        AccelerateProvider { blas }
    }

    /// What runs the products ("accelerate" or "portable").
    pub fn blas_name(&self) -> &'static str {
        self.blas.name()
    }

    /// Why the provider declines `node`, or `Ok` when it runs it.
    pub(crate) fn check(&self, graph: &Graph, node: &Node) -> std::result::Result<(), String> {
        let domain_ok = node.domain.is_empty() || node.domain == "ai.onnx";
        match (node.domain.as_str(), node.op_type.as_str()) {
            (_, "MatMul") if domain_ok => fp32_inputs(graph, node, &[0, 1]),
            (_, "Gemm") if domain_ok => fp32_inputs(graph, node, &[0, 1, 2]),
            ("tessera", "FusedMatMul") => {
                let a = node.attr_string("activation").map_err(|e| e.to_string())?.unwrap_or_default();
                if tessera_kernels::gemm::Activation::parse(&a).is_none() {
                    return Err(format!("unknown activation '{a}'"));
                }
                fp32_inputs(graph, node, &[0, 1, 2, 3])
            }
            ("tessera", tessera_core::passes::fuse_mlp::FUSED_MLP) => {
                // Its two FusedMatMuls, one after the other.
                let (first, second) = tessera_core::passes::fuse_mlp::split_mlp(node);
                self.check(graph, &first)?;
                let a = second.attr_string("activation").map_err(|e| e.to_string())?.unwrap_or_default();
                if tessera_kernels::gemm::Activation::parse(&a).is_none() {
                    return Err(format!("unknown activation_out '{a}'"));
                }
                fp32_inputs(graph, node, &[3, 4, 5])
            }
            (_, "Conv") if domain_ok => {
                match node.attr_int_or("group", 1) {
                    Ok(1) => {}
                    Ok(g) => return Err(format!("grouped or depthwise convolution (group {g}) stays on the CPU")),
                    Err(e) => return Err(e.to_string()),
                }
                if let Some(rank) = node.input(1).and_then(|w| graph.shape_of(w).map(|s| s.len())) {
                    if !(3..=5).contains(&rank) {
                        return Err(format!("weight of rank {rank} (1 to 3 spatial dimensions are supported)"));
                    }
                }
                fp32_inputs(graph, node, &[0, 1, 2])
            }
            (d, op) => {
                let d = if d.is_empty() { "ai.onnx" } else { d };
                Err(format!("{d}:{op} is not a matrix product Accelerate runs"))
            }
        }
    }
}

/// `Ok` when every present input among `idx` is known to be fp32: the BLAS
/// path is fp32 only, and a claim must not depend on types seen at run time.
fn fp32_inputs(graph: &Graph, node: &Node, idx: &[usize]) -> std::result::Result<(), String> {
    for &i in idx {
        let Some(name) = node.input(i) else { continue };
        match graph.dtype_of(name) {
            Some(DType::F32) => {}
            Some(d) => return Err(format!("input '{name}' is {d} (Accelerate's sgemm takes fp32)")),
            None => return Err(format!("the type of input '{name}' is not known")),
        }
    }
    Ok(())
}

impl ExecutionProvider for AccelerateProvider {
    fn name(&self) -> &str {
        "accelerate"
    }

    fn claim(&self, graph: &Graph, taken: &[bool]) -> Vec<NodeVerdict> {
        claim_each(graph, taken, |n| self.check(graph, n))
    }

    fn compile(&self, graph: &Graph, sub: &Subgraph) -> Result<Box<dyn CompiledPartition>> {
        let build = |node: &Node, _constant: &dyn Fn(&str) -> Option<tessera_core::Tensor>| {
            self.check(graph, node).map_err(|r| tessera_core::Error::node(node, r))?;
            ops::build(node, self.blas.clone())
        };
        Ok(Box::new(compile_partition("accelerate", graph, sub, &build)?))
    }
}

#[cfg(test)]
mod tests;
