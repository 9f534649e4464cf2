//! Einsum: any equation, explicit or implicit output, repeated labels
//! (diagonals and traces), broadcasting ellipsis. Operands are reduced to
//! unique labels, labels nobody else needs are summed out early, and the
//! operands are contracted left to right, each contraction lowered to a
//! batched matmul over (batch, m, k) x (batch, k, n).

use std::collections::BTreeSet;

use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::gemm::BatchRef;

use super::common::{for_each_strided, strides_of};
use super::matmul::{half_to_f32, store_f32, with_mat_elem, MatElem};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::req;

pub fn register(r: &mut OpRegistry) {
    r.add("Einsum", build_einsum);
}

/// Labels are numbered so that sorting them sorts the letters by character
/// code ('A'..'Z' then 'a'..'z'); ellipsis dimensions come after.
const ELLIPSIS_BASE: usize = 52;

#[derive(Clone, Debug, PartialEq)]
enum Sym {
    Label(usize),
    Ellipsis,
}

fn parse_term(node: &Node, t: &str) -> Result<Vec<Sym>> {
    let mut out = Vec::new();
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c @ b'A'..=b'Z' => out.push(Sym::Label((c - b'A') as usize)),
            c @ b'a'..=b'z' => out.push(Sym::Label(26 + (c - b'a') as usize)),
            b'.' if b[i..].starts_with(b"...") => {
                if out.contains(&Sym::Ellipsis) {
                    return Err(Error::node(node, format!("term '{t}' has more than one ellipsis")));
                }
                out.push(Sym::Ellipsis);
                i += 2;
            }
            c => return Err(Error::node(node, format!("invalid character '{}' in equation", c as char))),
        }
        i += 1;
    }
    Ok(out)
}

/// A parsed equation: the labels of each operand dimension and of the output.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Equation {
    pub inputs: Vec<Vec<usize>>,
    pub output: Vec<usize>,
}

/// Expands a term against an operand rank, numbering ellipsis dimensions
/// right-aligned over `ell` broadcast dimensions.
fn expand(node: &Node, term: &[Sym], rank: usize, ell: usize) -> Result<Vec<usize>> {
    let letters = term.iter().filter(|s| matches!(s, Sym::Label(_))).count();
    let has_ell = term.contains(&Sym::Ellipsis);
    if (!has_ell && rank != letters) || rank < letters {
        return Err(Error::node(node, format!("a term with {letters} labels cannot index a rank-{rank} operand")));
    }
    let e = rank - letters;
    let mut out = Vec::with_capacity(rank);
    for s in term {
        match s {
            Sym::Label(l) => out.push(*l),
            Sym::Ellipsis => out.extend((ell - e..ell).map(|j| ELLIPSIS_BASE + j)),
        }
    }
    Ok(out)
}

pub(crate) fn parse_equation(node: &Node, eq: &str, ranks: &[usize]) -> Result<Equation> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Vec<Sym>> = lhs.split(',').map(|t| parse_term(node, t)).collect::<Result<_>>()?;
    if terms.len() != ranks.len() {
        return Err(Error::node(
            node,
            format!("equation has {} operands, node has {} inputs", terms.len(), ranks.len()),
        ));
    }
    let mut ell = 0;
    for (t, &r) in terms.iter().zip(ranks) {
        if t.contains(&Sym::Ellipsis) {
            let letters = t.iter().filter(|s| matches!(s, Sym::Label(_))).count();
            ell = ell.max(r.saturating_sub(letters));
        }
    }
    let inputs: Vec<Vec<usize>> =
        terms.iter().zip(ranks).map(|(t, &r)| expand(node, t, r, ell)).collect::<Result<_>>()?;
    let output = match rhs {
        Some(r) => {
            let t = parse_term(node, r)?;
            let mut out = Vec::new();
            for s in t {
                match s {
                    Sym::Label(l) => {
                        if out.contains(&l) {
                            return Err(Error::node(node, "output repeats a label"));
                        }
                        if !inputs.iter().any(|i| i.contains(&l)) {
                            return Err(Error::node(node, "output label does not appear in any input"));
                        }
                        out.push(l)
                    }
                    Sym::Ellipsis => out.extend((0..ell).map(|j| ELLIPSIS_BASE + j)),
                }
            }
            out
        }
        None => {
            let mut count = [0usize; ELLIPSIS_BASE];
            for i in &inputs {
                for &l in i.iter().filter(|&&l| l < ELLIPSIS_BASE) {
                    count[l] += 1;
                }
            }
            let mut out: Vec<usize> = (0..ell).map(|j| ELLIPSIS_BASE + j).collect();
            out.extend((0..ELLIPSIS_BASE).filter(|&l| count[l] == 1));
            out
        }
    };
    Ok(Equation { inputs, output })
}

/// An intermediate operand: dense data over unique labels.
struct Operand<T> {
    data: Vec<T>,
    labels: Vec<usize>,
    shape: Vec<usize>,
}

impl<T: MatElem> Operand<T> {
    /// Merges repeated labels into their diagonal.
    fn diagonal(data: &[T], labels: &[usize], shape: &[usize]) -> Operand<T> {
        let st = strides_of(shape);
        let mut ul: Vec<usize> = Vec::new();
        let mut us: Vec<usize> = Vec::new();
        let mut ust: Vec<usize> = Vec::new();
        for (d, &l) in labels.iter().enumerate() {
            match ul.iter().position(|&u| u == l) {
                Some(p) => {
                    us[p] = us[p].min(shape[d]);
                    ust[p] += st[d];
                }
                None => {
                    ul.push(l);
                    us.push(shape[d]);
                    ust.push(st[d]);
                }
            }
        }
        let n: usize = us.iter().product();
        let mut out = vec![T::default(); n];
        for_each_strided(&us, &ust, |o, s| out[o] = data[s]);
        Operand { data: out, labels: ul, shape: us }
    }

    /// Sums out the labels in `remove`.
    fn sum_out(self, remove: &BTreeSet<usize>) -> Operand<T> {
        if !self.labels.iter().any(|l| remove.contains(l)) {
            return self;
        }
        let kept_shape: Vec<usize> =
            self.labels.iter().zip(&self.shape).map(|(l, &d)| if remove.contains(l) { 1 } else { d }).collect();
        let ks = strides_of(&kept_shape);
        let st: Vec<usize> = self.labels.iter().zip(ks).map(|(l, s)| if remove.contains(l) { 0 } else { s }).collect();
        let mut out = vec![T::default(); kept_shape.iter().product()];
        let data = &self.data;
        for_each_strided(&self.shape, &st, |i, k| out[k] = out[k].add(data[i]));
        let (labels, shape) =
            self.labels.iter().zip(&self.shape).filter(|(l, _)| !remove.contains(l)).map(|(&l, &d)| (l, d)).unzip();
        Operand { data: out, labels, shape }
    }

    /// The data laid out in `order` (every label of `order` must be one of
    /// ours or have size 1 in `sizes`), broadcasting size-1 dimensions to `sizes`.
    fn arrange(&self, order: &[usize], sizes: &[usize]) -> Vec<T> {
        let st = strides_of(&self.shape);
        let strides: Vec<usize> = order
            .iter()
            .map(|l| match self.labels.iter().position(|x| x == l) {
                Some(p) if self.shape[p] != 1 => st[p],
                _ => 0,
            })
            .collect();
        let n: usize = sizes.iter().product();
        let mut out = vec![T::default(); n];
        for_each_strided(sizes, &strides, |o, s| out[o] = self.data[s]);
        out
    }

    fn size_of(&self, l: usize) -> Option<usize> {
        self.labels.iter().position(|&x| x == l).map(|p| self.shape[p])
    }
}

/// Contracts `a` and `b`, keeping the labels in `keep`.
fn contract<T: MatElem>(a: Operand<T>, b: Operand<T>, keep: &BTreeSet<usize>) -> Operand<T> {
    // Labels of one side that the other side and the rest do not need.
    let a_only: BTreeSet<usize> =
        a.labels.iter().filter(|l| !b.labels.contains(l) && !keep.contains(l)).copied().collect();
    let b_only: BTreeSet<usize> =
        b.labels.iter().filter(|l| !a.labels.contains(l) && !keep.contains(l)).copied().collect();
    let (mut a, mut b) = (a.sum_out(&a_only), b.sum_out(&b_only));
    // Contracted labels whose sizes differ (one side broadcasts with size
    // 1) are summed on each side separately.
    let ragged: BTreeSet<usize> = a
        .labels
        .iter()
        .filter(|&&l| !keep.contains(&l) && b.size_of(l).is_some_and(|s| Some(s) != a.size_of(l)))
        .copied()
        .collect();
    if !ragged.is_empty() {
        a = a.sum_out(&ragged);
        b = b.sum_out(&ragged);
    }
    let batch: Vec<usize> = a.labels.iter().filter(|l| b.labels.contains(l) && keep.contains(l)).copied().collect();
    let kdims: Vec<usize> = a.labels.iter().filter(|l| b.labels.contains(l) && !keep.contains(l)).copied().collect();
    let mdims: Vec<usize> = a.labels.iter().filter(|l| !b.labels.contains(l)).copied().collect();
    let ndims: Vec<usize> = b.labels.iter().filter(|l| !a.labels.contains(l)).copied().collect();
    let size = |l: usize| a.size_of(l).unwrap_or(1).max(b.size_of(l).unwrap_or(1));
    let bs: Vec<usize> = batch.iter().map(|&l| size(l)).collect();
    let ks: Vec<usize> = kdims.iter().map(|&l| size(l)).collect();
    let ms: Vec<usize> = mdims.iter().map(|&l| size(l)).collect();
    let ns: Vec<usize> = ndims.iter().map(|&l| size(l)).collect();
    let (nb, k, m, n) = (
        bs.iter().product::<usize>(),
        ks.iter().product::<usize>(),
        ms.iter().product::<usize>(),
        ns.iter().product::<usize>(),
    );
    let a_order: Vec<usize> = batch.iter().chain(&mdims).chain(&kdims).copied().collect();
    let a_sizes: Vec<usize> = bs.iter().chain(&ms).chain(&ks).copied().collect();
    let b_order: Vec<usize> = batch.iter().chain(&kdims).chain(&ndims).copied().collect();
    let b_sizes: Vec<usize> = bs.iter().chain(&ks).chain(&ns).copied().collect();
    let ad = a.arrange(&a_order, &a_sizes);
    let bd = b.arrange(&b_order, &b_sizes);
    let a_off: Vec<usize> = (0..nb).map(|i| i * m * k).collect();
    let b_off: Vec<usize> = (0..nb).map(|i| i * k * n).collect();
    let mut out = vec![T::default(); nb * m * n];
    T::bmm(
        BatchRef { data: &ad, offsets: &a_off, rows: m, cols: k, row_stride: k, col_stride: 1 },
        BatchRef { data: &bd, offsets: &b_off, rows: k, cols: n, row_stride: n, col_stride: 1 },
        &mut out,
    );
    let labels = batch.iter().chain(&mdims).chain(&ndims).copied().collect();
    let shape = bs.iter().chain(&ms).chain(&ns).copied().collect();
    Operand { data: out, labels, shape }
}

/// Evaluates the equation on native-typed operands.
fn einsum<T: MatElem>(node: &Node, eq: &Equation, ops: &[(&[T], &[usize])]) -> Result<(Vec<T>, Vec<usize>)> {
    // Label sizes, with size-1 broadcasting.
    let mut sizes = std::collections::BTreeMap::<usize, usize>::new();
    for (labels, (_, shape)) in eq.inputs.iter().zip(ops) {
        for (&l, &d) in labels.iter().zip(shape.iter()) {
            let e = sizes.entry(l).or_insert(d);
            if *e != d {
                if *e == 1 {
                    *e = d;
                } else if d != 1 {
                    return Err(Error::node(node, format!("label sizes {} and {d} do not agree", *e)));
                }
            }
        }
    }
    let out_shape: Vec<usize> = eq.output.iter().map(|l| sizes.get(l).copied().unwrap_or(1)).collect();
    tessera_core::tensor::checked_numel(&out_shape)?;
    let mut operands: Vec<Operand<T>> =
        eq.inputs.iter().zip(ops).map(|(l, (d, s))| Operand::diagonal(d, l, s)).collect();
    let out_set: BTreeSet<usize> = eq.output.iter().copied().collect();
    let rest = operands.split_off(1);
    let mut cur = operands.remove(0);
    // Labels needed after operand i of `rest`: the output and later operands.
    let keeps: Vec<BTreeSet<usize>> = (0..rest.len())
        .map(|i| {
            let mut s = out_set.clone();
            for o in &rest[i + 1..] {
                s.extend(o.labels.iter().copied());
            }
            s
        })
        .collect();
    let mut need = out_set.clone();
    for o in &rest {
        need.extend(o.labels.iter().copied());
    }
    let drop: BTreeSet<usize> = cur.labels.iter().filter(|l| !need.contains(l)).copied().collect();
    cur = cur.sum_out(&drop);
    for (b, keep) in rest.into_iter().zip(keeps) {
        cur = contract(cur, b, &keep);
    }
    let drop: BTreeSet<usize> = cur.labels.iter().filter(|l| !out_set.contains(l)).copied().collect();
    let cur = cur.sum_out(&drop);
    Ok((cur.arrange(&eq.output, &out_shape), out_shape))
}

fn build_einsum(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let eq = node.attr_string("equation")?.ok_or_else(|| Error::node(&node, "equation is required"))?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let ts: Vec<&Tensor> =
            (0..node.inputs.len().max(inputs.len())).map(|i| req(&node, inputs, i)).collect::<Result<_>>()?;
        if ts.is_empty() {
            return Err(Error::node(&node, "Einsum needs at least one input"));
        }
        let dt = ts[0].dtype();
        if ts.iter().any(|t| t.dtype() != dt) {
            return Err(Error::node(&node, "Einsum inputs must share one type"));
        }
        let ranks: Vec<usize> = ts.iter().map(|t| t.rank()).collect();
        let parsed = parse_equation(&node, &eq, &ranks)?;
        if matches!(dt, DType::F16 | DType::BF16) {
            let wide: Vec<Vec<f32>> = ts.iter().map(|t| half_to_f32(t)).collect::<Result<_>>()?;
            let ops: Vec<(&[f32], &[usize])> = wide.iter().zip(&ts).map(|(w, t)| (w.as_slice(), t.shape())).collect();
            let (vals, shape) = einsum(&node, &parsed, &ops)?;
            let mut out = ctx.alloc(dt, &shape)?;
            store_f32(&vals, &mut out)?;
            return Ok(vec![out]);
        }
        with_mat_elem!(dt, &node, T => {
            let ops: Vec<(&[T], &[usize])> =
                ts.iter().map(|t| Ok((t.as_slice::<T>()?, t.shape()))).collect::<Result<_>>()?;
            let (vals, shape) = einsum(&node, &parsed, &ops)?;
            let mut out = ctx.alloc(dt, &shape)?;
            out.as_mut_slice::<T>()?.copy_from_slice(&vals);
            Ok(vec![out])
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, t_f32};
    use tessera_core::Attr;

    fn es(eq: &str, inputs: Vec<Tensor>) -> Tensor {
        let names: Vec<String> = (0..inputs.len()).map(|i| format!("x{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let n = Node::new("Einsum", "e", &refs, &["y"]).with_attr("equation", Attr::String(eq.as_bytes().to_vec()));
        run_node(&n, 12, &inputs.into_iter().map(Some).collect::<Vec<_>>()).unwrap().remove(0)
    }

    #[test]
    fn parse_implicit_and_ellipsis() {
        let n = Node::new("Einsum", "e", &[], &[]);
        let e = parse_equation(&n, "ij,jk", &[2, 2]).unwrap();
        assert_eq!(e.output, vec![26 + 8, 26 + 10]);
        let e = parse_equation(&n, "...ij,...jk->...ik", &[3, 4]).unwrap();
        assert_eq!(e.inputs[0], vec![53, 34, 35]);
        assert_eq!(e.inputs[1], vec![52, 53, 35, 36]);
        assert_eq!(e.output, vec![52, 53, 34, 36]);
        let e = parse_equation(&n, "Ba,aB", &[2, 2]).unwrap();
        assert!(e.output.is_empty());
        assert!(parse_equation(&n, "ij->ij", &[3]).is_err());
        assert!(parse_equation(&n, "i,i", &[1]).is_err());
    }

    #[test]
    fn einsum_cases() {
        let a = t_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = t_f32(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
        let y = es("ij,jk->ik", vec![a.clone(), b.clone()]);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[4., 5., 10., 11.]);
        // transpose, implicit output of a single operand
        let y = es("ji", vec![a.clone()]);
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[1., 4., 2., 5., 3., 6.]);
        // sum over rows, full sum
        let y = es("ij->i", vec![a.clone()]);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[6., 15.]);
        let y = es("ij->", vec![a.clone()]);
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[21.]);
        // trace and diagonal
        let sq = t_f32(&[3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        assert_eq!(es("ii", vec![sq.clone()]).as_slice::<f32>().unwrap(), &[15.]);
        assert_eq!(es("ii->i", vec![sq.clone()]).as_slice::<f32>().unwrap(), &[1., 5., 9.]);
        // outer product, three operands, batch matmul with broadcast ellipsis
        let v = t_f32(&[2], &[1., 2.]);
        let w = t_f32(&[3], &[1., 10., 100.]);
        assert_eq!(es("i,j", vec![v.clone(), w.clone()]).as_slice::<f32>().unwrap(), &[1., 10., 100., 2., 20., 200.]);
        let y = es("i,ij,jk->k", vec![v.clone(), a.clone(), b.clone()]);
        // v @ a = [9, 12, 15]; @ b = [9 + 15, 12 + 15]
        assert_eq!(y.as_slice::<f32>().unwrap(), &[24., 27.]);
        let bat = t_f32(&[2, 1, 2], &[1., 2., 3., 4.]);
        let y = es("...ij,jk->...ik", vec![bat, t_f32(&[2, 2], &[1., 1., 0., 1.])]);
        assert_eq!(y.shape(), &[2, 1, 2]);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[1., 3., 3., 7.]);
        // batch diagonal with ellipsis
        let x = t_f32(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(es("...ii->...i", vec![x]).as_slice::<f32>().unwrap(), &[1., 4., 5., 8.]);
        // integer inner product
        let p = Tensor::from_vec(&[3], vec![1i64, 2, 3]).unwrap();
        assert_eq!(es("i,i", vec![p.clone(), p]).to_i64_vec().unwrap(), vec![14]);
    }
}
