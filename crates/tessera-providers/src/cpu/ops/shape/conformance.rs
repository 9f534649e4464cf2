//! Runs ONNX backend node test cases through the shape operators.
//!
//! The cases come from a text dump of `onnx.backend.test.case.node`
//! (one graph per case, tensors in hex); the test is ignored and does
//! nothing unless `TESSERA_SHAPE_CASES` names such a file:
//!
//! ```text
//! case NAME            tol RTOL ATOL          opset DOMAIN|- VERSION
//! node OP NAME|-       in K names|-...        out K names|-...
//! attr NAME i V | f HEXF32 | s HEX | is K v... | fs K HEXF32... | t TENSOR | ss ... | sparse
//! init NAME TENSOR     set                    input NAME TENSOR     expect NAME TENSOR     done
//! TENSOR = ONNX_DTYPE RANK DIMS... HEX|-
//! ```

use std::collections::HashMap;

use tessera_core::{Attr, DType, Node, Tensor};

use crate::cpu::registry::{BuildCtx, OpRegistry, RunCtx};

type Named = Vec<(String, Tensor)>;

#[derive(Default)]
struct Case {
    name: String,
    tol: (f64, f64),
    opsets: HashMap<String, i64>,
    nodes: Vec<Node>,
    inits: HashMap<String, Tensor>,
    sets: Vec<(Named, Named)>,
    unreadable: Option<String>,
}

fn hex(s: &str) -> Vec<u8> {
    if s == "-" {
        return vec![];
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn name(s: &str) -> String {
    if s == "-" {
        String::new()
    } else {
        s.to_string()
    }
}

/// Parses a TENSOR; returns it and the number of tokens used.
fn tensor(t: &[&str]) -> Result<(Tensor, usize), String> {
    let code: i32 = t[0].parse().unwrap();
    let rank: usize = t[1].parse().unwrap();
    let dims: Vec<usize> = t[2..2 + rank].iter().map(|d| d.parse().unwrap()).collect();
    let dt = DType::from_onnx(code).map_err(|e| e.to_string())?;
    let x = Tensor::from_bytes(dt, &dims, &hex(t[2 + rank])).map_err(|e| e.to_string())?;
    Ok((x, 3 + rank))
}

fn f32_hex(s: &str) -> f32 {
    f32::from_le_bytes(hex(s).try_into().unwrap())
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut c = Case::default();
    for line in text.lines() {
        let t: Vec<&str> = line.split(' ').collect();
        let res: Result<(), String> = (|| {
            match t[0] {
                "case" => c = Case { name: t[1].into(), tol: (1e-3, 1e-7), ..Default::default() },
                "tol" => c.tol = (t[1].parse().unwrap(), t[2].parse().unwrap()),
                "opset" => {
                    c.opsets.insert(name(t[1]), t[2].parse().unwrap());
                }
                "node" => c.nodes.push(Node::new(t[1], &name(t[2]), &[], &[])),
                "in" | "out" => {
                    let v: Vec<String> = t[2..].iter().map(|s| name(s)).collect();
                    let nd = c.nodes.last_mut().unwrap();
                    if t[0] == "in" {
                        nd.inputs = v;
                    } else {
                        nd.outputs = v;
                    }
                }
                "attr" => {
                    let a = match t[2] {
                        "i" => Attr::Int(t[3].parse().unwrap()),
                        "f" => Attr::Float(f32_hex(t[3])),
                        "s" => Attr::String(hex(t[3])),
                        "is" => {
                            Attr::Ints(t[4..].iter().filter(|s| !s.is_empty()).map(|v| v.parse().unwrap()).collect())
                        }
                        "fs" => Attr::Floats(t[4..].iter().filter(|s| !s.is_empty()).map(|v| f32_hex(v)).collect()),
                        "t" => Attr::Tensor(tensor(&t[3..])?.0),
                        "ss" => Attr::Strings(t[4..].iter().map(|v| hex(v)).collect()),
                        _ => Attr::Graph,
                    };
                    c.nodes.last_mut().unwrap().attrs.insert(t[1].into(), a);
                }
                "init" => {
                    c.inits.insert(t[1].into(), tensor(&t[2..])?.0);
                }
                "set" => c.sets.push((vec![], vec![])),
                "input" => {
                    let x = tensor(&t[2..])?.0;
                    c.sets.last_mut().unwrap().0.push((t[1].into(), x));
                }
                "expect" => {
                    let x = tensor(&t[2..])?.0;
                    c.sets.last_mut().unwrap().1.push((t[1].into(), x));
                }
                "done" => cases.push(std::mem::take(&mut c)),
                _ => {}
            }
            Ok(())
        })();
        if let Err(e) = res {
            c.unreadable.get_or_insert(e);
        }
    }
    cases
}

fn close(got: &Tensor, want: &Tensor, (rtol, atol): (f64, f64)) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!("got {} {:?}, want {} {:?}", got.dtype(), got.shape(), want.dtype(), want.shape()));
    }
    if !want.dtype().is_float() {
        return if got.bytes() == want.bytes() {
            Ok(())
        } else {
            Err(format!("got {:?}, want {:?}", got.to_f64_vec(), want.to_f64_vec()))
        };
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
        if !ok {
            return Err(format!("element {i}: got {a}, want {b} (got {g:?}, want {w:?})"));
        }
    }
    Ok(())
}

fn run_case(reg: &OpRegistry, c: &Case) -> Result<(), String> {
    if let Some(e) = &c.unreadable {
        return Err(format!("unreadable case: {e}"));
    }
    let opset = c.opsets.get("").copied().unwrap_or(1);
    for (ins, want) in &c.sets {
        let mut env: HashMap<String, Tensor> = c.inits.clone();
        env.extend(ins.iter().cloned());
        let mut rc = RunCtx::default();
        for nd in &c.nodes {
            let b = reg.get(&nd.domain, &nd.op_type).ok_or_else(|| format!("{} not registered", nd.op_type))?;
            let inits = &c.inits;
            let lookup = |s: &str| inits.get(s).cloned();
            let op = b(nd, &BuildCtx { opset, constant: &lookup }).map_err(|e| e.to_string())?;
            let inputs: Vec<Option<&Tensor>> =
                nd.inputs.iter().map(|s| if s.is_empty() { None } else { env.get(s) }).collect();
            let outs = op.run(&inputs, &mut rc).map_err(|e| e.to_string())?;
            let names: Vec<String> = nd.outputs.clone();
            for (nm, t) in names.into_iter().zip(outs) {
                if !nm.is_empty() {
                    env.insert(nm, t);
                }
            }
        }
        for (nm, w) in want {
            let g = env.get(nm).ok_or_else(|| format!("output {nm} not produced"))?;
            close(g, w, c.tol).map_err(|e| format!("output {nm}: {e}"))?;
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs TESSERA_SHAPE_CASES (a dump of the ONNX node test cases)"]
fn onnx_node_cases() {
    let Ok(path) = std::env::var("TESSERA_SHAPE_CASES") else { return };
    let text = std::fs::read_to_string(&path).unwrap();
    let mut reg = OpRegistry::new();
    super::register(&mut reg);
    let cases = parse(&text);
    let mut failed = Vec::new();
    for c in &cases {
        if let Err(e) = run_case(&reg, c) {
            let e: String = e.chars().take(600).collect();
            println!("FAIL {}: {e}", c.name);
            failed.push(c.name.clone());
        }
    }
    println!("{} of {} cases passed", cases.len() - failed.len(), cases.len());
    assert!(failed.is_empty(), "failed: {failed:?}");
}
