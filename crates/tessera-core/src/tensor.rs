//! Host tensors. Storage is either an owned 64-byte-aligned allocation or a
//! window into a memory-mapped file (large weights are never copied).

use std::sync::Arc;

use aligned_vec::{AVec, ConstAlign};

use crate::dtype::{DType, Element};
use crate::{limits, Error, Result};

pub type AlignedBytes = AVec<u8, ConstAlign<64>>;

#[derive(Debug)]
enum Storage {
    /// The tensor's bytes are the first `len` of `buf`. A recycled buffer
    /// keeps its whole initialized length (a pool's buffer serves tensors of
    /// several sizes; shrinking it would make the next larger use zero the
    /// bytes again).
    Owned {
        buf: AlignedBytes,
        len: usize,
    },
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl Storage {
    fn owned(buf: AlignedBytes) -> Storage {
        Storage::Owned { len: buf.len(), buf }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned { buf, len } => &buf[..*len],
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

/// A dense, row-major tensor in host memory. Cloning shares the storage.
#[derive(Clone, Debug)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

/// Number of elements of `shape`, failing instead of overflowing or
/// exceeding [`limits::MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    if shape.len() > limits::MAX_RANK {
        return Err(Error::Shape(format!("rank {} exceeds the limit of {}", shape.len(), limits::MAX_RANK)));
    }
    let mut n: u64 = 1;
    for &d in shape {
        n = n
            .checked_mul(d as u64)
            .filter(|&n| n <= limits::MAX_ELEMENTS)
            .ok_or_else(|| Error::Shape(format!("shape {shape:?} has too many elements")))?;
    }
    Ok(n as usize)
}

fn zeroed_bytes(len: usize) -> AlignedBytes {
    AVec::from_iter(64, std::iter::repeat_n(0u8, len))
}

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        Ok(Tensor { dtype, shape: shape.to_vec(), storage: Arc::new(Storage::owned(zeroed_bytes(n * dtype.size()))) })
    }

    /// Reuses `buf` (from a buffer pool) when it is large enough; zeroed.
    pub fn from_pool(dtype: DType, shape: &[usize], buf: Option<AlignedBytes>) -> Result<Tensor> {
        Self::pooled(dtype, shape, buf, true)
    }

    /// [`Tensor::from_pool`] for a producer that writes every element: a
    /// recycled buffer keeps its stale (initialized) bytes instead of being
    /// zeroed first, which is a full extra pass, on one core, over every
    /// large output. Only bytes beyond the buffer's old length are zeroed.
    pub fn from_pool_for_overwrite(dtype: DType, shape: &[usize], buf: Option<AlignedBytes>) -> Result<Tensor> {
        Self::pooled(dtype, shape, buf, false)
    }

    fn pooled(dtype: DType, shape: &[usize], buf: Option<AlignedBytes>, zero: bool) -> Result<Tensor> {
        let n = checked_numel(shape)? * dtype.size();
        let buf = match buf {
            Some(mut b) if b.capacity() >= n => {
                if zero {
                    let old = b.len().min(n);
                    b[..old].fill(0);
                }
                if b.len() < n {
                    b.resize(n, 0);
                }
                b
            }
            _ => zeroed_bytes(n),
        };
        Ok(Tensor { dtype, shape: shape.to_vec(), storage: Arc::new(Storage::Owned { buf, len: n }) })
    }

    pub fn from_vec<T: Element>(shape: &[usize], data: Vec<T>) -> Result<Tensor> {
        Self::from_slice(shape, &data)
    }

    pub fn from_slice<T: Element>(shape: &[usize], data: &[T]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n != data.len() {
            return Err(Error::Shape(format!("shape {shape:?} needs {n} elements, got {}", data.len())));
        }
        Ok(Self::from_bytes_unchecked(T::DTYPE, shape, bytemuck::cast_slice(data)))
    }

    /// Builds a tensor from raw little-endian bytes, checking the length.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n * dtype.size() != bytes.len() {
            return Err(Error::InvalidModel(format!(
                "tensor of shape {shape:?} and type {dtype} needs {} bytes, got {}",
                n * dtype.size(),
                bytes.len()
            )));
        }
        Ok(Self::from_bytes_unchecked(dtype, shape, bytes))
    }

    fn from_bytes_unchecked(dtype: DType, shape: &[usize], bytes: &[u8]) -> Tensor {
        let mut v = AVec::with_capacity(64, bytes.len());
        v.extend_from_slice(bytes);
        Tensor { dtype, shape: shape.to_vec(), storage: Arc::new(Storage::owned(v)) }
    }

    /// A view into a memory map. Falls back to a copy when the window is not
    /// aligned to the element size (typed slices need natural alignment).
    pub fn from_mmap(
        dtype: DType,
        shape: &[usize],
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    ) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        let end = offset.checked_add(len).filter(|&e| e <= map.len());
        if end.is_none() || n * dtype.size() != len {
            return Err(Error::InvalidModel(format!(
                "tensor of shape {shape:?} and type {dtype} needs {} bytes at offset {offset}, the mapped file has {}",
                n * dtype.size(),
                map.len()
            )));
        }
        if !(map.as_ptr() as usize + offset).is_multiple_of(dtype.size()) {
            return Ok(Self::from_bytes_unchecked(dtype, shape, &map[offset..offset + len]));
        }
        Ok(Tensor { dtype, shape: shape.to_vec(), storage: Arc::new(Storage::Mapped { map, offset, len }) })
    }

    pub fn scalar<T: Element>(v: T) -> Tensor {
        Self::from_bytes_unchecked(T::DTYPE, &[], bytemuck::bytes_of(&v))
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    pub fn is_mapped(&self) -> bool {
        matches!(*self.storage, Storage::Mapped { .. })
    }

    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Typed view. Fails if the dtype does not match `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        if T::DTYPE != self.dtype && !(T::DTYPE == DType::U8 && self.dtype == DType::Bool) {
            return Err(Error::Other(format!("tensor is {}, not {}", self.dtype, T::DTYPE)));
        }
        bytemuck::try_cast_slice(self.bytes()).map_err(|e| Error::Other(format!("misaligned tensor: {e}")))
    }

    /// Mutable typed view; copies the storage first if it is shared or mapped.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        if T::DTYPE != self.dtype && !(T::DTYPE == DType::U8 && self.dtype == DType::Bool) {
            return Err(Error::Other(format!("tensor is {}, not {}", self.dtype, T::DTYPE)));
        }
        let bytes = self.bytes_mut();
        bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::Other(format!("misaligned tensor: {e}")))
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let needs_copy = !matches!(*self.storage, Storage::Owned { .. }) || Arc::strong_count(&self.storage) > 1;
        if needs_copy {
            let mut v = AVec::with_capacity(64, self.byte_len());
            v.extend_from_slice(self.bytes());
            self.storage = Arc::new(Storage::owned(v));
        }
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Owned { buf, len }) => &mut buf[..*len],
            _ => unreachable!("storage was made unique and owned above"),
        }
    }

    /// Returns the owned allocation for reuse, if this tensor is its only
    /// owner: its whole initialized length, which may exceed the tensor's.
    pub fn into_buffer(self) -> Option<AlignedBytes> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Owned { buf, .. }) => Some(buf),
            _ => None,
        }
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {:?} to {:?}", self.shape, shape)));
        }
        Ok(Tensor { dtype: self.dtype, shape: shape.to_vec(), storage: self.storage.clone() })
    }

    /// Converts any numeric tensor to f64 values (for comparisons, folding
    /// and index reading).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let b = self.bytes();
        macro_rules! conv {
            ($t:ty) => {
                bytemuck::pod_collect_to_vec::<u8, $t>(b).into_iter().map(|v| v as f64).collect()
            };
        }
        match self.dtype {
            DType::F32 => conv!(f32),
            DType::F64 => conv!(f64),
            DType::U8 | DType::Bool => b.iter().map(|&v| v as f64).collect(),
            DType::I8 => b.iter().map(|&v| v as i8 as f64).collect(),
            DType::U16 => conv!(u16),
            DType::I16 => conv!(i16),
            DType::I32 => conv!(i32),
            DType::I64 => conv!(i64),
            DType::U32 => conv!(u32),
            DType::U64 => conv!(u64),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(b).into_iter().map(|v| v.to_f64()).collect(),
            DType::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(b).into_iter().map(|v| v.to_f64()).collect(),
        }
    }

    /// Reads an integer tensor (i32/i64/u8/...) as i64 values, e.g. shapes,
    /// axes and indices.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        let b = self.bytes();
        Ok(match self.dtype {
            DType::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(b),
            DType::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(b).into_iter().map(i64::from).collect(),
            DType::I16 => bytemuck::pod_collect_to_vec::<u8, i16>(b).into_iter().map(i64::from).collect(),
            DType::I8 => b.iter().map(|&v| v as i8 as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&v| v as i64).collect(),
            DType::U16 => bytemuck::pod_collect_to_vec::<u8, u16>(b).into_iter().map(i64::from).collect(),
            DType::U32 => bytemuck::pod_collect_to_vec::<u8, u32>(b).into_iter().map(i64::from).collect(),
            DType::U64 => bytemuck::pod_collect_to_vec::<u8, u64>(b).into_iter().map(|v| v as i64).collect(),
            d => return Err(Error::Other(format!("expected an integer tensor, got {d}"))),
        })
    }

    /// Builds a tensor of `dtype` from f64 values (saturating casts for ints).
    pub fn from_f64(dtype: DType, shape: &[usize], vals: &[f64]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n != vals.len() {
            return Err(Error::Shape(format!("shape {shape:?} needs {n} elements, got {}", vals.len())));
        }
        macro_rules! mk {
            ($t:ty) => {{
                let v: Vec<$t> = vals.iter().map(|&x| x as $t).collect();
                Tensor::from_slice(shape, &v)
            }};
        }
        match dtype {
            DType::F32 => mk!(f32),
            DType::F64 => mk!(f64),
            DType::U8 => mk!(u8),
            DType::I8 => mk!(i8),
            DType::U16 => mk!(u16),
            DType::I16 => mk!(i16),
            DType::I32 => mk!(i32),
            DType::I64 => mk!(i64),
            DType::U32 => mk!(u32),
            DType::U64 => mk!(u64),
            DType::Bool => {
                let v: Vec<u8> = vals.iter().map(|&x| (x != 0.0) as u8).collect();
                let mut t = Tensor::from_slice(shape, &v)?;
                t.dtype = DType::Bool;
                Ok(t)
            }
            DType::F16 => {
                let v: Vec<half::f16> = vals.iter().map(|&x| half::f16::from_f64(x)).collect();
                Tensor::from_slice(shape, &v)
            }
            DType::BF16 => {
                let v: Vec<half::bf16> = vals.iter().map(|&x| half::bf16::from_f64(x)).collect();
                Tensor::from_slice(shape, &v)
            }
        }
    }

    /// Reinterprets the element type without touching the bytes; the sizes
    /// must agree (used for Bool <-> U8).
    pub fn with_dtype(mut self, dtype: DType) -> Result<Tensor> {
        if dtype.size() != self.dtype.size() {
            return Err(Error::Other(format!("cannot reinterpret {} as {}", self.dtype, dtype)));
        }
        self.dtype = dtype;
        Ok(self)
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype && self.shape == other.shape && self.bytes() == other.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_keep_their_length_and_zero_only_what_they_must() {
        let held = || {
            let mut b = AlignedBytes::with_capacity(64, 8192);
            b.extend_from_slice(&[7u8; 4096]);
            b
        };
        // Past what the buffer held: the old bytes, then zeros.
        let t = Tensor::from_pool_for_overwrite(DType::U8, &[6000], Some(held())).unwrap();
        assert!(t.bytes()[..4096].iter().all(|&v| v == 7) && t.bytes()[4096..].iter().all(|&v| v == 0));
        assert_eq!(t.bytes().len(), 6000);
        // Zeroed when asked, exactly the tensor's bytes.
        let t = Tensor::from_pool(DType::U8, &[6000], Some(held())).unwrap();
        assert!(t.bytes().iter().all(|&v| v == 0) && t.bytes().len() == 6000);
        // A small tensor sees its own bytes; the buffer comes back whole.
        let mut t = Tensor::from_pool(DType::U8, &[100], Some(held())).unwrap();
        assert_eq!((t.bytes().len(), t.bytes_mut().len()), (100, 100));
        let b = t.into_buffer().unwrap();
        assert_eq!(b.len(), 4096);
        assert!(b[..100].iter().all(|&v| v == 0) && b[100..].iter().all(|&v| v == 7));
        // Too small a buffer: a fresh one.
        let mut small = AlignedBytes::with_capacity(64, 16);
        small.extend_from_slice(&[7u8; 16]);
        let t = Tensor::from_pool_for_overwrite(DType::U8, &[100], Some(small)).unwrap();
        assert!(t.bytes().iter().all(|&v| v == 0));
    }

    #[test]
    fn zeros_and_typed_views() {
        let mut t = Tensor::zeros(DType::F32, &[2, 3]).unwrap();
        assert_eq!(t.numel(), 6);
        t.as_mut_slice::<f32>().unwrap()[4] = 2.5;
        assert_eq!(t.as_slice::<f32>().unwrap()[4], 2.5);
        assert!(t.as_slice::<i64>().is_err());
    }

    #[test]
    fn huge_shapes_are_rejected_without_allocating() {
        assert!(Tensor::zeros(DType::F32, &[1 << 40]).is_err());
        assert!(Tensor::zeros(DType::F32, &[1 << 20, 1 << 20, 1 << 20]).is_err());
        assert!(checked_numel(&[usize::MAX, 2]).is_err());
    }

    #[test]
    fn clone_then_write_copies() {
        let a = Tensor::from_vec(&[2], vec![1i64, 2]).unwrap();
        let mut b = a.clone();
        b.as_mut_slice::<i64>().unwrap()[0] = 9;
        assert_eq!(a.to_i64_vec().unwrap(), vec![1, 2]);
        assert_eq!(b.to_i64_vec().unwrap(), vec![9, 2]);
    }

    #[test]
    fn from_bytes_checks_length() {
        assert!(Tensor::from_bytes(DType::F32, &[3], &[0u8; 11]).is_err());
        let t = Tensor::from_bytes(DType::I32, &[2], &[1, 0, 0, 0, 2, 0, 0, 0]).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![1, 2]);
    }
}
