//! Fixed-width integers at byte offsets: the one way on-disk fields are read in this crate.
//!
//! Every read is bounds-checked and never panics. A field that lies beyond the buffer reads
//! as 0: parsers read each structure into a buffer of its full size first, so this happens only
//! through a parser's own mistake, and a zero field is then refused by the structure's
//! validation like any other bad value (debug builds stop at the mistake instead).

/// The `N` bytes at `at`, or zeros when they lie beyond `b`.
fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let got = at
        .checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok());
    debug_assert!(
        got.is_some(),
        "field of {N} bytes at {at} beyond a buffer of {}",
        b.len()
    );
    got.unwrap_or([0; N])
}

/// u16, little-endian, at `at`.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(field(b, at))
}

/// u32, little-endian, at `at`.
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(field(b, at))
}

/// u64, little-endian, at `at`.
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(field(b, at))
}

/// u16, big-endian, at `at`.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(field(b, at))
}

/// u32, big-endian, at `at`.
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(field(b, at))
}

/// u64, big-endian, at `at`.
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(field(b, at))
}

/// A table of little-endian u16 entries (a trailing partial entry is ignored).
pub(crate) fn le16s(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| le16(c, 0))
}

/// A table of little-endian u32 entries (a trailing partial entry is ignored).
pub(crate) fn le32s(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4).map(|c| le32(c, 0))
}

/// A table of big-endian u16 entries (a trailing partial entry is ignored).
pub(crate) fn be16s(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| be16(c, 0))
}

/// A table of big-endian u64 entries (a trailing partial entry is ignored).
pub(crate) fn be64s(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).map(|c| be64(c, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_in_both_orders_and_tables_ignore_a_partial_entry() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(be16(&b, 1), 0x0203);
        assert_eq!(le32(&b, 0), 0x0403_0201);
        assert_eq!(be32(&b, 0), 0x0102_0304);
        assert_eq!(le64(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(be64(&b, 0), 0x0102_0304_0506_0708);
        assert_eq!(be64s(&b).collect::<Vec<_>>(), [0x0102_0304_0506_0708]);
        assert_eq!(le32s(&b).count(), 2);
        assert_eq!(le16s(&b[..3]).collect::<Vec<_>>(), [0x0201]);
        assert_eq!(be16s(&b[..4]).collect::<Vec<_>>(), [0x0102, 0x0304]);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn a_field_beyond_the_buffer_reads_as_zero() {
        assert_eq!(le32(&[1, 2, 3], 0), 0);
        assert_eq!(be64(&[1; 8], usize::MAX), 0);
    }

    /// The byte layer is the only place that turns bytes into integers (in the library code).
    #[test]
    fn no_integer_is_read_from_bytes_outside_the_byte_layer() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src.clone()];
        let mut offenders = vec![];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let p = e.map(|e| e.path()).unwrap_or_default();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("bytes.rs") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    for (n, line) in text.lines().enumerate() {
                        if line.contains("from_le_bytes") || line.contains("from_be_bytes") {
                            offenders.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    }
}
