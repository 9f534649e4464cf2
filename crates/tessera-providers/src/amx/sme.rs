//! The matrix-unit provider on Arm SME (Apple M4 and later): MatMul, Gemm
//! and `tessera:FusedMatMul` with a constant fp32 weight, packed once for
//! the SME outer-product kernels, with the epilogue fused into the store.
//!
//! Precision: fp32 products run on `fmopa` with fp32 operands (as accurate
//! as the vector path, so they are claimed under the default precision);
//! `bf16` / `auto` run on `bfmopa` (bf16 operands, fp32 accumulation);
//! `int8` is declined (no SME integer kernel yet). Convolutions and integer
//! products stay with the other providers.
//!
//! Verification rung: the kernels and this provider run under
//! `qemu-aarch64 -cpu max,sme512=on` (512-bit streaming vectors, as on the
//! M4); they have not run on Apple hardware here.

use tessera_core::{Graph, Node, Result};
use tessera_kernels::gemm::{Split, TileIsa};

use super::{ops, AmxProvider, TilePlan};
use crate::cpu::provider::compile_partition;
use crate::precision::Precision;
use crate::provider::{claim_each, CompiledPartition, ExecutionProvider, NodeVerdict, Subgraph};

pub struct SmeProvider {
    precision: Precision,
}

/// Why SME cannot run here, or None when it can.
pub fn sme_unavailable() -> Option<String> {
    #[cfg(target_arch = "aarch64")]
    {
        (!tessera_kernels::gemm::ukernel::sme::has_sme())
            .then(|| "CPU lacks FEAT_SME (Apple M4 and later have it)".to_string())
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        Some(format!("not an Arm CPU ({})", std::env::consts::ARCH))
    }
}

impl SmeProvider {
    pub fn new(precision: Precision) -> std::result::Result<SmeProvider, String> {
        if tessera_hw::disabled_by_user("sme") {
            return Err("disabled by the user (--disable sme / TESSERA_DISABLE)".into());
        }
        match sme_unavailable() {
            Some(why) => Err(why),
            None => Ok(SmeProvider { precision }),
        }
    }

    /// The provider without the hardware check: tests use it to check the
    /// claim logic on any machine.
    pub fn unchecked(precision: Precision) -> SmeProvider {
        SmeProvider { precision }
    }

    /// Whether `node` runs with bf16 operands, or why it is declined.
    pub(crate) fn plan(&self, graph: &Graph, node: &Node) -> std::result::Result<bool, String> {
        let bf16 = match self.precision {
            Precision::Fp32 | Precision::Fp32Tiles => false,
            Precision::Bf16 | Precision::Auto => true,
            Precision::Int8 => return Err("precision int8: no SME integer kernel yet".into()),
        };
        if !matches!(
            node.op_type.as_str(),
            "MatMul" | "Gemm" | "FusedMatMul" | tessera_core::passes::fuse_mlp::FUSED_MLP
        ) {
            return Err("not a matrix product the SME kernels run".into());
        }
        // The tile provider's checks on a constant 2-D fp32 weight apply
        // unchanged (its own precision rules aside).
        let checker = AmxProvider::with_isa(Precision::Bf16, TileIsa::Emulated);
        match checker.plan(graph, node)? {
            TilePlan::Float(Split::Bf16) => Ok(bf16),
            other => Err(format!("unexpected plan {other:?}")),
        }
    }
}

impl ExecutionProvider for SmeProvider {
    fn name(&self) -> &str {
        "sme"
    }

    fn claim(&self, graph: &Graph, taken: &[bool]) -> Vec<NodeVerdict> {
        claim_each(graph, taken, |n| self.plan(graph, n).map(|_| ()))
    }

    fn compile(&self, graph: &Graph, sub: &Subgraph) -> Result<Box<dyn CompiledPartition>> {
        let build = |node: &Node, constant: &dyn Fn(&str) -> Option<tessera_core::Tensor>| {
            let bf16 = self.plan(graph, node).map_err(|r| tessera_core::Error::node(node, r))?;
            ops::build_sme(node, bf16, constant)
        };
        Ok(Box::new(compile_partition("sme", graph, sub, &build)?))
    }
}
