//! Runs ONNX backend node cases exported as plain files (see the format in
//! `load_case`) through the nn/quant/fused builders. Ignored by default:
//! `TESSERA_NODE_CASES=/dir cargo test -p tessera-providers conformance -- --ignored`.
//!
//! Layout of one case directory: `node.txt` with lines `op`, `domain`,
//! `opset`, `inputs`, `outputs`, `tol <rtol> <atol>` and `attr <name>
//! <int|float|ints|floats|string> <values...>` (strings hex-encoded), plus
//! `in_<i>.hdr`/`.raw` and `out_<i>.hdr`/`.raw` tensors, the header holding
//! `<onnx dtype code> <rank> <dims...>`.

use std::path::Path;

use tessera_core::{Attr, DType, Node, Tensor};

use super::testutil::run_node;

fn read_tensor(base: &Path) -> Option<Tensor> {
    let hdr = std::fs::read_to_string(base.with_extension("hdr")).ok()?;
    let v: Vec<i64> = hdr.split_whitespace().map(|s| s.parse().unwrap()).collect();
    let dt = DType::from_onnx(v[0] as i32).ok()?;
    let shape: Vec<usize> = v[2..2 + v[1] as usize].iter().map(|&d| d as usize).collect();
    let raw = std::fs::read(base.with_extension("raw")).ok()?;
    Tensor::from_bytes(dt, &shape, &raw).ok()
}

struct Case {
    node: Node,
    opset: i64,
    rtol: f64,
    atol: f64,
    inputs: Vec<Option<Tensor>>,
    outputs: Vec<Tensor>,
}

fn load_case(dir: &Path) -> Option<Case> {
    let text = std::fs::read_to_string(dir.join("node.txt")).ok()?;
    let mut node = Node::new("", dir.file_name()?.to_str()?, &[], &[]);
    let (mut opset, mut rtol, mut atol) = (1, 1e-3, 1e-7);
    for line in text.lines() {
        let mut it = line.splitn(2, ' ');
        let key = it.next()?;
        let rest = it.next().unwrap_or("");
        match key {
            "op" => node.op_type = rest.to_string(),
            "domain" => node.domain = rest.to_string(),
            "opset" => opset = rest.parse().ok()?,
            "inputs" => {
                node.inputs = rest.split_whitespace().map(|s| if s == "-" { String::new() } else { s.into() }).collect()
            }
            "outputs" => {
                node.outputs =
                    rest.split_whitespace().map(|s| if s == "-" { String::new() } else { s.into() }).collect()
            }
            "tol" => {
                let v: Vec<f64> = rest.split_whitespace().map(|s| s.parse().unwrap()).collect();
                (rtol, atol) = (v[0], v[1]);
            }
            "attr" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let (name, kind, vals) = (parts[0], parts[1], &parts[2..]);
                let a = match kind {
                    "int" => Attr::Int(vals[0].parse().ok()?),
                    "float" => Attr::Float(vals[0].parse().ok()?),
                    "ints" => Attr::Ints(vals.iter().map(|v| v.parse().unwrap()).collect()),
                    "floats" => Attr::Floats(vals.iter().map(|v| v.parse().unwrap()).collect()),
                    "string" => {
                        let h = vals.first().copied().unwrap_or("");
                        Attr::String(
                            (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect(),
                        )
                    }
                    _ => return None,
                };
                node.attrs.insert(name.to_string(), a);
            }
            _ => {}
        }
    }
    let mut inputs = Vec::new();
    let mut k = 0;
    for name in node.inputs.clone() {
        if name.is_empty() {
            inputs.push(None);
        } else {
            inputs.push(Some(read_tensor(&dir.join(format!("in_{k}")))?));
            k += 1;
        }
    }
    let mut outputs = Vec::new();
    let mut i = 0;
    while let Some(t) = read_tensor(&dir.join(format!("out_{i}"))) {
        outputs.push(t);
        i += 1;
    }
    Some(Case { node, opset, rtol, atol, inputs, outputs })
}

fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("dtype {} vs {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} vs {:?}", got.shape(), want.shape()));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if want.dtype().is_float() {
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs()
        } else {
            a == b
        };
        if !ok {
            return Err(format!("element {i}: {a} vs {b}"));
        }
    }
    Ok(())
}

#[test]
#[ignore]
fn onnx_node_cases() {
    let Ok(dir) = std::env::var("TESSERA_NODE_CASES") else { return };
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    let (mut pass, mut fail) = (0, Vec::new());
    for p in names {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let Some(case) = load_case(&p) else {
            fail.push(format!("{name}: could not load"));
            continue;
        };
        let res = std::panic::catch_unwind(|| run_node(&case.node, case.opset, &case.inputs));
        let verdict = match res {
            Err(_) => Err("panicked".to_string()),
            Ok(Err(e)) => Err(format!("error: {e}")),
            Ok(Ok(outs)) => {
                let mut r = Ok(());
                for (i, want) in case.outputs.iter().enumerate() {
                    match outs.get(i) {
                        None => r = Err(format!("missing output {i}")),
                        Some(got) => {
                            if let Err(e) = compare(got, want, case.rtol, case.atol) {
                                r = Err(format!("output {i}: {e}"));
                            }
                        }
                    }
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        };
        match verdict {
            Ok(()) => pass += 1,
            Err(e) => fail.push(format!("{name}: {e}")),
        }
    }
    eprintln!("{pass} passed, {} failed", fail.len());
    for f in &fail {
        eprintln!("FAIL {f}");
    }
    assert!(fail.is_empty());
}
