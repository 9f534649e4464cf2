//! What the Neural Engine takes, as a rule table the partitioner and
//! `tessera info` read. Sources: Apple's "Deploying Transformers on the
//! Apple Neural Engine" (2022: channels-first layouts, ranks up to 4-5, fp16
//! only), and Core ML's documented behaviour that integer math and
//! operations with data-dependent shapes run on the CPU. Every verdict
//! carries the reason shown at a partition border.

use tessera_core::{Graph, Node};

use crate::convert::lowering_for;

/// Largest rank the Neural Engine takes.
pub const MAX_RANK: usize = 5;
/// Largest size of one dimension the Neural Engine takes (larger tensors
/// fall back to the CPU/GPU).
pub const MAX_DIM: usize = 16384;

/// Ops whose MIL lowering runs on the Neural Engine when its types and
/// shapes are within the limits above.
const ANE_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Exp",
    "Sqrt",
    "Abs",
    "Neg",
    "Reciprocal",
    "LeakyRelu",
    "Elu",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Gelu",
    "Softmax",
    "LayerNormalization",
    "BatchNormalization",
    "MatMul",
    "Gemm",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "Cast",
    "Identity",
    "Dropout",
    "Where",
    "Expand",
    "Tile",
    "Pad",
    "Gather",
    "Softplus",
    "Log",
    "Floor",
    "Ceil",
];

/// Ops that carry a region's cost: a region without one is not worth the
/// hop to Core ML.
pub const HEAVY_OPS: &[&str] = &["MatMul", "Gemm", "Conv"];

/// `Ok` when the node converts and its lowering suits the Neural Engine;
/// otherwise why not.
pub fn neural_engine_verdict(g: &Graph, n: &Node) -> Result<(), String> {
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Err(format!("'{}:{}' has no Core ML lowering", n.domain, n.op_type));
    }
    if lowering_for(&n.op_type).is_none() {
        return Err(format!("'{}' has no Core ML lowering", n.op_type));
    }
    if !ANE_OPS.contains(&n.op_type.as_str()) {
        return Err(format!("'{}' lowers to Core ML but runs on its CPU, not the Neural Engine", n.op_type));
    }
    for v in n.inputs.iter().chain(&n.outputs).filter(|s| !s.is_empty()) {
        let Some(shape) = g.concrete_shape_of(v) else {
            return Err(format!("'{v}' has no static shape (bind the model's dims with --dim)"));
        };
        if shape.len() > MAX_RANK {
            return Err(format!("'{v}' has rank {} (the Neural Engine takes up to {MAX_RANK})", shape.len()));
        }
        if let Some(&d) = shape.iter().find(|&&d| d > MAX_DIM) {
            // Embedding tables are read by a gather, not streamed through the engine.
            if !(n.op_type == "Gather" && g.initializers.contains_key(v)) {
                return Err(format!("'{v}' has a dimension of {d} (the Neural Engine takes up to {MAX_DIM})"));
            }
        }
    }
    for o in n.outputs.iter().filter(|s| !s.is_empty()) {
        match g.dtype_of(o) {
            Some(d) if d.is_float() => {}
            Some(tessera_core::DType::Bool) if matches!(n.op_type.as_str(), "Where" | "Identity") => {}
            Some(d) => return Err(format!("'{o}' is {d}: Core ML runs integer and boolean math on its CPU")),
            None => return Err(format!("'{o}' has no inferred type")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{DType, Dim, Tensor, ValueInfo};

    fn vi(name: &str, dt: DType, shape: &[usize]) -> ValueInfo {
        ValueInfo { name: name.into(), dtype: Some(dt), shape: Some(shape.iter().map(|&d| Dim::Known(d)).collect()) }
    }

    #[test]
    fn verdicts_name_their_reason() {
        let mut g = Graph::default();
        g.inputs.push(vi("x", DType::F32, &[1, 128, 384]));
        g.initializers.insert("w".into(), Tensor::zeros(DType::F32, &[384, 384]).unwrap());
        g.value_info.insert("y".into(), vi("y", DType::F32, &[1, 128, 384]));
        g.value_info.insert("i".into(), vi("i", DType::I64, &[3]));
        g.value_info.insert("big".into(), vi("big", DType::F32, &[1, 20000]));
        g.value_info.insert("r6".into(), vi("r6", DType::F32, &[1, 1, 1, 1, 1, 1]));
        g.value_info.insert(
            "d".into(),
            ValueInfo { name: "d".into(), dtype: Some(DType::F32), shape: Some(vec![Dim::Sym("seq".into())]) },
        );
        assert_eq!(neural_engine_verdict(&g, &Node::new("MatMul", "m", &["x", "w"], &["y"])), Ok(()));
        let why = |n: Node| neural_engine_verdict(&g, &n).unwrap_err();
        assert!(why(Node::new("NonZero", "n", &["x"], &["y"])).contains("no Core ML lowering"));
        assert!(why(Node::new("ArgMax", "a", &["x"], &["y"])).contains("CPU"));
        assert!(why(Node::new("Relu", "r", &["x"], &["i"])).contains("integer"));
        assert!(why(Node::new("Relu", "r", &["x"], &["big"])).contains("20000"));
        assert!(why(Node::new("Relu", "r", &["x"], &["r6"])).contains("rank 6"));
        assert!(why(Node::new("Relu", "r", &["x"], &["d"])).contains("static shape"));
        let mut custom = Node::new("FusedMatMul", "f", &["x", "w"], &["y"]);
        custom.domain = "tessera".into();
        assert!(why(custom).contains("tessera:FusedMatMul"));
    }
}
