//! The `weights/weight.bin` blob file of an ML Program.
//!
//! Layout (version 2, as written and read by coremltools 9.0's
//! `libmilstoragepython`; `layout_matches_coremltools` below holds bytes that
//! library wrote): a 64-byte header (`u32` blob count, `u32` version = 2, zeros),
//! then per blob a 64-byte metadata record (`u32` sentinel `0xDEADBEEF`,
//! `u32` blob dtype, `u64` data size in bytes, `u64` data offset, `u64`
//! padding bits of the last byte for sub-byte types, zeros) followed by the
//! data, each record and each data block starting on a 64-byte boundary. A
//! `BlobFileValue.offset` names the metadata record.

use tessera_core::{Error, Result};

const ALIGN: usize = 64;
const SENTINEL: u32 = 0xDEAD_BEEF;
const VERSION: u32 = 2;

/// Element type of a blob (the storage enum, not `MILSpec.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobDType {
    F16,
    F32,
    U8,
    I8,
    I16,
    U16,
    /// Unsigned of 1, 2, 3, 4 or 6 bits, packed least significant bit first
    /// (the iOS 18 palette indices).
    UBits(u8),
    I32,
    U32,
}

impl BlobDType {
    pub fn code(self) -> u32 {
        match self {
            BlobDType::F16 => 1,
            BlobDType::F32 => 2,
            BlobDType::U8 => 3,
            BlobDType::I8 => 4,
            BlobDType::I16 => 6,
            BlobDType::U16 => 7,
            BlobDType::UBits(1) => 9,
            BlobDType::UBits(2) => 10,
            BlobDType::UBits(4) => 11,
            BlobDType::UBits(3) => 12,
            BlobDType::UBits(b) => {
                // `mil::index_dtype` admits 1, 2, 3, 4, 6 (and 8 as UInt8).
                debug_assert_eq!(b, 6, "no blob type for {b}-bit values");
                13
            }
            BlobDType::I32 => 14,
            BlobDType::U32 => 15,
        }
    }
    pub fn from_code(c: u32) -> Option<BlobDType> {
        Some(match c {
            1 => BlobDType::F16,
            2 => BlobDType::F32,
            3 => BlobDType::U8,
            4 => BlobDType::I8,
            6 => BlobDType::I16,
            7 => BlobDType::U16,
            9 => BlobDType::UBits(1),
            10 => BlobDType::UBits(2),
            11 => BlobDType::UBits(4),
            12 => BlobDType::UBits(3),
            13 => BlobDType::UBits(6),
            14 => BlobDType::I32,
            15 => BlobDType::U32,
            _ => return None,
        })
    }
}

fn pad_to(buf: &mut Vec<u8>) {
    let r = buf.len() % ALIGN;
    if r != 0 {
        buf.resize(buf.len() + ALIGN - r, 0);
    }
}

/// Builds a blob file in memory. Identical blobs are stored once (the
/// functions of a multifunction package share their weights this way).
#[derive(Debug)]
pub struct BlobWriter {
    buf: Vec<u8>,
    count: u32,
    seen: std::collections::HashMap<(u32, u64, Vec<u8>), u64>,
}

impl Default for BlobWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobWriter {
    pub fn new() -> BlobWriter {
        let mut buf = vec![0u8; ALIGN];
        buf[4..8].copy_from_slice(&VERSION.to_le_bytes());
        BlobWriter { buf, count: 0, seen: Default::default() }
    }

    /// Appends one blob; returns the offset to put in the `BlobFileValue`.
    /// `padding_bits` is the number of unused bits in the last byte of a
    /// sub-byte type.
    pub fn add(&mut self, dtype: BlobDType, data: &[u8], padding_bits: u64) -> u64 {
        let key = (dtype.code(), padding_bits, data.to_vec());
        if let Some(&off) = self.seen.get(&key) {
            return off;
        }
        pad_to(&mut self.buf);
        let meta = self.buf.len() as u64;
        let data_off = meta + ALIGN as u64;
        let mut rec = [0u8; ALIGN];
        rec[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        rec[4..8].copy_from_slice(&dtype.code().to_le_bytes());
        rec[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        rec[16..24].copy_from_slice(&data_off.to_le_bytes());
        rec[24..32].copy_from_slice(&padding_bits.to_le_bytes());
        self.buf.extend_from_slice(&rec);
        self.buf.extend_from_slice(data);
        self.count += 1;
        self.buf[0..4].copy_from_slice(&self.count.to_le_bytes());
        self.seen.insert(key, meta);
        meta
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The file's bytes (the last blob padded to the alignment).
    pub fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            pad_to(&mut self.buf);
        }
        self.buf
    }
}

/// A parsed blob file; every read is bounds-checked against the file.
pub struct BlobReader<'a> {
    bytes: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> BlobReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<BlobReader<'a>> {
        if bytes.len() < ALIGN {
            return Err(Error::InvalidModel(format!(
                "weight.bin is {} bytes, shorter than its 64-byte header",
                bytes.len()
            )));
        }
        let version = u32_at(bytes, 4);
        if version != VERSION {
            return Err(Error::InvalidModel(format!(
                "weight.bin has storage version {version}; only version 2 is read"
            )));
        }
        Ok(BlobReader { bytes })
    }

    pub fn count(&self) -> u32 {
        u32_at(self.bytes, 0)
    }

    /// The blob whose metadata record is at `offset`: its type, data bytes
    /// and padding bits.
    pub fn blob(&self, offset: u64) -> Result<(BlobDType, &'a [u8], u64)> {
        let bad = |why: String| Error::InvalidModel(format!("weight.bin blob at offset {offset}: {why}"));
        let off = usize::try_from(offset).map_err(|_| bad("offset out of range".into()))?;
        if off % ALIGN != 0 || off < ALIGN || off.checked_add(ALIGN).is_none_or(|e| e > self.bytes.len()) {
            return Err(bad(format!("no 64-byte metadata record there (file is {} bytes)", self.bytes.len())));
        }
        if u32_at(self.bytes, off) != SENTINEL {
            return Err(bad("metadata sentinel is not 0xDEADBEEF".into()));
        }
        let code = u32_at(self.bytes, off + 4);
        let dtype = BlobDType::from_code(code).ok_or_else(|| bad(format!("unknown blob data type {code}")))?;
        let size = u64_at(self.bytes, off + 8);
        let data = u64_at(self.bytes, off + 16);
        let padding = u64_at(self.bytes, off + 24);
        let end = data.checked_add(size).ok_or_else(|| bad("size overflows".into()))?;
        if data < offset + ALIGN as u64 || end > self.bytes.len() as u64 {
            return Err(bad(format!("data [{data}, {end}) lies outside the file of {} bytes", self.bytes.len())));
        }
        if padding >= 8 {
            return Err(bad(format!("{padding} padding bits")));
        }
        Ok((dtype, &self.bytes[data as usize..end as usize], padding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_coremltools() {
        // Bytes coremltools 9.0's _BlobStorageWriter wrote for fp16 [1,2,3]
        // then f32 [1.5, 2.5] (offsets 64 and 192).
        let mut w = BlobWriter::new();
        let h: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        assert_eq!(w.add(BlobDType::F16, &h, 0), 64);
        let f: Vec<u8> = [1.5f32, 2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(w.add(BlobDType::F32, &f, 0), 192);
        assert_eq!(w.add(BlobDType::F16, &h, 0), 64, "identical blobs are shared");
        let b = w.finish();
        assert_eq!(b.len(), 320);
        assert_eq!(&b[0..8], &[2, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&b[64..80], &[0xef, 0xbe, 0xad, 0xde, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[80..88], &128u64.to_le_bytes());
        assert_eq!(&b[128..134], &[0x00, 0x3c, 0x00, 0x40, 0x00, 0x42]);
        assert_eq!(&b[256..260], &[0x00, 0x00, 0xc0, 0x3f]);
        let r = BlobReader::new(&b).unwrap();
        assert_eq!(r.count(), 2);
        let (dt, data, pad) = r.blob(192).unwrap();
        assert_eq!((dt, data, pad), (BlobDType::F32, &f[..], 0));
    }

    #[test]
    fn reader_rejects_bad_offsets_and_sizes() {
        let mut w = BlobWriter::new();
        w.add(BlobDType::I8, &[1, 2, 3], 0);
        let mut b = w.finish();
        let r = BlobReader::new(&b).unwrap();
        for off in [0u64, 65, 128, 1 << 40, u64::MAX] {
            assert!(r.blob(off).is_err(), "offset {off}");
        }
        b[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(BlobReader::new(&b).unwrap().blob(64).is_err());
        assert!(BlobReader::new(&b[..10]).is_err());
    }
}
