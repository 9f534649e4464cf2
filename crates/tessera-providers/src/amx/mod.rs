//! The tile provider: matrix products on the CPU's matrix unit (Intel AMX
//! today; the same driver will take Apple's SME kernels).
//!
//! It claims MatMul, Gemm, `tessera:FusedMatMul` and Conv (group 1) whose
//! weight is a constant fp32 tensor (packed once, at session creation, into the
//! kernel's layout), and the integer products (MatMulInteger,
//! `tessera:FusedMatMulInteger`, QLinearMatMul, ConvInteger and QLinearConv,
//! grouped ones group by group, depthwise ones excepted) with a constant
//! 8-bit weight. What
//! runs on the tiles follows the session's [`Precision`]:
//!
//! * fp32 (the default): MatMul, Gemm and FusedMatMul as bf16x6 split
//!   products (fp32-class error) unless they are known to multiply fewer
//!   than [`FP32_TILE_MIN_ROWS`] rows, where the CPU provider's fp32 vector
//!   kernels measured faster; convolutions stay on the vector kernels;
//! * fp32-tiles: every fp32 product, convolutions included, as bf16x6;
//! * bf16 / auto: one bf16 product, fp32 accumulation;
//! * int8: fp32 products quantized to int8 (weights per column, activations
//!   per row); integer models' products always run on int8 tiles.
//!
//! Under bf16, auto and int8 it also claims `tessera:Attention` and the
//! ONNX `Attention` operator (without a soft cap or score output), whose
//! two per-head products (scores, weighted sum) then run on bf16 tiles.
//!
//! On a CPU without AMX but with the AVX-512 BF16 and VNNI dot products
//! (AMD Zen 4 and 5), the same driver runs on those ([`TileIsa::Avx512Dot`])
//! under the name `avx512-dot`, with two differences from the list above:
//! the fp32 precisions leave float products to the CPU provider (a
//! six-product split costs three fp32 FMAs' work there), and bf16 products
//! (float products under bf16 and auto, attention) run only where the
//! core's measured `vdpbf16ps` rate is at least 1.25x its fp32 FMA rate
//! ([`avx512::bf16_refusal`]); integer and int8 products always do.

mod ops;
pub mod sme;

use tessera_core::{DType, Graph, Node, Result};
use tessera_kernels::gemm::ukernel::avx512;
use tessera_kernels::gemm::{Split, TileIsa};

use crate::cpu::provider::compile_partition;
use crate::precision::Precision;
use crate::provider::{claim_each, CompiledPartition, ExecutionProvider, NodeVerdict, Subgraph};

/// What the provider does with one claimed node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum TilePlan {
    /// fp32 product on bf16 tiles with this split.
    Float(Split),
    /// fp32 product as a dynamically quantized int8 product.
    DynamicInt8,
    /// An integer model's MatMulInteger, QLinearMatMul, ConvInteger or
    /// QLinearConv.
    Integer,
    /// `tessera:Attention` or ONNX `Attention` with its per-head products
    /// on bf16 tiles.
    Attention,
}

/// The fewest output channels per group for a grouped integer convolution
/// on the tiles (see the claim).
const MIN_GROUP_COLUMNS: usize = 16;

/// Fewest rows of A for which the default fp32 precision runs a product on
/// bf16x6 tiles. Measured on the 2-core AMX Xeon, weights from DRAM, 2
/// threads (`tessera bench-gemm --kernels fp32-vector,amx-bf16x6 --cold`,
/// `benches/results/2026-11-27-split-kernels/gemm_rows.txt`), at K and N of
/// 768 and 3072: the tiles ran 1.15-1.3x the vector path's rate at 4 rows,
/// 1.2-1.9x at 8, 1.4-2.7x from 16 to 512, but 0.85x at 2 rows and
/// 0.8-1.1x at 1, where both only stream the weight and the split weight is
/// 1.5x the bytes.
pub const FP32_TILE_MIN_ROWS: usize = 4;

pub struct AmxProvider {
    precision: Precision,
    isa: TileIsa,
    /// Why bf16 products (float products under bf16 and auto, attention)
    /// stay off this ISA: on the AVX-512 dot products, where the core's
    /// measured bf16 rate is below 1.25x its fp32 FMA rate. None: they run
    /// here.
    bf16_refusal: Option<String>,
}

impl AmxProvider {
    /// The provider on this machine's matrix unit (AMX), else on its
    /// AVX-512 BF16/VNNI dot products, or why neither is there.
    pub fn new(precision: Precision) -> std::result::Result<AmxProvider, String> {
        Self::new_without(precision, &[])
    }

    /// As [`AmxProvider::new`], leaving out the hardware `without` names
    /// ("amx", "avx512": a session's own switches, on top of the
    /// process-wide ones), so that `--disable amx` on an AMX machine falls
    /// back to the dot products and `--disable amx,avx512` to the CPU
    /// provider's fp32 kernels.
    pub fn new_without(precision: Precision, without: &[String]) -> std::result::Result<AmxProvider, String> {
        let off = |name: &str| without.iter().any(|d| d.eq_ignore_ascii_case(name));
        let amx_why = if off("amx") {
            "disabled by the session options".to_string()
        } else {
            match TileIsa::Amx.enabled() {
                Ok(()) => return Ok(Self::with_isa(precision, TileIsa::Amx)),
                Err(why) => why,
            }
        };
        let dot_why = if off("avx512") {
            "disabled by the session options".to_string()
        } else {
            match TileIsa::Avx512Dot.enabled() {
                Ok(()) => {
                    let mut p = Self::with_isa(precision, TileIsa::Avx512Dot);
                    p.bf16_refusal = avx512::bf16_refusal();
                    return Ok(p);
                }
                Err(why) => why,
            }
        };
        Err(format!("{amx_why}; avx512-dot: {dot_why}"))
    }

    /// The provider's name in placements: the hardware its products run on
    /// (tests' emulated tiles stand in for AMX).
    fn label(&self) -> &'static str {
        match self.isa {
            TileIsa::Avx512Dot => "avx512-dot",
            TileIsa::Amx | TileIsa::Emulated => "amx",
        }
    }

    /// The ISA the provider's products run on.
    pub fn isa(&self) -> TileIsa {
        self.isa
    }

    /// The provider on a given ISA: tests run it on [`TileIsa::Emulated`]
    /// to check the graph-level logic on machines without AMX.
    pub fn with_isa(precision: Precision, isa: TileIsa) -> AmxProvider {
        AmxProvider { precision, isa, bf16_refusal: None }
    }

    /// As [`AmxProvider::with_isa`], with bf16 products refused for `why`
    /// (what [`AmxProvider::new`] does on a core whose bf16 dot products
    /// measured below 1.25x its fp32 FMA rate).
    pub fn with_bf16_refused(precision: Precision, isa: TileIsa, why: String) -> AmxProvider {
        AmxProvider { precision, isa, bf16_refusal: Some(why) }
    }

    /// The plan for an fp32 product of `rows` rows of A (None: not known
    /// before run time).
    fn float_plan(&self, rows: Option<usize>) -> std::result::Result<TilePlan, String> {
        match self.precision {
            // A bf16 dot product does two fp32 FMAs' work per instruction,
            // so the six products of a bf16x6 split cost three fp32 FMAs:
            // the fp32 vector kernels are faster (and round less often).
            Precision::Fp32 | Precision::Fp32Tiles if self.isa == TileIsa::Avx512Dot => Err(format!(
                "{} precision on AVX-512 dot products: a bf16x6 split is about 3x the fp32 vector kernels' work",
                self.precision
            )),
            Precision::Bf16 | Precision::Auto => match &self.bf16_refusal {
                Some(why) => Err(format!("{} precision on {}: {why}", self.precision, self.label())),
                None => Ok(TilePlan::Float(Split::Bf16)),
            },
            Precision::Int8 => Ok(TilePlan::DynamicInt8),
            Precision::Fp32Tiles => Ok(TilePlan::Float(Split::Bf16x6)),
            Precision::Fp32 => match rows {
                Some(m) if m < FP32_TILE_MIN_ROWS => Err(format!(
                    "fp32 precision: {m} row(s) of A, fewer than {FP32_TILE_MIN_ROWS}, where the fp32 vector \
                     kernels measured faster than bf16x6 tiles"
                )),
                _ => Ok(TilePlan::Float(Split::Bf16x6)),
            },
        }
    }

    /// The plan for `node`, or why the provider declines it.
    pub(crate) fn plan(&self, graph: &Graph, node: &Node) -> std::result::Result<TilePlan, String> {
        let domain_ok = node.domain.is_empty() || node.domain == "ai.onnx";
        let weight = |i: usize| -> std::result::Result<DType, String> {
            let name = node.input(i).ok_or("no weight input")?;
            let t = graph.initializers.get(name).ok_or_else(|| format!("weight '{name}' is not a constant"))?;
            if t.rank() != 2 {
                return Err(format!("weight '{name}' has rank {}, tiles take 2-D weights", t.rank()));
            }
            Ok(t.dtype())
        };
        let float_weight = || match weight(1)? {
            DType::F32 => Ok(()),
            d => Err(format!("{d} weight (tiles take fp32 or 8-bit weights)")),
        };
        // A product of an 8-bit constant weight (input `w`, zero point `zp`).
        let int_product = |w: usize, zp: usize| {
            match weight(w)? {
                DType::I8 | DType::U8 => {}
                d => return Err(format!("{d} weight")),
            }
            zero_point_const(graph, node, zp)?;
            Ok(TilePlan::Integer)
        };
        // Rows of A a product multiplies, where its shape is known: all
        // dimensions but the last (MatMul's batch dimensions are rows too,
        // the weight being 2-D).
        let rows = || -> Option<usize> {
            let shape = graph.concrete_shape_of(node.input(0)?)?;
            Some(shape.iter().rev().skip(1).product())
        };
        match (node.domain.as_str(), node.op_type.as_str()) {
            (_, "MatMul") if domain_ok => {
                float_weight()?;
                self.float_plan(rows())
            }
            (_, "Gemm") if domain_ok => {
                if node.attr_int_or("transA", 0).unwrap_or(1) != 0 {
                    return Err("Gemm with transA".into());
                }
                float_weight()?;
                self.float_plan(rows())
            }
            ("tessera", "FusedMatMul") => {
                float_weight()?;
                self.float_plan(rows())
            }
            ("tessera", tessera_core::passes::fuse_mlp::FUSED_MLP) => {
                float_weight()?;
                if weight(3)? != DType::F32 {
                    return Err(format!("{} second weight (a FusedMlp's weights are fp32)", weight(3)?));
                }
                let dims = |i: usize| node.input(i).and_then(|w| graph.initializers.get(w)).map(|t| t.shape().to_vec());
                match (dims(1).as_deref(), dims(3).as_deref()) {
                    (Some(&[_, hidden]), Some(&[k2, _])) if hidden == k2 => self.float_plan(rows()),
                    (a, b) => Err(format!("weights {a:?} and {b:?} do not chain")),
                }
            }
            (d, op @ ("Conv" | "FusedConv")) if (op == "Conv" && domain_ok) || d == "tessera" => {
                let name = node.input(1).ok_or("no weight input")?;
                let w = graph.initializers.get(name).ok_or_else(|| format!("weight '{name}' is not a constant"))?;
                if w.dtype() != DType::F32 || !(3..=5).contains(&w.rank()) {
                    return Err(format!("{} weight of rank {} (tiles take fp32, rank 3 to 5)", w.dtype(), w.rank()));
                }
                if node.attr_int_or("group", 1).unwrap_or(0) != 1 {
                    return Err("grouped or depthwise convolution stays on the vector units".into());
                }
                if node.input(2).is_some_and(|b| !graph.initializers.contains_key(b)) {
                    return Err("bias is not a constant".into());
                }
                if self.precision == Precision::Auto {
                    // `auto` takes the tiles only where they measured faster.
                    // The onnx light CNNs on the 2-core Xeon, 2 threads, bf16
                    // tile convolutions against the fp32 vector path
                    // (`benches/results/2026-11-27-split-kernels/`
                    // `cnn_fp32_vector_vs_bf16_after_blocks.txt`): ResNet-50,
                    // Inception v1 and VGG-19 faster (72 vs 84, 67 vs 76, 204
                    // vs 296 ms), SqueezeNet level (15.7 vs 15.1), DenseNet-121
                    // much slower (155 vs 103): mixed, so not yet.
                    return Err("precision auto: convolutions measured faster on the fp32 vector path".into());
                }
                if self.precision == Precision::Fp32 {
                    // Slower still in six products than in one (see above).
                    return Err("fp32 precision: convolutions stay on the fp32 vector kernels".into());
                }
                match self.float_plan(None)? {
                    TilePlan::DynamicInt8 => Err("precision int8: convolution on int8 tiles is not implemented".into()),
                    plan => Ok(plan),
                }
            }
            (d, "Attention") if d == "tessera" || domain_ok => match self.precision {
                // The scores and the weighted sum are the graph's two
                // MatMuls: under bf16 and int8 they take bf16 tiles like
                // the other float products (int8 quantizes only weighted
                // products; attention has no weights). The ONNX operator
                // declines what the tile path does not take.
                Precision::Bf16 | Precision::Auto | Precision::Int8 if self.bf16_refusal.is_some() => Err(format!(
                    "attention's products are bf16 on {}: {}",
                    self.label(),
                    self.bf16_refusal.as_deref().unwrap_or_default()
                )),
                Precision::Bf16 | Precision::Auto | Precision::Int8 => match d == "tessera" {
                    true => Ok(TilePlan::Attention),
                    false => {
                        crate::cpu::ops::nn::attention::tile_path_refusal(node).map_or(Ok(TilePlan::Attention), Err)
                    }
                },
                Precision::Fp32 | Precision::Fp32Tiles => {
                    Err("fp32 precision: attention stays on the fp32 vector units".into())
                }
            },
            ("tessera", "FusedMatMulInteger") => int_product(1, 3),
            (_, "MatMulInteger") if domain_ok => int_product(1, 3),
            (_, "QLinearMatMul") if domain_ok => int_product(3, 5),
            (_, op @ ("ConvInteger" | "QLinearConv")) if domain_ok => {
                let (w, zp) = if op == "ConvInteger" { (1, 3) } else { (3, 5) };
                let name = node.input(w).ok_or("no weight input")?;
                let t = graph.initializers.get(name).ok_or_else(|| format!("weight '{name}' is not a constant"))?;
                if !matches!(t.dtype(), DType::I8 | DType::U8) || !(3..=5).contains(&t.rank()) {
                    return Err(format!("{} weight of rank {} (tiles take 8-bit, rank 3 to 5)", t.dtype(), t.rank()));
                }
                // A grouped convolution runs group by group; a depthwise one
                // (one input channel per group: no product to speak of) on
                // the vector units.
                let groups = node.attr_int_or("group", 1).unwrap_or(0);
                if groups != 1 && t.shape()[1] == 1 {
                    return Err("depthwise convolution stays on the vector units".into());
                }
                if t.numel() == 0 {
                    return Err("an empty weight: nothing to multiply".into());
                }
                // Each group's weight is packed in whole 32-column panels of
                // 64-byte rows: small groups would pack mostly padding (and a
                // file's `group` could multiply that by millions) and run one
                // small product after another, and a weight of few products
                // per output would pack mostly padding too. So: at least 16
                // columns a group, and at most 16x the file's bytes (plus
                // 1 MiB) once packed.
                let (m, ck) = (t.shape()[0], t.numel() / t.shape()[0].max(1));
                let per_group = m / groups.max(1) as usize;
                let packed = (groups.max(1) as usize)
                    .saturating_mul(ck.next_multiple_of(64))
                    .saturating_mul(per_group.next_multiple_of(32));
                let inflated = packed > t.numel().saturating_mul(16) + (1 << 20);
                if (groups > 1 && per_group < MIN_GROUP_COLUMNS) || inflated {
                    return Err(format!(
                        "groups of {per_group} outputs by {ck} products stay on the vector units \
                         (tiles from {MIN_GROUP_COLUMNS} columns a group and at most 16x the weight's bytes, \
                         plus 1 MiB, packed)"
                    ));
                }
                zero_point_const(graph, node, zp)?;
                Ok(TilePlan::Integer)
            }
            _ => Err("not a matrix product the tile unit runs".into()),
        }
    }
}

/// A weight zero point the tiles fold in at packing time: absent, or a
/// constant of rank 0 or 1.
fn zero_point_const(graph: &Graph, node: &Node, i: usize) -> std::result::Result<(), String> {
    if let Some(z) = node.input(i) {
        let t = graph.initializers.get(z).ok_or("weight zero point is not a constant")?;
        if t.rank() > 1 {
            return Err("weight zero point of rank > 1".into());
        }
    }
    Ok(())
}

impl ExecutionProvider for AmxProvider {
    fn name(&self) -> &str {
        self.label()
    }

    fn claim(&self, graph: &Graph, taken: &[bool]) -> Vec<NodeVerdict> {
        claim_each(graph, taken, |n| self.plan(graph, n).map(|_| ()))
    }

    fn compile(&self, graph: &Graph, sub: &Subgraph) -> Result<Box<dyn CompiledPartition>> {
        let build = |node: &Node, constant: &dyn Fn(&str) -> Option<tessera_core::Tensor>| {
            let plan = self.plan(graph, node).map_err(|r| tessera_core::Error::node(node, r))?;
            let opset = graph.opsets.get(node.domain.as_str()).copied().unwrap_or(1);
            ops::build(node, plan, self.isa, &crate::cpu::registry::BuildCtx { opset, constant })
        };
        Ok(Box::new(compile_partition(self.label(), graph, sub, &build)?))
    }
}

#[cfg(test)]
mod tests;
