//! Runs ONNX backend node test cases exported to a line format by a small
//! Python script (onnx's `collect_testcases()`; see the module's README
//! comment below) through the CPU registry, node by node.
//!
//! Ignored by default; run with
//! `TESSERA_NODE_CASES=/path/cases.txt cargo test -p tessera-providers onnx_node_cases -- --ignored --nocapture`.
//!
//! Format, one item per line (hex for raw little-endian data, `-` for none):
//! `case NAME OPSET`, `node OP NIN IN.. NOUT OUT..`, `attr NAME int|float|string|ints|floats ...`
//! (floats as f32 bit patterns), `attr_tensor NAME CODE RANK DIMS.. HEX`,
//! `init|in|out NAME CODE RANK DIMS.. HEX`, `end`.

use std::collections::HashMap;

use tessera_core::{Attr, DType, Node, Tensor};

use crate::cpu::registry::{BuildCtx, OpRegistry, RunCtx};

struct Case {
    name: String,
    opset: i64,
    nodes: Vec<Node>,
    values: HashMap<String, Tensor>,
    inputs: Vec<String>,
    outputs: Vec<(String, Tensor)>,
}

fn hex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn tensor(parts: &[&str]) -> (String, Tensor) {
    let name = parts[0].to_string();
    let code: i32 = parts[1].parse().unwrap();
    let rank: usize = parts[2].parse().unwrap();
    let dims: Vec<usize> = parts[3..3 + rank].iter().map(|d| d.parse().unwrap()).collect();
    let data = hex(parts.get(3 + rank).copied().unwrap_or("-"));
    let dt = DType::from_onnx(code).unwrap();
    (name, Tensor::from_bytes(dt, &dims, &data).unwrap())
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut cur: Option<Case> = None;
    for line in text.lines() {
        let p: Vec<&str> = line.split_whitespace().collect();
        match p[0] {
            "case" => {
                cur = Some(Case {
                    name: p[1].into(),
                    opset: p[2].parse().unwrap(),
                    nodes: vec![],
                    values: HashMap::new(),
                    inputs: vec![],
                    outputs: vec![],
                })
            }
            "node" => {
                let c = cur.as_mut().unwrap();
                let nin: usize = p[2].parse().unwrap();
                let ins: Vec<&str> = p[3..3 + nin].iter().map(|s| if *s == "-" { "" } else { *s }).collect();
                let nout: usize = p[3 + nin].parse().unwrap();
                let outs: Vec<&str> = p[4 + nin..4 + nin + nout].to_vec();
                let name = format!("n{}", c.nodes.len());
                c.nodes.push(Node::new(p[1], &name, &ins, &outs));
            }
            "attr" => {
                let c = cur.as_mut().unwrap();
                let f = |s: &str| f32::from_bits(s.parse().unwrap());
                let a = match p[2] {
                    "int" => Attr::Int(p[3].parse().unwrap()),
                    "float" => Attr::Float(f(p[3])),
                    "string" => Attr::String(hex(p[3])),
                    "ints" => Attr::Ints(p[4..].iter().map(|s| s.parse().unwrap()).collect()),
                    "floats" => Attr::Floats(p[4..].iter().map(|s| f(s)).collect()),
                    other => panic!("attribute kind {other}"),
                };
                c.nodes.last_mut().unwrap().attrs.insert(p[1].into(), a);
            }
            "attr_tensor" => {
                let c = cur.as_mut().unwrap();
                let (name, t) = tensor(&p[1..]);
                c.nodes.last_mut().unwrap().attrs.insert(name, Attr::Tensor(t));
            }
            "init" | "in" => {
                let c = cur.as_mut().unwrap();
                let (name, t) = tensor(&p[1..]);
                if p[0] == "in" {
                    c.inputs.push(name.clone());
                }
                c.values.insert(name, t);
            }
            "out" => {
                let c = cur.as_mut().unwrap();
                c.outputs.push(tensor(&p[1..]));
            }
            "end" => cases.push(cur.take().unwrap()),
            _ => {}
        }
    }
    cases
}

fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!("got {} {:?}, want {} {:?}", got.dtype(), got.shape(), want.dtype(), want.shape()));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let exact = !want.dtype().is_float();
    // The ONNX runner's tolerances; bfloat16 gets two ulps (as `tessera conformance`).
    let (rtol, atol) = if want.dtype() == DType::BF16 { (2f64.powi(-6), 1e-7) } else { (1e-3, 1e-7) };
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok =
            if exact { a == b } else { (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs() };
        if !ok {
            return Err(format!("element {i}: got {a}, want {b}"));
        }
    }
    Ok(())
}

fn run_case(reg: &OpRegistry, c: &Case) -> Result<(), String> {
    let mut values = c.values.clone();
    for n in &c.nodes {
        let b = reg.get("", &n.op_type).ok_or_else(|| format!("SKIP no builder for {}", n.op_type))?;
        let consts = c.values.clone();
        let lookup = move |name: &str| if name.is_empty() { None } else { consts.get(name).cloned() };
        let ctx = BuildCtx { opset: c.opset, constant: &lookup };
        let op = b(n, &ctx).map_err(|e| format!("build {}: {e}", n.op_type))?;
        let ins: Vec<Option<&Tensor>> =
            n.inputs.iter().map(|i| if i.is_empty() { None } else { values.get(i) }).collect();
        let outs = op.run(&ins, &mut RunCtx::default()).map_err(|e| format!("run {}: {e}", n.op_type))?;
        for (name, t) in n.outputs.iter().zip(outs) {
            values.insert(name.clone(), t);
        }
    }
    for (name, want) in &c.outputs {
        let got = values.get(name).ok_or_else(|| format!("output {name} missing"))?;
        close(got, want).map_err(|e| format!("output {name}: {e}"))?;
    }
    Ok(())
}

#[test]
#[ignore]
fn onnx_node_cases() {
    let Ok(path) = std::env::var("TESSERA_NODE_CASES") else {
        eprintln!("TESSERA_NODE_CASES not set; nothing to run");
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let reg = OpRegistry::with_all_ops();
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    let mut failed_single = Vec::new();
    for c in parse(&text) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(&reg, &c))) {
            Ok(Ok(())) => pass += 1,
            Ok(Err(e)) if e.starts_with("SKIP") => {
                skip += 1;
                eprintln!("skip {}: {e}", c.name);
            }
            Ok(Err(e)) => {
                fail += 1;
                eprintln!("FAIL {} (opset {}): {e}", c.name, c.opset);
                if c.nodes.len() == 1 {
                    failed_single.push(c.name.clone());
                }
            }
            Err(_) => {
                fail += 1;
                eprintln!("PANIC {}", c.name);
                failed_single.push(c.name.clone());
            }
        }
    }
    eprintln!("{pass} passed, {fail} failed, {skip} skipped");
    assert!(failed_single.is_empty(), "single-node failures: {failed_single:?}");
}
