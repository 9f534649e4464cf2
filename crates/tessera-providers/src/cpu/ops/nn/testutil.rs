//! Test helpers: build and run one node with the nn, quant and fused ops.

use tessera_core::{Node, Result, Tensor};

use crate::cpu::registry::{BuildCtx, OpRegistry, RunCtx};

pub(crate) fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    super::register(&mut r);
    crate::cpu::ops::quant::register(&mut r);
    crate::cpu::ops::quant_contrib::register(&mut r);
    crate::cpu::ops::fused::register(&mut r);
    r
}

/// Runs `node` with `inputs`; the inputs flagged in `constant` are also
/// visible to the builder as constants (to exercise prepacking).
pub(crate) fn run_node_const(
    node: &Node,
    opset: i64,
    inputs: &[Option<Tensor>],
    constant: &[bool],
) -> Result<Vec<Tensor>> {
    let r = registry();
    let b = r.get(&node.domain, &node.op_type).unwrap_or_else(|| panic!("no builder for {}", node.op_type));
    let lookup = |name: &str| {
        node.inputs
            .iter()
            .position(|n| n == name)
            .filter(|&i| constant.get(i).copied().unwrap_or(false))
            .and_then(|i| inputs.get(i).cloned().flatten())
    };
    let op = b(node, &BuildCtx { opset, constant: &lookup })?;
    let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
    op.run(&refs, &mut RunCtx::default())
}

pub(crate) fn run_node(node: &Node, opset: i64, inputs: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
    run_node_const(node, opset, inputs, &[])
}

pub(crate) fn t_f32(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_slice(shape, data).unwrap()
}
