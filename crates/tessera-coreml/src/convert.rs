//! ONNX IR (static, see [`crate::prepare`]) → one MIL function.
//!
//! Each ONNX node maps to one or a few MIL operations with the ONNX output
//! types; [`lowering_for`] is the table of what maps (the rule table in
//! [`crate::rules`] and the Core ML provider read it too). MIL has no int64,
//! so integer tensors become int32; with fp16 compute every float tensor
//! inside the function is fp16 and the function's float inputs and outputs
//! stay fp32 behind casts, as coremltools does.

use std::collections::{HashMap, HashSet};

use tessera_core::{DType, Error, Graph, Node, Result, Tensor};

use crate::mil::{broadcast_shapes, ConstData, FnBuilder, TType};
use crate::quantize::{self, WeightCompression};
use crate::spec::DataType;
use crate::state::KvState;

mod ane;
use ane::Layout;

/// Float precision inside the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    F16,
    F32,
}

impl Compute {
    pub fn dtype(self) -> DataType {
        match self {
            Compute::F16 => DataType::Float16,
            Compute::F32 => DataType::Float32,
        }
    }
}

/// The MIL operation(s) an ONNX op lowers to, or `None`.
pub fn lowering_for(op: &str) -> Option<&'static str> {
    Some(match op {
        "Add" => "add",
        "Sub" => "sub",
        "Mul" => "mul",
        "Div" => "real_div",
        "Pow" => "pow",
        "Max" => "maximum",
        "Min" => "minimum",
        "Sum" => "add",
        "LRN" => "local_response_norm",
        "Equal" => "equal",
        "Less" => "less",
        "LessOrEqual" => "less_equal",
        "Greater" => "greater",
        "GreaterOrEqual" => "greater_equal",
        "And" => "logical_and",
        "Or" => "logical_or",
        "Not" => "logical_not",
        "Where" => "select",
        "Relu" => "relu",
        "Sigmoid" => "sigmoid",
        "Tanh" => "tanh",
        "Erf" => "erf",
        "Exp" => "exp",
        "Log" => "log",
        "Sqrt" => "sqrt",
        "Abs" => "abs",
        "Neg" => "mul",
        "Reciprocal" => "real_div",
        "Floor" => "floor",
        "Ceil" => "ceil",
        "Sin" => "sin",
        "Cos" => "cos",
        "Softplus" => "softplus",
        "LeakyRelu" => "leaky_relu",
        "Elu" => "elu",
        "HardSigmoid" => "sigmoid_hard",
        "HardSwish" => "sigmoid_hard+mul",
        "Clip" => "clip",
        "Gelu" => "gelu",
        "Softmax" => "softmax",
        "LayerNormalization" => "layer_norm",
        "BatchNormalization" => "batch_norm",
        "MatMul" => "linear|matmul",
        "Gemm" => "linear|matmul",
        "Conv" => "conv",
        "MaxPool" => "max_pool",
        "AveragePool" => "avg_pool",
        "GlobalAveragePool" => "reduce_mean",
        "GlobalMaxPool" => "reduce_max",
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => "reshape",
        "Transpose" => "transpose",
        "Concat" => "concat",
        "Split" => "split",
        "Slice" => "slice_by_index",
        "Gather" => "gather",
        "ReduceMean" => "reduce_mean",
        "ReduceSum" => "reduce_sum",
        "ReduceMax" => "reduce_max",
        "ReduceMin" => "reduce_min",
        "ReduceProd" => "reduce_prod",
        "ReduceL2" => "reduce_l2_norm",
        "ArgMax" => "reduce_argmax",
        "ArgMin" => "reduce_argmin",
        "Cast" => "cast",
        "Identity" | "Dropout" => "identity",
        "Expand" => "tile",
        "Tile" => "tile",
        "Pad" => "pad",
        "CumSum" => "cumsum",
        _ => return None,
    })
}

/// Options of one conversion.
#[derive(Clone, Debug)]
pub struct FunctionOptions {
    /// The MIL opset of the function ("CoreML6" for iOS 16 / macOS 13).
    pub opset: &'static str,
    pub compute: Compute,
    pub compression: Option<WeightCompression>,
    /// KV caches kept in Core ML state (graph preparation bound each past
    /// to the state's capacity minus the new entries).
    pub states: Vec<KvState>,
    /// Sequence models in the Neural Engine's channels-first layout (see
    /// `convert/ane.rs`).
    pub ane_layout: bool,
}

/// MIL type of an ONNX element type.
fn mil_dtype(dt: DType, compute: Compute) -> Result<DataType> {
    Ok(match dt {
        DType::F32 | DType::F16 | DType::F64 | DType::BF16 => compute.dtype(),
        DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 | DType::U32 => DataType::Int32,
        DType::Bool => DataType::Bool,
        DType::U64 => return Err(Error::Unsupported("uint64 tensors have no Core ML type".into())),
    })
}

/// The name of a MIL `cast` dtype.
fn cast_name(dt: DataType) -> &'static str {
    match dt {
        DataType::Float16 => "fp16",
        DataType::Float32 => "fp32",
        DataType::Int32 => "int32",
        DataType::Bool => "bool",
        _ => "fp32",
    }
}

/// Interface (`ArrayFeatureType`) element type of an I/O value.
pub fn io_dtype(dt: DType) -> Result<DataType> {
    Ok(match dt {
        DType::F32 | DType::F16 | DType::F64 | DType::BF16 => DataType::Float32,
        DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 | DType::U32 => DataType::Int32,
        other => return Err(Error::Unsupported(format!("{other} model inputs/outputs have no Core ML array type"))),
    })
}

/// The converted function and its interface.
pub struct ConvertedFunction {
    pub function: crate::spec::Function,
    /// (name, interface dtype, shape) of the inputs and outputs.
    pub inputs: Vec<(String, DataType, Vec<usize>)>,
    pub outputs: Vec<(String, DataType, Vec<usize>)>,
    /// (name, shape) of the fp16 states.
    pub states: Vec<(String, Vec<usize>)>,
    /// MIL operation counts by type (consts excluded).
    pub op_counts: Vec<(String, usize)>,
    pub weights_compressed: usize,
}

struct Ctx<'g, 'w> {
    g: &'g Graph,
    b: FnBuilder<'w>,
    opts: FunctionOptions,
    /// ONNX value → MIL value.
    vals: HashMap<String, String>,
    /// ONNX nodes already emitted as part of an earlier node's lowering.
    absorbed: HashSet<usize>,
    compressed: usize,
    /// ONNX past input → (MIL state, its cache).
    states: HashMap<String, (String, KvState)>,
    /// ONNX values held in another layout (`--layout ane`).
    held: HashMap<String, (String, Layout)>,
    /// ONNX-layout values already moved into the channels-first layout.
    entered: HashMap<String, String>,
}

fn node_err(n: &Node, msg: impl Into<String>) -> Error {
    Error::node(n, msg)
}

impl<'g, 'w> Ctx<'g, 'w> {
    fn out_type(&self, n: &Node, i: usize) -> Result<TType> {
        let name = &n.outputs[i];
        let dt = self.g.dtype_of(name).ok_or_else(|| node_err(n, format!("output '{name}' has no inferred type")))?;
        let shape = self
            .g
            .concrete_shape_of(name)
            .ok_or_else(|| node_err(n, format!("output '{name}' has no static shape after preparation")))?;
        Ok(TType::new(mil_dtype(dt, self.opts.compute)?, &shape))
    }
    fn constant_tensor(&self, name: &str) -> Option<&'g Tensor> {
        self.g.initializers.get(name)
    }
    fn const_ints(&self, n: &Node, name: &str) -> Result<Vec<i64>> {
        self.constant_tensor(name)
            .ok_or_else(|| node_err(n, format!("input '{name}' must be a constant for Core ML")))?
            .to_i64_vec()
    }

    /// The MIL value of an ONNX value (a const for initializers).
    fn val(&mut self, n: &Node, name: &str) -> Result<String> {
        if let Some(v) = self.vals.get(name) {
            return Ok(v.clone());
        }
        if let Some((h, l)) = self.held.get(name).cloned() {
            return self.materialize(name, &h, &l);
        }
        let t = self.g.initializers.get(name).ok_or_else(|| node_err(n, format!("value '{name}' is not defined")))?;
        let dt = mil_dtype(t.dtype(), self.opts.compute)?;
        let data = match dt {
            DataType::Bool => ConstData::Bool(t.to_i64_vec()?.iter().map(|&v| v != 0).collect()),
            DataType::Int32 => ConstData::I32(
                t.to_i64_vec()?.into_iter().map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32).collect(),
            ),
            _ => ConstData::Float(t.to_f64_vec().into_iter().map(|v| v as f32).collect()),
        };
        let m = self.b.constant(name, TType::new(dt, t.shape()), data)?;
        self.vals.insert(name.to_string(), m.clone());
        Ok(m)
    }

    /// A float constant (weights) with the compression option applied.
    fn weight(&mut self, hint: &str, shape: &[usize], data: Vec<f32>) -> Result<String> {
        let dt = self.opts.compute.dtype();
        if let Some(c) = self.opts.compression {
            if data.len() >= quantize::MIN_COMPRESSED_ELEMENTS && shape.len() >= 2 {
                self.compressed += 1;
                let ios18 = self.opts.opset == "CoreML8";
                return quantize::emit_compressed(&mut self.b, hint, dt, shape, &data, c, ios18);
            }
        }
        self.b.const_float(hint, dt, shape, data)
    }

    fn scalar(&mut self, hint: &str, v: f32) -> Result<String> {
        let dt = self.opts.compute.dtype();
        self.b.const_float(hint, dt, &[], vec![v])
    }

    fn set(&mut self, onnx: &str, mil: String) {
        self.vals.insert(onnx.to_string(), mil);
    }

    fn unary(&mut self, n: &Node, ty: &str) -> Result<()> {
        let x = self.val(n, &n.inputs[0])?;
        let out = self.out_type(n, 0)?;
        let y = self.b.op1(ty, &n.outputs[0], &[("x", &[&x])], out)?;
        self.set(&n.outputs[0], y);
        Ok(())
    }

    fn binary(&mut self, n: &Node, ty: &str) -> Result<()> {
        let x = self.val(n, &n.inputs[0])?;
        let y = self.val(n, &n.inputs[1])?;
        let out = self.out_type(n, 0)?;
        let z = self.b.op1(ty, &n.outputs[0], &[("x", &[&x]), ("y", &[&y])], out)?;
        self.set(&n.outputs[0], z);
        Ok(())
    }

    fn reshape_to(&mut self, hint: &str, x: &str, shape: &[usize]) -> Result<String> {
        let dt = self.b.ty(x)?.dtype;
        let s = self.b.const_ints(&format!("{hint}_shape"), &shape.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
        self.b.op1("reshape", hint, &[("x", &[x]), ("shape", &[&s])], TType::new(dt, shape))
    }

    fn reshape(&mut self, n: &Node) -> Result<()> {
        let x = self.val(n, &n.inputs[0])?;
        let out = self.out_type(n, 0)?;
        let y = self.reshape_to(&n.outputs[0], &x, &out.shape)?;
        self.set(&n.outputs[0], y);
        Ok(())
    }

    fn axes_attr_or_input(&self, n: &Node, input: usize) -> Result<Option<Vec<i64>>> {
        if let Some(a) = n.attr_ints("axes")? {
            return Ok(Some(a));
        }
        match n.inputs.get(input).filter(|s| !s.is_empty()) {
            Some(name) => Ok(Some(self.const_ints(n, name)?)),
            None => Ok(None),
        }
    }

    fn reduce(&mut self, n: &Node, ty: &str) -> Result<()> {
        let rank = self.g.concrete_shape_of(&n.inputs[0]).map(|s| s.len()).unwrap_or(0) as i64;
        let axes = match self.axes_attr_or_input(n, 1)? {
            Some(a) if !a.is_empty() => a,
            _ => {
                if n.attr_int_or("noop_with_empty_axes", 0)? != 0 {
                    let x = self.val(n, &n.inputs[0])?;
                    self.set(&n.outputs[0], x);
                    return Ok(());
                }
                (0..rank).collect()
            }
        };
        let keep = n.attr_int_or("keepdims", 1)? != 0;
        let x = self.val(n, &n.inputs[0])?;
        let a = self.b.const_ints(&format!("{}_axes", n.outputs[0]), &axes)?;
        let k = self.b.const_bool(&format!("{}_keep_dims", n.outputs[0]), keep)?;
        let out = self.out_type(n, 0)?;
        let y = self.b.op1(ty, &n.outputs[0], &[("x", &[&x]), ("axes", &[&a]), ("keep_dims", &[&k])], out)?;
        self.set(&n.outputs[0], y);
        Ok(())
    }

    /// MatMul/Gemm with a constant 2-D right operand becomes `linear`
    /// (weight stored as [out, in]), taking a following `Add` of a constant
    /// bias with it.
    fn matmul(&mut self, idx: usize, n: &Node) -> Result<()> {
        let gemm = n.op_type == "Gemm";
        let (alpha, beta, ta, tb) = if gemm {
            (
                n.attr_float_or("alpha", 1.0)?,
                n.attr_float_or("beta", 1.0)?,
                n.attr_int_or("transA", 0)? != 0,
                n.attr_int_or("transB", 0)? != 0,
            )
        } else {
            (1.0, 1.0, false, false)
        };
        let out = self.out_type(n, 0)?;
        let b_const = self.constant_tensor(&n.inputs[1]).filter(|t| t.rank() == 2);
        let c_name = n.inputs.get(2).filter(|s| !s.is_empty()).cloned();
        if let (Some(w), false, true) = (b_const, ta, alpha == 1.0) {
            let (k, nn) = if tb { (w.shape()[1], w.shape()[0]) } else { (w.shape()[0], w.shape()[1]) };
            let wt = out_major_weight(w, tb);
            // A bias from Gemm's C or from the single Add that follows.
            let mut bias: Option<Vec<f32>> = None;
            let mut out_name = n.outputs[0].clone();
            let mut out_ty = out.clone();
            if let Some(c) = &c_name {
                match self.constant_tensor(c) {
                    Some(t) if t.numel() == nn && beta == 1.0 => {
                        bias = Some(t.to_f64_vec().into_iter().map(|v| v as f32).collect())
                    }
                    _ => return self.matmul_general(n, alpha, beta, ta, tb),
                }
            } else if let Some((ai, add, b)) = self.following_bias_add(idx, &n.outputs[0], nn) {
                bias = Some(b);
                out_name = add.outputs[0].clone();
                out_ty = self.out_type(add, 0)?;
                self.absorbed.insert(ai);
            }
            let x = self.val(n, &n.inputs[0])?;
            let wname = self.weight(&format!("{}_weight", n.name), &[nn, k], wt)?;
            let mut ins: Vec<(&str, Vec<String>)> = vec![("x", vec![x]), ("weight", vec![wname])];
            if let Some(b) = bias {
                let dt = self.opts.compute.dtype();
                let bname = self.b.const_float(&format!("{}_bias", n.name), dt, &[nn], b)?;
                ins.push(("bias", vec![bname]));
            }
            let y = self.b.op1_owned("linear", &out_name, &ins, out_ty)?;
            self.set(&out_name, y);
            return Ok(());
        }
        self.matmul_general(n, alpha, beta, ta, tb)
    }

    /// `idx`'s output feeds exactly one `Add` whose other operand is a
    /// constant of `n` elements: that node, its index and the bias.
    fn following_bias_add(&self, idx: usize, out: &str, n: usize) -> Option<(usize, &'g Node, Vec<f32>)> {
        if self.g.outputs.iter().any(|o| o.name == out) {
            return None;
        }
        let users: Vec<(usize, &Node)> =
            self.g.nodes.iter().enumerate().filter(|(_, m)| m.inputs.iter().any(|i| i == out)).collect();
        let [(ai, add)] = users.as_slice() else { return None };
        if add.op_type != "Add" || *ai <= idx {
            return None;
        }
        let other = if add.inputs[0] == out { &add.inputs[1] } else { &add.inputs[0] };
        let t = self.g.initializers.get(other)?;
        if t.numel() != n || t.shape().last() != Some(&n) {
            return None;
        }
        // The Add's output must keep the matmul's shape (no broadcast up).
        if self.g.concrete_shape_of(&add.outputs[0]) != self.g.concrete_shape_of(out) {
            return None;
        }
        let g: &'g Graph = self.g;
        Some((*ai, &g.nodes[*ai], t.to_f64_vec().into_iter().map(|v| v as f32).collect()))
    }

    fn matmul_general(&mut self, n: &Node, alpha: f32, beta: f32, ta: bool, tb: bool) -> Result<()> {
        let a = self.val(n, &n.inputs[0])?;
        let b = self.val(n, &n.inputs[1])?;
        let out = self.out_type(n, 0)?;
        let tx = self.b.const_bool(&format!("{}_transpose_x", n.outputs[0]), ta)?;
        let ty = self.b.const_bool(&format!("{}_transpose_y", n.outputs[0]), tb)?;
        let mut y = self.b.op1(
            "matmul",
            &format!("{}_mm", n.outputs[0]),
            &[("x", &[&a]), ("y", &[&b]), ("transpose_x", &[&tx]), ("transpose_y", &[&ty])],
            out.clone(),
        )?;
        if alpha != 1.0 {
            let s = self.scalar(&format!("{}_alpha", n.outputs[0]), alpha)?;
            y = self.b.op1("mul", &format!("{}_scaled", n.outputs[0]), &[("x", &[&y]), ("y", &[&s])], out.clone())?;
        }
        if let Some(c) = n.inputs.get(2).filter(|s| !s.is_empty()) {
            let mut cv = self.val(n, c)?;
            if beta != 1.0 {
                let s = self.scalar(&format!("{}_beta", n.outputs[0]), beta)?;
                let cty = self.b.ty(&cv)?.clone();
                cv = self.b.op1("mul", &format!("{}_cscaled", n.outputs[0]), &[("x", &[&cv]), ("y", &[&s])], cty)?;
            }
            y = self.b.op1("add", &n.outputs[0], &[("x", &[&y]), ("y", &[&cv])], out)?;
        }
        self.set(&n.outputs[0], y);
        Ok(())
    }

    fn spatial_pads(
        &self,
        n: &Node,
        x_shape: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dil: &[usize],
    ) -> Result<Vec<i64>> {
        let sp = kernel.len();
        let auto = n.attr_string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        let pads = match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = vec![0i64; 2 * sp];
                for i in 0..sp {
                    let inp = x_shape[2 + i] as i64;
                    let out = (inp + strides[i] as i64 - 1) / strides[i] as i64;
                    let eff = (kernel[i] as i64 - 1) * dil[i] as i64 + 1;
                    let total = ((out - 1) * strides[i] as i64 + eff - inp).max(0);
                    let small = total / 2;
                    let (b, e) = if auto == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                    p[i] = b;
                    p[sp + i] = e;
                }
                p
            }
            "VALID" => vec![0; 2 * sp],
            _ => n.attr_ints("pads")?.unwrap_or_else(|| vec![0; 2 * sp]),
        };
        if pads.len() != 2 * sp {
            return Err(node_err(n, format!("pads has {} values for {sp} spatial dims", pads.len())));
        }
        // ONNX [b1, b2, e1, e2] → MIL [b1, e1, b2, e2].
        Ok((0..sp).flat_map(|i| [pads[i], pads[sp + i]]).collect())
    }

    fn conv(&mut self, n: &Node) -> Result<()> {
        let w = self.constant_tensor(&n.inputs[1]).ok_or_else(|| node_err(n, "Core ML needs constant conv weights"))?;
        let x_shape = self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
        let sp = w.rank() - 2;
        let kernel: Vec<usize> = w.shape()[2..].to_vec();
        let strides: Vec<usize> =
            n.attr_ints("strides")?.unwrap_or_else(|| vec![1; sp]).iter().map(|&v| v as usize).collect();
        let dil: Vec<usize> =
            n.attr_ints("dilations")?.unwrap_or_else(|| vec![1; sp]).iter().map(|&v| v as usize).collect();
        let pads = self.spatial_pads(n, &x_shape, &kernel, &strides, &dil)?;
        let group = n.attr_int_or("group", 1)?;
        let x = self.val(n, &n.inputs[0])?;
        let wv: Vec<f32> = w.to_f64_vec().into_iter().map(|v| v as f32).collect();
        let wname = self.weight(&format!("{}_weight", n.name), w.shape(), wv)?;
        let o = &n.outputs[0];
        let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
            Some(bn) => Some(self.val(n, bn)?),
            None => None,
        };
        let out = self.out_type(n, 0)?;
        let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let geom = ConvGeometry { strides: as_i64(&strides), pads, dilations: as_i64(&dil), groups: group };
        let y = self.emit_conv(o, x, wname, &geom, bias, out)?;
        self.set(o, y);
        Ok(())
    }

    /// A MIL `conv` with explicit padding.
    fn emit_conv(
        &mut self,
        o: &str,
        x: String,
        weight: String,
        geom: &ConvGeometry,
        bias: Option<String>,
        out: TType,
    ) -> Result<String> {
        let s = self.b.const_ints(&format!("{o}_strides"), &geom.strides)?;
        let d = self.b.const_ints(&format!("{o}_dilations"), &geom.dilations)?;
        let pt = self.b.const_str(&format!("{o}_pad_type"), "custom")?;
        let p = self.b.const_ints(&format!("{o}_pad"), &geom.pads)?;
        let gr = self.b.const_int(&format!("{o}_groups"), geom.groups)?;
        let mut ins: Vec<(&str, Vec<String>)> = vec![
            ("x", vec![x]),
            ("weight", vec![weight]),
            ("strides", vec![s]),
            ("pad_type", vec![pt]),
            ("pad", vec![p]),
            ("dilations", vec![d]),
            ("groups", vec![gr]),
        ];
        if let Some(b) = bias {
            ins.push(("bias", vec![b]));
        }
        self.b.op1_owned("conv", o, &ins, out)
    }

    /// LayerNormalization's scale (input `i` = 1) or bias (2) as `numel`
    /// values: `d` when absent, one value repeated; None when it is not a
    /// constant of 1 or `numel` values.
    fn ln_param(&self, n: &Node, i: usize, d: f32, numel: usize) -> Option<Vec<f32>> {
        let Some(name) = n.inputs.get(i).filter(|s| !s.is_empty()) else { return Some(vec![d; numel]) };
        let v: Vec<f32> = self.constant_tensor(name)?.to_f64_vec().into_iter().map(|v| v as f32).collect();
        match v.len() {
            1 => Some(vec![v[0]; numel]),
            l if l == numel => Some(v),
            _ => None,
        }
    }

    /// A MIL `layer_norm` over `axes` with constant `gamma`/`beta` of shape `norm`.
    #[allow(clippy::too_many_arguments)]
    fn emit_layer_norm(
        &mut self,
        o0: &str,
        x: &str,
        axes: &[i64],
        norm: &[usize],
        gamma: Vec<f32>,
        beta: Vec<f32>,
        eps: f32,
        out: TType,
    ) -> Result<String> {
        let dt = self.opts.compute.dtype();
        let axes = self.b.const_ints(&format!("{o0}_axes"), axes)?;
        let g = self.b.const_float(&format!("{o0}_gamma"), dt, norm, gamma)?;
        let b = self.b.const_float(&format!("{o0}_beta"), dt, norm, beta)?;
        let e = self.scalar(&format!("{o0}_epsilon"), eps)?;
        self.b.op1(
            "layer_norm",
            o0,
            &[("x", &[x]), ("axes", &[&axes]), ("gamma", &[&g]), ("beta", &[&b]), ("epsilon", &[&e])],
            out,
        )
    }

    fn pool(&mut self, n: &Node, ty: &str) -> Result<()> {
        let x_shape = self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
        let kernel: Vec<usize> = n
            .attr_ints("kernel_shape")?
            .ok_or_else(|| node_err(n, "kernel_shape missing"))?
            .iter()
            .map(|&v| v as usize)
            .collect();
        let sp = kernel.len();
        let strides: Vec<usize> =
            n.attr_ints("strides")?.unwrap_or_else(|| vec![1; sp]).iter().map(|&v| v as usize).collect();
        let dil = n.attr_ints("dilations")?.unwrap_or_else(|| vec![1; sp]);
        if dil.iter().any(|&d| d != 1) {
            return Err(node_err(n, "dilated pooling has no MIL equivalent"));
        }
        let mut pads = self.spatial_pads(n, &x_shape, &kernel, &strides, &vec![1; sp])?;
        let out = self.out_type(n, 0)?;
        // ceil_mode: ONNX drops a last window that would start in the end
        // padding, which MIL's ceil_mode does not promise. Emit floor mode
        // with the end padding that yields exactly ONNX's output size
        // (padding is never part of a max, nor of an average that excludes
        // it).
        if n.attr_int_or("ceil_mode", 0)? != 0 {
            if ty == "avg_pool" && n.attr_int_or("count_include_pad", 0)? != 0 {
                return Err(node_err(n, "ceil_mode with count_include_pad is not converted"));
            }
            for i in 0..sp {
                let need = (out.shape[2 + i] as i64 - 1) * strides[i] as i64 + kernel[i] as i64
                    - x_shape[2 + i] as i64
                    - pads[2 * i];
                pads[2 * i + 1] = pads[2 * i + 1].max(need);
            }
        }
        let o = &n.outputs[0];
        let x = self.val(n, &n.inputs[0])?;
        let k =
            self.b.const_ints(&format!("{o}_kernel_sizes"), &kernel.iter().map(|&v| v as i64).collect::<Vec<_>>())?;
        let s = self.b.const_ints(&format!("{o}_strides"), &strides.iter().map(|&v| v as i64).collect::<Vec<_>>())?;
        let pt = self.b.const_str(&format!("{o}_pad_type"), "custom")?;
        let p = self.b.const_ints(&format!("{o}_pad"), &pads)?;
        let c = self.b.const_bool(&format!("{o}_ceil_mode"), false)?;
        let mut ins: Vec<(&str, Vec<String>)> = vec![
            ("x", vec![x]),
            ("kernel_sizes", vec![k]),
            ("strides", vec![s]),
            ("pad_type", vec![pt]),
            ("pad", vec![p]),
            ("ceil_mode", vec![c]),
        ];
        if ty == "avg_pool" {
            let ex = self.b.const_bool(&format!("{o}_exclude_pad"), n.attr_int_or("count_include_pad", 0)? == 0)?;
            ins.push(("exclude_padding_from_average", vec![ex]));
        }
        let y = self.b.op1_owned(ty, o, &ins, out)?;
        self.set(o, y);
        Ok(())
    }

    fn slice(&mut self, n: &Node) -> Result<()> {
        let shape = self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
        let r = shape.len();
        let (starts, ends, axes, steps) = if n.inputs.len() >= 3 {
            let starts = self.const_ints(n, &n.inputs[1])?;
            let ends = self.const_ints(n, &n.inputs[2])?;
            let axes = match n.inputs.get(3).filter(|s| !s.is_empty()) {
                Some(a) => self.const_ints(n, a)?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match n.inputs.get(4).filter(|s| !s.is_empty()) {
                Some(a) => self.const_ints(n, a)?,
                None => vec![1; starts.len()],
            };
            (starts, ends, axes, steps)
        } else {
            let starts = n.attr_ints("starts")?.unwrap_or_default();
            let ends = n.attr_ints("ends")?.unwrap_or_default();
            let axes = n.attr_ints("axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            (starts.clone(), ends, axes, vec![1; starts.len()])
        };
        let mut begin = vec![0i64; r];
        let mut end: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let mut stride = vec![1i64; r];
        for (((&s, &e), &a), &st) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
            let a = if a < 0 { a + r as i64 } else { a };
            if a < 0 || a >= r as i64 || st <= 0 {
                return Err(node_err(n, "only positive steps on valid axes are converted"));
            }
            let d = shape[a as usize] as i64;
            let norm = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d);
            begin[a as usize] = norm(s);
            end[a as usize] = norm(e).max(norm(s));
            stride[a as usize] = st;
        }
        let o = &n.outputs[0];
        let x = self.val(n, &n.inputs[0])?;
        let b = self.b.const_ints(&format!("{o}_begin"), &begin)?;
        let e = self.b.const_ints(&format!("{o}_end"), &end)?;
        let s = self.b.const_ints(&format!("{o}_stride"), &stride)?;
        let out = self.out_type(n, 0)?;
        let y = self.b.op1(
            "slice_by_index",
            o,
            &[("x", &[&x]), ("begin", &[&b]), ("end", &[&e]), ("stride", &[&s])],
            out,
        )?;
        self.set(o, y);
        Ok(())
    }

    /// `present = Concat(past, new)` on a state: read the cache, drop its
    /// oldest entries, append the new ones, write it back (see [`crate::state`]).
    fn kv_concat(&mut self, n: &Node) -> Result<()> {
        let (state, st) = self.states[&n.inputs[0]].clone();
        let o0 = &n.outputs[0];
        let full = self.out_type(n, 0)?;
        let axis = st.axis;
        let cache = TType::new(DataType::Float16, &full.shape);
        let read = self.b.op1("read_state", &format!("{o0}_cache"), &[("input", &[&state])], cache)?;
        let mut new_len = 0;
        let mut xs = Vec::new();
        for x in n.inputs.iter().skip(1).filter(|x| !x.is_empty()) {
            let sh = self.g.concrete_shape_of(x).ok_or_else(|| node_err(n, format!("'{x}' has no static shape")))?;
            new_len += sh[axis];
            xs.push(self.val(n, x)?);
        }
        let mut begin = vec![0i64; full.shape.len()];
        begin[axis] = new_len as i64;
        let end: Vec<i64> = full.shape.iter().map(|&d| d as i64).collect();
        let mut kept_shape = full.shape.clone();
        kept_shape[axis] -= new_len;
        let b = self.b.const_ints(&format!("{o0}_keep_begin"), &begin)?;
        let e = self.b.const_ints(&format!("{o0}_keep_end"), &end)?;
        let mut kept = self.b.op1(
            "slice_by_index",
            &format!("{o0}_kept"),
            &[("x", &[&read]), ("begin", &[&b]), ("end", &[&e])],
            TType::new(DataType::Float16, &kept_shape),
        )?;
        if full.dtype != DataType::Float16 {
            let d = self.b.const_str(&format!("{o0}_kept_dtype"), cast_name(full.dtype))?;
            kept = self.b.op1(
                "cast",
                &format!("{o0}_kept_cast"),
                &[("x", &[&kept]), ("dtype", &[&d])],
                TType::new(full.dtype, &kept_shape),
            )?;
        }
        xs.insert(0, kept);
        let a = self.b.const_int(&format!("{o0}_axis"), axis as i64)?;
        let il = self.b.const_bool(&format!("{o0}_interleave"), false)?;
        let refs: Vec<&str> = xs.iter().map(|s| s.as_str()).collect();
        let cat =
            self.b.op1("concat", o0, &[("values", &refs), ("axis", &[&a]), ("interleave", &[&il])], full.clone())?;
        let store = if full.dtype != DataType::Float16 {
            let d = self.b.const_str(&format!("{o0}_store_dtype"), "fp16")?;
            self.b.op1(
                "cast",
                &format!("{o0}_store"),
                &[("x", &[&cat]), ("dtype", &[&d])],
                TType::new(DataType::Float16, &full.shape),
            )?
        } else {
            cat.clone()
        };
        self.b.op("write_state", &format!("{o0}_write"), &[("input", &[&state]), ("data", &[&store])], vec![])?;
        self.set(o0, cat);
        Ok(())
    }

    fn convert_node(&mut self, idx: usize, n: &Node) -> Result<()> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(node_err(n, format!("domain '{}' has no Core ML lowering", n.domain)));
        }
        if self.opts.ane_layout && self.lower_ane(idx, n)? {
            return Ok(());
        }
        let o0 = n.outputs[0].clone();
        match n.op_type.as_str() {
            "Add" => self.binary(n, "add"),
            "Sub" => self.binary(n, "sub"),
            "Mul" => self.binary(n, "mul"),
            "Div" => {
                if self.g.dtype_of(&n.inputs[0]).is_some_and(|d| !d.is_float()) {
                    return Err(node_err(n, "integer division is not converted (truncation differs)"));
                }
                self.binary(n, "real_div")
            }
            "Pow" => {
                // Squares are a product: exact, and cheap on every unit.
                if let Some(t) = self.constant_tensor(&n.inputs[1]) {
                    if t.numel() == 1 && t.to_f64_vec()[0] == 2.0 {
                        let x = self.val(n, &n.inputs[0])?;
                        let out = self.out_type(n, 0)?;
                        let y = self.b.op1("mul", &o0, &[("x", &[&x]), ("y", &[&x])], out)?;
                        self.set(&o0, y);
                        return Ok(());
                    }
                }
                self.binary(n, "pow")
            }
            "Sum" | "Max" | "Min" if n.inputs.len() > 2 || n.op_type == "Sum" => {
                // Variadic: a chain of binary operations.
                let ty = match n.op_type.as_str() {
                    "Sum" => "add",
                    "Max" => "maximum",
                    _ => "minimum",
                };
                let out = self.out_type(n, 0)?;
                let mut acc = self.val(n, &n.inputs[0])?;
                let mut shape = self.b.ty(&acc)?.shape.clone();
                for (i, name) in n.inputs.iter().enumerate().skip(1) {
                    let y = self.val(n, name)?;
                    shape = broadcast_shapes(&shape, &self.b.ty(&y)?.shape)
                        .ok_or_else(|| node_err(n, "inputs do not broadcast"))?;
                    let last = i + 1 == n.inputs.len();
                    let hint = if last { o0.clone() } else { format!("{o0}_partial{i}") };
                    acc = self.b.op1(ty, &hint, &[("x", &[&acc]), ("y", &[&y])], TType::new(out.dtype, &shape))?;
                }
                self.set(&o0, acc);
                Ok(())
            }
            "LRN" => {
                let size = n.attr_int("size")?.ok_or_else(|| node_err(n, "size missing"))?;
                let x = self.val(n, &n.inputs[0])?;
                let sz = self.b.const_int(&format!("{o0}_size"), size)?;
                let al = self.scalar(&format!("{o0}_alpha"), n.attr_float_or("alpha", 1e-4)?)?;
                let be = self.scalar(&format!("{o0}_beta"), n.attr_float_or("beta", 0.75)?)?;
                let k = self.scalar(&format!("{o0}_k"), n.attr_float_or("bias", 1.0)?)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1(
                    "local_response_norm",
                    &o0,
                    &[("x", &[&x]), ("size", &[&sz]), ("alpha", &[&al]), ("beta", &[&be]), ("k", &[&k])],
                    out,
                )?;
                self.set(&o0, y);
                Ok(())
            }
            "Max" | "Min" if n.inputs.len() == 2 => {
                self.binary(n, if n.op_type == "Max" { "maximum" } else { "minimum" })
            }
            "Equal" => self.binary(n, "equal"),
            "Less" => self.binary(n, "less"),
            "LessOrEqual" => self.binary(n, "less_equal"),
            "Greater" => self.binary(n, "greater"),
            "GreaterOrEqual" => self.binary(n, "greater_equal"),
            "And" => self.binary(n, "logical_and"),
            "Or" => self.binary(n, "logical_or"),
            "Not" => self.unary(n, "logical_not"),
            "Relu" => self.unary(n, "relu"),
            "Sigmoid" => self.unary(n, "sigmoid"),
            "Tanh" => self.unary(n, "tanh"),
            "Erf" => self.unary(n, "erf"),
            "Exp" => self.unary(n, "exp"),
            "Log" => self.unary(n, "log"),
            "Sqrt" => self.unary(n, "sqrt"),
            "Abs" => self.unary(n, "abs"),
            "Floor" => self.unary(n, "floor"),
            "Ceil" => self.unary(n, "ceil"),
            "Sin" => self.unary(n, "sin"),
            "Cos" => self.unary(n, "cos"),
            "Softplus" => self.unary(n, "softplus"),
            "Identity" | "Dropout" => {
                let x = self.val(n, &n.inputs[0])?;
                self.set(&o0, x);
                Ok(())
            }
            "Neg" | "Reciprocal" => {
                let x = self.val(n, &n.inputs[0])?;
                let out = self.out_type(n, 0)?;
                let y = if n.op_type == "Neg" {
                    let m = self.scalar(&format!("{o0}_minus_one"), -1.0)?;
                    self.b.op1("mul", &o0, &[("x", &[&x]), ("y", &[&m])], out)?
                } else {
                    let one = self.scalar(&format!("{o0}_one"), 1.0)?;
                    self.b.op1("real_div", &o0, &[("x", &[&one]), ("y", &[&x])], out)?
                };
                self.set(&o0, y);
                Ok(())
            }
            "LeakyRelu" | "Elu" => {
                let alpha = n.attr_float_or("alpha", if n.op_type == "Elu" { 1.0 } else { 0.01 })?;
                let x = self.val(n, &n.inputs[0])?;
                let a = self.scalar(&format!("{o0}_alpha"), alpha)?;
                let out = self.out_type(n, 0)?;
                let ty = if n.op_type == "Elu" { "elu" } else { "leaky_relu" };
                let y = self.b.op1(ty, &o0, &[("x", &[&x]), ("alpha", &[&a])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "HardSigmoid" | "HardSwish" => {
                let (alpha, beta) = if n.op_type == "HardSwish" {
                    (1.0 / 6.0, 0.5)
                } else {
                    (n.attr_float_or("alpha", 0.2)?, n.attr_float_or("beta", 0.5)?)
                };
                let x = self.val(n, &n.inputs[0])?;
                let a = self.scalar(&format!("{o0}_alpha"), alpha)?;
                let bb = self.scalar(&format!("{o0}_beta"), beta)?;
                let out = self.out_type(n, 0)?;
                let h = self.b.op1(
                    "sigmoid_hard",
                    &format!("{o0}_hs"),
                    &[("x", &[&x]), ("alpha", &[&a]), ("beta", &[&bb])],
                    out.clone(),
                )?;
                let y = if n.op_type == "HardSwish" {
                    self.b.op1("mul", &o0, &[("x", &[&x]), ("y", &[&h])], out)?
                } else {
                    h
                };
                self.set(&o0, y);
                Ok(())
            }
            "Clip" => {
                let lim = |i: usize, attr: &str, d: f32| -> Result<f32> {
                    match n.inputs.get(i).filter(|s| !s.is_empty()) {
                        Some(name) => Ok(self
                            .constant_tensor(name)
                            .ok_or_else(|| node_err(n, "Clip bounds must be constants"))?
                            .to_f64_vec()
                            .first()
                            .copied()
                            .unwrap_or(d as f64) as f32),
                        None => n.attr_float_or(attr, d),
                    }
                };
                // fp16 has no infinities to spare: clamp the open bounds.
                let lo = lim(1, "min", -65504.0)?.max(-65504.0);
                let hi = lim(2, "max", 65504.0)?.min(65504.0);
                let x = self.val(n, &n.inputs[0])?;
                let a = self.scalar(&format!("{o0}_alpha"), lo)?;
                let bb = self.scalar(&format!("{o0}_beta"), hi)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1("clip", &o0, &[("x", &[&x]), ("alpha", &[&a]), ("beta", &[&bb])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Gelu" => {
                let mode = match n.attr_string("approximate")?.as_deref() {
                    Some("tanh") => "TANH_APPROXIMATION",
                    _ => "EXACT",
                };
                let x = self.val(n, &n.inputs[0])?;
                let m = self.b.const_str(&format!("{o0}_mode"), mode)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1("gelu", &o0, &[("x", &[&x]), ("mode", &[&m])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Softmax" => {
                let rank = self.g.concrete_shape_of(&n.inputs[0]).map(|s| s.len() as i64).unwrap_or(0);
                let default = if self.g.opset() >= 13 { -1 } else { 1 };
                let mut axis = n.attr_int_or("axis", default)?;
                if axis < 0 {
                    axis += rank;
                }
                let x = self.val(n, &n.inputs[0])?;
                let out = self.out_type(n, 0)?;
                if self.g.opset() < 13 && axis != rank - 1 {
                    // Before opset 13 Softmax normalizes over all dims from
                    // `axis` on: flatten them, normalize, restore.
                    let shape = out.shape.clone();
                    let outer: usize = shape[..axis as usize].iter().product();
                    let inner: usize = shape[axis as usize..].iter().product();
                    let flat = self.reshape_to(&format!("{o0}_flat"), &x, &[outer, inner])?;
                    let a = self.b.const_int(&format!("{o0}_axis"), -1)?;
                    let t = TType::new(out.dtype, &[outer, inner]);
                    let sm = self.b.op1("softmax", &format!("{o0}_2d"), &[("x", &[&flat]), ("axis", &[&a])], t)?;
                    let y = self.reshape_to(&o0, &sm, &shape)?;
                    self.set(&o0, y);
                    return Ok(());
                }
                let a = self.b.const_int(&format!("{o0}_axis"), axis)?;
                let y = self.b.op1("softmax", &o0, &[("x", &[&x]), ("axis", &[&a])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "LayerNormalization" => {
                let shape =
                    self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
                let r = shape.len() as i64;
                let mut axis = n.attr_int_or("axis", -1)?;
                if axis < 0 {
                    axis += r;
                }
                let norm: Vec<usize> = shape[axis as usize..].to_vec();
                let numel: usize = norm.iter().product();
                let param = |i: usize, d: f32| {
                    self.ln_param(n, i, d, numel)
                        .ok_or_else(|| node_err(n, format!("scale/bias must be constants of {numel} values (or one)")))
                };
                let (gamma, beta) = (param(1, 1.0)?, param(2, 0.0)?);
                let eps = n.attr_float_or("epsilon", 1e-5)?;
                let x = self.val(n, &n.inputs[0])?;
                let out = self.out_type(n, 0)?;
                let y = self.emit_layer_norm(&o0, &x, &(axis..r).collect::<Vec<_>>(), &norm, gamma, beta, eps, out)?;
                self.set(&o0, y);
                Ok(())
            }
            "BatchNormalization" => {
                let x = self.val(n, &n.inputs[0])?;
                let mut ins = vec![("x", vec![x])];
                for (i, k) in [(3, "mean"), (4, "variance"), (1, "gamma"), (2, "beta")] {
                    if self.constant_tensor(&n.inputs[i]).is_none() {
                        return Err(node_err(n, "Core ML needs constant batch-norm statistics"));
                    }
                    ins.push((k, vec![self.val(n, &n.inputs[i])?]));
                }
                let e = self.scalar(&format!("{o0}_epsilon"), n.attr_float_or("epsilon", 1e-5)?)?;
                ins.push(("epsilon", vec![e]));
                let out = self.out_type(n, 0)?;
                let y = self.b.op1_owned("batch_norm", &o0, &ins, out)?;
                self.set(&o0, y);
                Ok(())
            }
            "MatMul" | "Gemm" => self.matmul(idx, n),
            "Conv" => self.conv(n),
            "MaxPool" if n.outputs.len() == 1 || n.outputs[1].is_empty() => self.pool(n, "max_pool"),
            "AveragePool" => self.pool(n, "avg_pool"),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let r = self.g.concrete_shape_of(&n.inputs[0]).map(|s| s.len() as i64).unwrap_or(4);
                let x = self.val(n, &n.inputs[0])?;
                let axes = self.b.const_ints(&format!("{o0}_axes"), &(2..r).collect::<Vec<_>>())?;
                let k = self.b.const_bool(&format!("{o0}_keep_dims"), true)?;
                let out = self.out_type(n, 0)?;
                let ty = if n.op_type == "GlobalAveragePool" { "reduce_mean" } else { "reduce_max" };
                let y = self.b.op1(ty, &o0, &[("x", &[&x]), ("axes", &[&axes]), ("keep_dims", &[&k])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => self.reshape(n),
            "Transpose" => {
                let r = self.g.concrete_shape_of(&n.inputs[0]).map(|s| s.len() as i64).unwrap_or(0);
                let perm = n.attr_ints("perm")?.unwrap_or_else(|| (0..r).rev().collect());
                let x = self.val(n, &n.inputs[0])?;
                let p = self.b.const_ints(&format!("{o0}_perm"), &perm)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1("transpose", &o0, &[("x", &[&x]), ("perm", &[&p])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Concat" if self.states.get(&n.inputs[0]).is_some_and(|(_, st)| st.present == o0) => self.kv_concat(n),
            "Concat" => {
                let r = self.g.concrete_shape_of(&o0).map(|s| s.len() as i64).unwrap_or(0);
                let mut axis = n.attr_int_or("axis", 0)?;
                if axis < 0 {
                    axis += r;
                }
                // Empty inputs add nothing and MIL rejects zero-sized dims.
                let mut xs = Vec::new();
                for i in n.inputs.iter().filter(|s| !s.is_empty()) {
                    if self.g.concrete_shape_of(i).is_some_and(|s| s.contains(&0)) {
                        continue;
                    }
                    xs.push(self.val(n, i)?);
                }
                let out = self.out_type(n, 0)?;
                if xs.len() == 1 {
                    self.set(&o0, xs.remove(0));
                    return Ok(());
                }
                let a = self.b.const_int(&format!("{o0}_axis"), axis)?;
                let il = self.b.const_bool(&format!("{o0}_interleave"), false)?;
                let refs: Vec<&str> = xs.iter().map(|s| s.as_str()).collect();
                let y =
                    self.b.op1("concat", &o0, &[("values", &refs), ("axis", &[&a]), ("interleave", &[&il])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Split" => {
                let shape =
                    self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
                let r = shape.len() as i64;
                let mut axis = n.attr_int_or("axis", 0)?;
                if axis < 0 {
                    axis += r;
                }
                let sizes: Vec<i64> = n
                    .outputs
                    .iter()
                    .map(|o| self.g.concrete_shape_of(o).map(|s| s[axis as usize] as i64))
                    .collect::<Option<_>>()
                    .ok_or_else(|| node_err(n, "outputs have no static shapes"))?;
                let x = self.val(n, &n.inputs[0])?;
                let ss = self.b.const_ints(&format!("{o0}_split_sizes"), &sizes)?;
                let a = self.b.const_int(&format!("{o0}_axis"), axis)?;
                let outs = (0..n.outputs.len()).map(|i| self.out_type(n, i)).collect::<Result<Vec<_>>>()?;
                let ys = self.b.op("split", &o0, &[("x", &[&x]), ("split_sizes", &[&ss]), ("axis", &[&a])], outs)?;
                for (o, y) in n.outputs.iter().zip(ys) {
                    self.set(o, y);
                }
                Ok(())
            }
            "Slice" => self.slice(n),
            "Gather" => {
                let shape =
                    self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
                let mut axis = n.attr_int_or("axis", 0)?;
                if axis < 0 {
                    axis += shape.len() as i64;
                }
                // Embedding tables are weights too (most of a small
                // transformer's bytes): compress them like the others.
                let x = match self.constant_tensor(&n.inputs[0]) {
                    Some(t) if t.dtype().is_float() && t.rank() >= 2 && self.opts.compression.is_some() => {
                        if let Some(v) = self.vals.get(&n.inputs[0]) {
                            v.clone()
                        } else {
                            let data: Vec<f32> = t.to_f64_vec().into_iter().map(|v| v as f32).collect();
                            let w = self.weight(&n.inputs[0], t.shape(), data)?;
                            self.set(&n.inputs[0], w.clone());
                            w
                        }
                    }
                    _ => self.val(n, &n.inputs[0])?,
                };
                // Constant indices are made non-negative here; run-time
                // indices (token ids) are used as given.
                let idx_name = if let Some(t) = self.constant_tensor(&n.inputs[1]) {
                    let d = shape[axis as usize] as i64;
                    let v: Vec<i64> = t.to_i64_vec()?.into_iter().map(|i| if i < 0 { i + d } else { i }).collect();
                    let ishape = t.shape().to_vec();
                    self.b.const_i32(&format!("{o0}_indices"), &ishape, v.into_iter().map(|x| x as i32).collect())?
                } else {
                    self.val(n, &n.inputs[1])?
                };
                let a = self.b.const_int(&format!("{o0}_axis"), axis)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1("gather", &o0, &[("x", &[&x]), ("indices", &[&idx_name]), ("axis", &[&a])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "ReduceMean" => self.reduce(n, "reduce_mean"),
            "ReduceSum" => self.reduce(n, "reduce_sum"),
            "ReduceMax" => self.reduce(n, "reduce_max"),
            "ReduceMin" => self.reduce(n, "reduce_min"),
            "ReduceProd" => self.reduce(n, "reduce_prod"),
            "ReduceL2" => self.reduce(n, "reduce_l2_norm"),
            "ArgMax" | "ArgMin" => {
                let r = self.g.concrete_shape_of(&n.inputs[0]).map(|s| s.len() as i64).unwrap_or(0);
                let mut axis = n.attr_int_or("axis", 0)?;
                if axis < 0 {
                    axis += r;
                }
                if n.attr_int_or("select_last_index", 0)? != 0 {
                    return Err(node_err(n, "select_last_index is not converted"));
                }
                let x = self.val(n, &n.inputs[0])?;
                let a = self.b.const_int(&format!("{o0}_axis"), axis)?;
                let k = self.b.const_bool(&format!("{o0}_keep_dims"), n.attr_int_or("keepdims", 1)? != 0)?;
                let out = self.out_type(n, 0)?;
                let ty = if n.op_type == "ArgMax" { "reduce_argmax" } else { "reduce_argmin" };
                let y = self.b.op1(ty, &o0, &[("x", &[&x]), ("axis", &[&a]), ("keep_dims", &[&k])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Cast" => {
                let x = self.val(n, &n.inputs[0])?;
                let out = self.out_type(n, 0)?;
                if self.b.ty(&x)?.dtype == out.dtype {
                    self.set(&o0, x);
                    return Ok(());
                }
                let d = self.b.const_str(&format!("{o0}_dtype"), cast_name(out.dtype))?;
                let y = self.b.op1("cast", &o0, &[("x", &[&x]), ("dtype", &[&d])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Where" => {
                let c = self.val(n, &n.inputs[0])?;
                let a = self.val(n, &n.inputs[1])?;
                let bb = self.val(n, &n.inputs[2])?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1("select", &o0, &[("cond", &[&c]), ("a", &[&a]), ("b", &[&bb])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Expand" | "Tile" => {
                let out = self.out_type(n, 0)?;
                let in_shape =
                    self.g.concrete_shape_of(&n.inputs[0]).ok_or_else(|| node_err(n, "input has no static shape"))?;
                let mut x = self.val(n, &n.inputs[0])?;
                let reps: Vec<i64> = if n.op_type == "Tile" {
                    self.const_ints(n, &n.inputs[1])?
                } else {
                    // Expand: align ranks, then repeat the size-1 dims.
                    let r = out.shape.len();
                    let mut aligned = vec![1usize; r - in_shape.len()];
                    aligned.extend(&in_shape);
                    if aligned != in_shape {
                        x = self.reshape_to(&format!("{o0}_aligned"), &x, &aligned)?;
                    }
                    aligned.iter().zip(&out.shape).map(|(&i, &o)| if i == o { 1 } else { o as i64 }).collect()
                };
                if reps.iter().all(|&r| r == 1) {
                    self.set(&o0, x);
                    return Ok(());
                }
                let rp = self.b.const_ints(&format!("{o0}_reps"), &reps)?;
                let y = self.b.op1("tile", &o0, &[("x", &[&x]), ("reps", &[&rp])], out)?;
                self.set(&o0, y);
                Ok(())
            }
            "Pad" => {
                let mode = n.attr_string("mode")?.unwrap_or_else(|| "constant".into());
                let pads = match n.inputs.get(1).filter(|s| !s.is_empty()) {
                    Some(p) => self.const_ints(n, p)?,
                    None => n.attr_ints("pads")?.unwrap_or_default(),
                };
                if n.inputs.get(3).is_some_and(|s| !s.is_empty()) {
                    return Err(node_err(n, "Pad with axes is not converted"));
                }
                let value = match n.inputs.get(2).filter(|s| !s.is_empty()) {
                    Some(v) => self.constant_tensor(v).map(|t| t.to_f64_vec()[0] as f32).unwrap_or(0.0),
                    None => n.attr_float_or("value", 0.0)?,
                };
                let r = pads.len() / 2;
                let mil: Vec<i64> = (0..r).flat_map(|i| [pads[i], pads[r + i]]).collect();
                if mil.iter().any(|&p| p < 0) {
                    return Err(node_err(n, "negative pads are not converted"));
                }
                let x = self.val(n, &n.inputs[0])?;
                let p = self.b.const_ints(&format!("{o0}_pad"), &mil)?;
                let m = self.b.const_str(&format!("{o0}_mode"), &mode)?;
                let cv = self.scalar(&format!("{o0}_constant_val"), value)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1(
                    "pad",
                    &o0,
                    &[("x", &[&x]), ("pad", &[&p]), ("mode", &[&m]), ("constant_val", &[&cv])],
                    out,
                )?;
                self.set(&o0, y);
                Ok(())
            }
            "CumSum" => {
                let r = self.g.concrete_shape_of(&n.inputs[0]).map(|s| s.len() as i64).unwrap_or(0);
                let mut axis = *self.const_ints(n, &n.inputs[1])?.first().ok_or_else(|| node_err(n, "axis missing"))?;
                if axis < 0 {
                    axis += r;
                }
                let x = self.val(n, &n.inputs[0])?;
                let a = self.b.const_int(&format!("{o0}_axis"), axis)?;
                let ex = self.b.const_bool(&format!("{o0}_exclusive"), n.attr_int_or("exclusive", 0)? != 0)?;
                let rv = self.b.const_bool(&format!("{o0}_reverse"), n.attr_int_or("reverse", 0)? != 0)?;
                let out = self.out_type(n, 0)?;
                let y = self.b.op1(
                    "cumsum",
                    &o0,
                    &[("x", &[&x]), ("axis", &[&a]), ("exclusive", &[&ex]), ("reverse", &[&rv])],
                    out,
                )?;
                self.set(&o0, y);
                Ok(())
            }
            other => Err(node_err(n, format!("'{other}' has no Core ML lowering"))),
        }
    }
}

/// Strides, padding (MIL order `[b1, e1, b2, e2]`), dilations and groups
/// of a `conv`.
struct ConvGeometry {
    strides: Vec<i64>,
    pads: Vec<i64>,
    dilations: Vec<i64>,
    groups: i64,
}

/// A constant 2-D MatMul/Gemm weight as `[out, in]` f32 values (MIL
/// `linear` and 1x1 `conv` layout): transposed from ONNX's `[in, out]`,
/// as it is when `transposed` (Gemm's transB).
fn out_major_weight(w: &Tensor, transposed: bool) -> Vec<f32> {
    let wv = w.to_f64_vec();
    if transposed {
        return wv.into_iter().map(|v| v as f32).collect();
    }
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let mut wt = vec![0f32; k * n];
    for r in 0..n {
        for c in 0..k {
            wt[r * k + c] = wv[c * n + r] as f32;
        }
    }
    wt
}

/// Converts a prepared graph into one MIL function.
pub fn convert_function(
    g: &Graph,
    blobs: &mut crate::blob::BlobWriter,
    opts: &FunctionOptions,
) -> Result<ConvertedFunction> {
    let mut b = FnBuilder::new(blobs);
    // Interface names first, so that nothing else takes them.
    let in_names: Vec<String> = g.inputs.iter().map(|i| b.fresh(&i.name)).collect();
    let out_names: Vec<String> = g.outputs.iter().map(|o| b.fresh(&o.name)).collect();
    let mut ctx = Ctx {
        g,
        b,
        opts: opts.clone(),
        vals: HashMap::new(),
        absorbed: HashSet::new(),
        compressed: 0,
        states: HashMap::new(),
        held: HashMap::new(),
        entered: HashMap::new(),
    };
    let mut inputs = Vec::new();
    let mut states = Vec::new();
    for (i, name) in g.inputs.iter().zip(&in_names) {
        if let Some(st) = opts.states.iter().find(|s| s.past == i.name) {
            for n in g.nodes.iter().filter(|n| n.inputs.contains(&i.name)) {
                if n.op_type != "Concat" || n.outputs[0] != st.present || n.inputs[0] != i.name {
                    return Err(Error::node(
                        n,
                        format!(
                            "the cache '{}' is read here too: only its Concat with the new entries can use a state",
                            i.name
                        ),
                    ));
                }
            }
            let shape = g
                .concrete_shape_of(&st.present)
                .ok_or_else(|| Error::Input(format!("'{}' has no static shape", st.present)))?;
            ctx.b.add_state_named(name, TType::new(DataType::Float16, &shape));
            ctx.states.insert(i.name.clone(), (name.clone(), st.clone()));
            states.push((name.clone(), shape));
            continue;
        }
        let dt = i.dtype.ok_or_else(|| Error::Unsupported(format!("input '{}' has no element type", i.name)))?;
        let shape =
            i.concrete_shape().ok_or_else(|| Error::Input(format!("input '{}' has no static shape", i.name)))?;
        let io = io_dtype(dt)?;
        ctx.b.types.insert(name.clone(), TType::new(io, &shape));
        ctx.b.inputs.push((name.clone(), TType::new(io, &shape)));
        let inner = mil_dtype(dt, ctx.opts.compute)?;
        let v = if inner != io {
            let d = ctx.b.const_str(&format!("{name}_to_{}_dtype", cast_name(inner)), cast_name(inner))?;
            ctx.b.op1(
                "cast",
                &format!("{name}_to_{}", cast_name(inner)),
                &[("x", &[name]), ("dtype", &[&d])],
                TType::new(inner, &shape),
            )?
        } else {
            name.clone()
        };
        ctx.vals.insert(i.name.clone(), v);
        inputs.push((name.clone(), io, shape));
    }
    for (idx, n) in g.nodes.iter().enumerate() {
        if ctx.absorbed.contains(&idx) {
            continue;
        }
        ctx.convert_node(idx, n)?;
    }
    let mut outputs = Vec::new();
    let mut block_outputs = Vec::new();
    for (o, name) in g.outputs.iter().zip(&out_names) {
        if opts.states.iter().any(|s| s.present == o.name) {
            continue;
        }
        let n = Node::new("Identity", &o.name, &[&o.name], &[&o.name]);
        let v = ctx.val(&n, &o.name)?;
        let t = ctx.b.ty(&v)?.clone();
        let dt = o
            .dtype
            .or_else(|| ctx.g.dtype_of(&o.name))
            .ok_or_else(|| Error::Unsupported(format!("output '{}' has no type", o.name)))?;
        let io = io_dtype(dt)?;
        // The output value must carry the interface name.
        let final_v = if t.dtype != io {
            let d = ctx.b.const_str(&format!("{name}_dtype"), cast_name(io))?;
            ctx.b.op1("cast", "__tmp", &[("x", &[&v]), ("dtype", &[&d])], TType::new(io, &t.shape))?
        } else {
            ctx.b.op1("identity", "__tmp", &[("x", &[&v])], t.clone())?
        };
        rename_last_output(&mut ctx.b, &final_v, name);
        outputs.push((name.clone(), io, t.shape.clone()));
        block_outputs.push(name.clone());
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for op in &ctx.b.ops {
        if op.r#type != "const" {
            *counts.entry(op.r#type.clone()).or_default() += 1;
        }
    }
    let mut op_counts: Vec<(String, usize)> = counts.into_iter().collect();
    op_counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let compressed = ctx.compressed;
    let function = ctx.b.finish(opts.opset, block_outputs);
    Ok(ConvertedFunction { function, inputs, outputs, states, op_counts, weights_compressed: compressed })
}

/// Gives the last operation's output (named `from`) the reserved `to`.
fn rename_last_output(b: &mut FnBuilder, from: &str, to: &str) {
    let t = b.types.remove(from).expect("typed");
    b.types.insert(to.to_string(), t);
    if let Some(op) = b.ops.last_mut() {
        for o in &mut op.outputs {
            if o.name == from {
                o.name = to.to_string();
            }
        }
        if let Some(v) = op.attributes.get_mut("name") {
            if let Some(crate::spec::value::Value::ImmediateValue(iv)) = &mut v.value {
                if let Some(crate::spec::TensorValue { values: Some(crate::spec::tensor_value::Values::Strings(s)) }) =
                    &mut iv.tensor
                {
                    s.values = vec![to.to_string()];
                }
            }
        }
    }
}
