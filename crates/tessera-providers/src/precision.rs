//! The precision policy: what a session may trade for speed.

/// How fp32 models' matrix products may be computed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Precision {
    /// fp32-accurate (the default): products with a constant weight on
    /// bf16x6 tiles where the machine has them and they measured faster
    /// (see [`crate::amx::FP32_TILE_MIN_ROWS`]), everything else on the fp32
    /// vector kernels.
    #[default]
    Fp32,
    /// fp32-accurate on bf16 tiles wherever the tiles take the op: each
    /// operand split into three bf16 parts, six products, error within a
    /// few times an fp32 GEMM's (convolutions included, which the default
    /// leaves on the vector kernels).
    Fp32Tiles,
    /// MatMul/Gemm/Conv on bf16 tiles with fp32 accumulation.
    Bf16,
    /// fp32 MatMul/Gemm run as int8 products (weights quantized per column
    /// at session creation, activations per row at run time).
    Int8,
    /// The fastest kind of tile the machine has for each op, bf16 or better.
    Auto,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "fp32" => Precision::Fp32,
            "fp32-tiles" => Precision::Fp32Tiles,
            "bf16" => Precision::Bf16,
            "int8" => Precision::Int8,
            "auto" => Precision::Auto,
            o => return Err(format!("unknown precision '{o}' (fp32, fp32-tiles, bf16, int8, auto)")),
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp32Tiles => "fp32-tiles",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Auto => "auto",
        })
    }
}
