//! Reading and writing numpy `.npy` files (format version 1.0/2.0/3.0,
//! little endian, C order), for `tessera run` inputs and outputs.

use std::io::Write;
use std::path::Path;

use tessera_core::{DType, Error, Result, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path.as_ref())?);
    f.write_all(&npy_bytes(t))?;
    f.flush()?;
    Ok(())
}

pub fn npy_bytes(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape().len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape()[0]),
        _ => format!("({})", t.shape().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", t.dtype().npy_descr(), shape);
    // Pad so that magic(6)+version(2)+len(2)+header is a multiple of 64, ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.byte_len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(t.bytes());
    out
}

pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let p = path.as_ref();
    let bytes = std::fs::read(p).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
    parse_npy(&bytes).map_err(|e| Error::Input(format!("{}: {e}", p.display())))
}

pub fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "non-UTF-8 .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = header[i + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or("header has no 'descr'")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("malformed 'descr'")?;
    let dtype = DType::from_npy_descr(descr).ok_or_else(|| format!("unsupported dtype '{descr}'"))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_s = field("shape").ok_or("header has no 'shape'")?;
    let shape_s = shape_s.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("malformed 'shape'")?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension '{s}'")))
        .collect::<Result<_, _>>()?;
    Tensor::from_bytes(dtype, &shape, &bytes[end..]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for t in [
            Tensor::from_vec(&[2, 3], vec![1.0f32, 2., 3., 4., 5., 6.]).unwrap(),
            Tensor::from_vec(&[4], vec![1i64, -2, 3, 4]).unwrap(),
            Tensor::scalar(7i32),
        ] {
            let b = npy_bytes(&t);
            assert_eq!((b.len() - t.byte_len()) % 64, 0);
            assert_eq!(parse_npy(&b).unwrap(), t);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_npy(b"hello").is_err());
        let mut b = npy_bytes(&Tensor::from_vec(&[4], vec![1.0f32; 4]).unwrap());
        b.truncate(b.len() - 3);
        assert!(parse_npy(&b).is_err());
    }
}
