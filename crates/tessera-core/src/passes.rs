//! Graph optimizer passes. Each pass is a function `&mut Graph -> count`
//! with its own tests; [`optimize`] runs them in a fixed order.

pub mod dce;
pub mod fold;
pub mod fuse_attention;
pub mod fuse_conv;
pub mod fuse_gelu;
pub mod fuse_layernorm;
pub mod fuse_matmul;
pub mod fuse_mlp;
pub mod fuse_qdq;
pub mod merge_qkv;
mod pattern;

use crate::{Graph, Node, Result, Tensor};

/// Runs one node on constant inputs (provided by the layer that owns the
/// kernels, so that folding uses exactly the kernels inference uses).
pub type Evaluator<'a> = dyn Fn(&Graph, &Node, &[Option<Tensor>]) -> Result<Vec<Tensor>> + 'a;

/// What the optimizer changed, for `tessera info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub folded: usize,
    pub dead_removed: usize,
    pub layernorm_fused: usize,
    pub gelu_fused: usize,
    pub matmul_bias_fused: usize,
    /// Dequantized integer products (`MatMulInteger -> Cast -> Mul [-> Add]`).
    pub integer_matmul_fused: usize,
    /// Products of dequantized 8-bit operands (QDQ models) turned into
    /// integer products.
    pub qdq_matmul_fused: usize,
    /// QDQ convolutions (with the quantization of their output) turned
    /// into `QLinearConv`.
    pub qdq_conv_fused: usize,
    /// Integer products that took the quantize-dequantize round trip of
    /// their output (and the bias after it) into their epilogue.
    pub requantize_fused: usize,
    pub epilogue_fused: usize,
    pub attention_fused: usize,
    /// Attention blocks whose Q, K and V projections became one GEMM.
    pub qkv_merged: usize,
    /// BatchNormalizations, and per-channel scales and shifts, folded into
    /// their Conv's weights.
    pub batch_norm_folded: usize,
    /// Convs that took their residual add and activation (`tessera:FusedConv`).
    pub conv_fused: usize,
    /// BatchNormalizations that took the activation after them
    /// (`tessera:FusedBatchNorm`).
    pub batch_norm_act_fused: usize,
    /// Pairs of products in a row (`tessera:FusedMlp`), whose hidden layer a
    /// provider may hand from one to the other in its own layout.
    pub mlp_fused: usize,
}

impl std::fmt::Display for PassReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "constant-folded {} nodes, removed {} dead nodes, fused {} LayerNorm, {} GELU, {} attention, {} MatMul+bias, {} MatMulInteger+dequantization, {} QDQ MatMuls, {} QDQ Convs, {} requantized outputs, {} epilogues, {} Q/K/V merges, folded {} BatchNormalization/channel affine, fused {} Conv epilogues, {} BatchNormalization+activation, {} two-layer MLPs",
            self.folded,
            self.dead_removed,
            self.layernorm_fused,
            self.gelu_fused,
            self.attention_fused,
            self.matmul_bias_fused,
            self.integer_matmul_fused,
            self.qdq_matmul_fused,
            self.qdq_conv_fused,
            self.requantize_fused,
            self.epilogue_fused,
            self.qkv_merged,
            self.batch_norm_folded,
            self.conv_fused,
            self.batch_norm_act_fused,
            self.mlp_fused
        )
    }
}

pub fn optimize(graph: &mut Graph, eval: &Evaluator) -> Result<PassReport> {
    optimize_with(graph, eval, true)
}

/// [`optimize`], optionally without the MatMul and attention fusions, whose
/// fused nodes (`tessera:FusedMatMul`, `tessera:FusedMatMulInteger`,
/// `tessera:FusedMlp`, `tessera:Attention`) only Tessera's CPU-side providers run: a session that
/// places regions on another runtime (Core ML) keeps plain ONNX ops.
pub fn optimize_with(graph: &mut Graph, eval: &Evaluator, fuse_matmul_ops: bool) -> Result<PassReport> {
    // Weights of QDQ products stay 8-bit for `fuse_qdq` (folded after it
    // where it leaves them).
    let keep: &dyn Fn(&Graph, &Node) -> bool =
        if fuse_matmul_ops { &fuse_qdq::keeps_quantized_weight } else { &|_, _| false };
    let mut r = PassReport { folded: fold::fold_constants_except(graph, eval, keep)?, ..Default::default() };
    r.dead_removed += dce::eliminate_dead_nodes(graph);
    // The fusions read element types and shapes from `value_info`: infer
    // them once, on the plain ONNX graph (before any fused node hides the
    // shapes behind it). A graph whose types cannot be inferred keeps what
    // its file declared, and the fusions that need more decline.
    let _ = crate::shape_inference::infer(graph);
    r.layernorm_fused = fuse_layernorm::fuse_layer_norm(graph);
    r.gelu_fused = fuse_gelu::fuse_gelu(graph);
    if fuse_matmul_ops {
        r.attention_fused = fuse_attention::fuse_attention(graph);
        r.qdq_matmul_fused = fuse_qdq::fuse_qdq_matmul(graph);
        r.qdq_conv_fused = fuse_qdq::fuse_qdq_conv(graph);
        // The products' weight dequantizations are dead now: removed, not
        // evaluated into f32 weights only to be dropped.
        r.dead_removed += dce::eliminate_dead_nodes(graph);
        r.folded += fold::fold_constants(graph, eval)?;
        r.matmul_bias_fused = fuse_matmul::fuse_matmul_bias(graph);
        r.integer_matmul_fused = fuse_matmul::fuse_matmul_integer(graph);
        r.requantize_fused = fuse_qdq::fuse_requantized_outputs(graph);
        r.epilogue_fused = fuse_matmul::fuse_epilogues(graph);
        r.qkv_merged = merge_qkv::merge_qkv_projections(graph);
        r.batch_norm_folded = fuse_conv::fold_batch_norm(graph);
        r.batch_norm_folded += fuse_conv::fold_channel_affine(graph);
        r.conv_fused = fuse_conv::fuse_conv_epilogues(graph);
        r.batch_norm_act_fused = fuse_conv::fuse_batch_norm_activation(graph);
        r.mlp_fused = fuse_mlp::fuse_mlp(graph);
    }
    r.dead_removed += dce::eliminate_dead_nodes(graph);
    graph.toposort()?;
    Ok(r)
}
