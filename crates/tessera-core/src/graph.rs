//! The graph IR: nodes in topological order, values named by strings (as in
//! ONNX, so error messages can quote the model's own names), constants held
//! as tensors.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{DType, Error, Result, Tensor};

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(usize),
    /// A named symbolic dimension such as `batch` or `seq`.
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(d) => Some(*d),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Known(d) => write!(f, "{d}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Type and (possibly partial) shape of a value.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: Option<DType>,
    pub shape: Option<Vec<Dim>>,
}

impl ValueInfo {
    pub fn concrete_shape(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(|d| d.known()).collect()
    }

    pub fn shape_string(&self) -> String {
        match &self.shape {
            None => "?".into(),
            Some(s) => format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    /// A subgraph (If/Loop/Scan bodies). Kept only as a marker: control flow
    /// is reported as unsupported by the providers for now.
    Graph,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// Operator domain; "" is the default ONNX domain.
    pub domain: String,
    /// Input value names; an empty string marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: BTreeMap<String, Attr>,
}

impl Node {
    pub fn new(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            name: name.into(),
            op_type: op_type.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs: BTreeMap::new(),
        }
    }

    pub fn with_attr(mut self, key: &str, a: Attr) -> Node {
        self.attrs.insert(key.into(), a);
        self
    }

    /// Name of input `i`, or None when absent or omitted.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    pub fn attr_int(&self, key: &str) -> Result<Option<i64>> {
        match self.attrs.get(key) {
            None => Ok(None),
            Some(Attr::Int(v)) => Ok(Some(*v)),
            Some(_) => Err(Error::node(self, format!("attribute '{key}' must be an int"))),
        }
    }
    pub fn attr_int_or(&self, key: &str, d: i64) -> Result<i64> {
        Ok(self.attr_int(key)?.unwrap_or(d))
    }
    pub fn attr_float(&self, key: &str) -> Result<Option<f32>> {
        match self.attrs.get(key) {
            None => Ok(None),
            Some(Attr::Float(v)) => Ok(Some(*v)),
            Some(Attr::Int(v)) => Ok(Some(*v as f32)),
            Some(_) => Err(Error::node(self, format!("attribute '{key}' must be a float"))),
        }
    }
    pub fn attr_float_or(&self, key: &str, d: f32) -> Result<f32> {
        Ok(self.attr_float(key)?.unwrap_or(d))
    }
    pub fn attr_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.attrs.get(key) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Int(v)) => Ok(Some(vec![*v])),
            Some(_) => Err(Error::node(self, format!("attribute '{key}' must be a list of ints"))),
        }
    }
    pub fn attr_floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        match self.attrs.get(key) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v.clone())),
            Some(_) => Err(Error::node(self, format!("attribute '{key}' must be a list of floats"))),
        }
    }
    pub fn attr_string(&self, key: &str) -> Result<Option<String>> {
        match self.attrs.get(key) {
            None => Ok(None),
            Some(Attr::String(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            Some(_) => Err(Error::node(self, format!("attribute '{key}' must be a string"))),
        }
    }
    pub fn attr_tensor(&self, key: &str) -> Result<Option<&Tensor>> {
        match self.attrs.get(key) {
            None => Ok(None),
            Some(Attr::Tensor(t)) => Ok(Some(t)),
            Some(_) => Err(Error::node(self, format!("attribute '{key}' must be a tensor"))),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    /// Nodes, kept in topological order by [`Graph::toposort`].
    pub nodes: Vec<Node>,
    /// Runtime inputs (initializers are not listed here).
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub initializers: HashMap<String, Tensor>,
    /// Known types and shapes of intermediate values (from the file and from
    /// shape inference).
    pub value_info: HashMap<String, ValueInfo>,
    /// Opset version per domain ("" is ai.onnx).
    pub opsets: HashMap<String, i64>,
}

impl Graph {
    pub fn opset(&self) -> i64 {
        self.opsets.get("").or_else(|| self.opsets.get("ai.onnx")).copied().unwrap_or(1)
    }

    pub fn is_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|i| i.name == name)
    }

    /// What is known of a non-constant value: its graph input, shape
    /// inference's entry, its graph output, in that order.
    fn declared<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ValueInfo> + 'a {
        self.inputs
            .iter()
            .filter(move |v| v.name == name)
            .chain(self.value_info.get(name))
            .chain(self.outputs.iter().filter(move |v| v.name == name))
    }

    /// Element type of a value: an initializer's, else the first known.
    pub fn dtype_of(&self, name: &str) -> Option<DType> {
        match self.initializers.get(name) {
            Some(t) => Some(t.dtype()),
            None => self.declared(name).find_map(|v| v.dtype),
        }
    }

    /// Shape of a value (possibly symbolic): an initializer's, else the
    /// first known.
    pub fn shape_of(&self, name: &str) -> Option<Vec<Dim>> {
        match self.initializers.get(name) {
            Some(t) => Some(t.shape().iter().map(|&d| Dim::Known(d)).collect()),
            None => self.declared(name).find_map(|v| v.shape.clone()),
        }
    }

    /// [`Graph::shape_of`] when every dimension is known.
    pub fn concrete_shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shape_of(name)?.iter().map(|d| d.known()).collect()
    }

    /// Sorts nodes topologically (stable with respect to file order) and
    /// checks that every value consumed is defined exactly once.
    pub fn toposort(&mut self) -> Result<()> {
        let mut producer: HashMap<&str, usize> = HashMap::new();
        let mut defined: HashSet<&str> = HashSet::new();
        for i in &self.inputs {
            defined.insert(&i.name);
        }
        for k in self.initializers.keys() {
            defined.insert(k);
        }
        for (ni, n) in self.nodes.iter().enumerate() {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if producer.insert(o, ni).is_some() || self.is_input(o) {
                    return Err(Error::InvalidModel(format!(
                        "value '{o}' is produced more than once (node '{}')",
                        n.name
                    )));
                }
            }
        }
        let mut indeg = vec![0usize; self.nodes.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (ni, n) in self.nodes.iter().enumerate() {
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                if let Some(&p) = producer.get(inp.as_str()) {
                    indeg[ni] += 1;
                    users[p].push(ni);
                } else if !defined.contains(inp.as_str()) {
                    return Err(Error::InvalidModel(format!(
                        "node '{}' ({}) reads '{inp}', which is neither an input, an initializer nor any node's output",
                        n.name, n.op_type
                    )));
                }
            }
        }
        // Kahn's algorithm with a min-heap on the original index keeps file order.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
            (0..self.nodes.len()).filter(|&i| indeg[i] == 0).map(std::cmp::Reverse).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() != self.nodes.len() {
            let stuck =
                (0..self.nodes.len()).find(|&i| indeg[i] > 0).map(|i| self.nodes[i].name.clone()).unwrap_or_default();
            return Err(Error::InvalidModel(format!("graph has a cycle (through node '{stuck}')")));
        }
        for o in &self.outputs {
            if !producer.contains_key(o.name.as_str()) && !defined.contains(o.name.as_str()) {
                return Err(Error::InvalidModel(format!("graph output '{}' is never produced", o.name)));
            }
        }
        let mut old: Vec<Option<Node>> = std::mem::take(&mut self.nodes).into_iter().map(Some).collect();
        self.nodes = order.into_iter().map(|i| old[i].take().expect("each index appears once")).collect();
        Ok(())
    }

    /// Number of consumers of each value (graph outputs count as one).
    pub fn use_counts(&self) -> HashMap<String, usize> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for n in &self.nodes {
            for i in n.inputs.iter().filter(|s| !s.is_empty()) {
                *m.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &self.outputs {
            *m.entry(o.name.clone()).or_default() += 1;
        }
        m
    }

    /// Index of the node producing each value.
    pub fn producers(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in n.outputs.iter().filter(|s| !s.is_empty()) {
                m.insert(o.clone(), i);
            }
        }
        m
    }

    /// Histogram of op types, sorted by count then name.
    pub fn op_histogram(&self) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for n in &self.nodes {
            let k = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            };
            *m.entry(k).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// A fresh value name that does not collide with any existing one.
    pub fn fresh_name(&self, base: &str) -> String {
        let mut taken: HashSet<&str> = HashSet::new();
        for n in &self.nodes {
            for o in &n.outputs {
                taken.insert(o);
            }
        }
        for k in self.initializers.keys() {
            taken.insert(k);
        }
        for i in &self.inputs {
            taken.insert(&i.name);
        }
        let mut k = 0;
        loop {
            let c = format!("{base}__t{k}");
            if !taken.contains(c.as_str()) {
                return c;
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vi(n: &str) -> ValueInfo {
        ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None }
    }

    #[test]
    fn toposort_orders_and_detects_cycles() {
        let mut g = Graph {
            nodes: vec![Node::new("Relu", "b", &["t"], &["y"]), Node::new("Relu", "a", &["x"], &["t"])],
            inputs: vec![vi("x")],
            outputs: vec![vi("y")],
            ..Default::default()
        };
        g.toposort().unwrap();
        assert_eq!(g.nodes[0].name, "a");

        let mut cyc = Graph {
            nodes: vec![Node::new("Add", "a", &["x", "q"], &["p"]), Node::new("Relu", "b", &["p"], &["q"])],
            inputs: vec![vi("x")],
            outputs: vec![vi("q")],
            ..Default::default()
        };
        let e = cyc.toposort().unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn undefined_input_is_reported() {
        let mut g = Graph {
            nodes: vec![Node::new("Relu", "r", &["missing"], &["y"])],
            outputs: vec![vi("y")],
            ..Default::default()
        };
        let e = g.toposort().unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
