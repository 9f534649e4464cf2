use thiserror::Error;

/// Every failure Tessera reports. Messages are one line and name the
/// file, node or value concerned so that a user can act on them.
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("node '{node}' ({op}): {msg}")]
    Node { node: String, op: String, msg: String },
    #[error("shape error: {0}")]
    Shape(String),
    #[error("input error: {0}")]
    Input(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn node(node: &crate::Node, msg: impl Into<String>) -> Self {
        Error::Node { node: node.name.clone(), op: node.op_type.clone(), msg: msg.into() }
    }
}

/// Shorthand for returning an `Error::InvalidModel`.
#[macro_export]
macro_rules! invalid {
    ($($t:tt)*) => { $crate::Error::InvalidModel(format!($($t)*)) };
}

/// Shorthand for returning an `Error::Unsupported`.
#[macro_export]
macro_rules! unsupported {
    ($($t:tt)*) => { $crate::Error::Unsupported(format!($($t)*)) };
}
