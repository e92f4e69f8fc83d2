//! Fresh identifiers for new images: random numbers and UUIDs, without a dependency on a
//! random-number crate (the standard library's hasher keys are random per process).

use std::hash::{BuildHasher, Hasher};

/// A random 64-bit number (a fresh randomly keyed hasher over the clock and `salt`).
pub fn random_u64(salt: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Byte order of a UUID's first three fields on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UuidLayout {
    /// RFC 4122 order (VHD).
    BigEndian,
    /// Microsoft's GUID order, first three fields little-endian (VirtualBox).
    LittleEndian,
}

/// A random version-4 UUID laid out as `layout` says.
pub fn random_uuid(layout: UuidLayout) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        half.copy_from_slice(&random_u64(i as u64).to_le_bytes());
    }
    let version_at = match layout {
        UuidLayout::BigEndian => 6,
        UuidLayout::LittleEndian => 7,
    };
    out[version_at] = (out[version_at] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// The 16 bytes of a UUID in the usual `8-4-4-4-12` hex form, in the order they are stored.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = random_uuid(UuidLayout::BigEndian);
        let b = random_uuid(UuidLayout::BigEndian);
        assert_ne!(a, b);
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 2);
        assert_eq!(random_uuid(UuidLayout::LittleEndian)[7] >> 4, 4);
        assert_eq!(uuid_text(&a).len(), 36);
    }
}
