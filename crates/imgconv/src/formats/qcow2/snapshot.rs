//! The internal snapshot table, listed by `imgconv info` (conversion reads the active layer and
//! never touches it).
//!
//! Entry layout (big-endian): u64 l1_table_offset, u32 l1_size, u16 id_str_size,
//! u16 name_size, u32 date_sec, u32 date_nsec, u64 vm_clock_nsec, u32 vm_state_size,
//! u32 extra_data_size, extra data, id string, name, padding to 8 bytes.

use crate::bytes::{be16, be32};
use crate::source::Source;

use super::header::Header;

/// At most this many snapshots are listed (qemu allows 65536).
const LISTED: u32 = 16;
/// Bytes of snapshot table read at most: qemu's own 64 MiB limit.
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Fixed part of an entry.
const ENTRY_FIXED: usize = 40;

/// One line describing the snapshots: their count and the first few names, or why the table
/// cannot be read. Never fails and reads at most [`MAX_TABLE_BYTES`].
pub(super) fn describe_snapshots(src: &dyn Source, h: &Header) -> String {
    if h.nb_snapshots == 0 {
        return "none".into();
    }
    match names(src, h) {
        Ok(names) => {
            let more = h.nb_snapshots.saturating_sub(names.len() as u32);
            let mut s = format!("{}: {}", h.nb_snapshots, names.join(", "));
            if more > 0 {
                s.push_str(&format!(" (and {more} more)"));
            }
            s
        }
        Err(why) => format!("{} (table unreadable: {why})", h.nb_snapshots),
    }
}

fn names(src: &dyn Source, h: &Header) -> Result<Vec<String>, String> {
    let mut pos = h.snapshots_offset;
    if pos % 8 != 0 || pos == 0 {
        return Err(format!("misaligned table offset {pos:#x}"));
    }
    let mut out = Vec::new();
    for i in 0..h.nb_snapshots.min(LISTED) {
        if pos - h.snapshots_offset > MAX_TABLE_BYTES {
            return Err("table larger than 64 MiB".into());
        }
        let mut fixed = [0u8; ENTRY_FIXED];
        src.read_exact_at(pos, &mut fixed)
            .map_err(|_| format!("entry {i} lies beyond the end of the file"))?;
        let id_len = u64::from(be16(&fixed, 12));
        let name_len = u64::from(be16(&fixed, 14));
        let extra = u64::from(be32(&fixed, 36));
        if extra > 1024 {
            return Err(format!("entry {i} has {extra} bytes of extra data"));
        }
        let mut name = vec![0u8; name_len as usize];
        src.read_exact_at(pos + ENTRY_FIXED as u64 + extra + id_len, &mut name)
            .map_err(|_| format!("entry {i} lies beyond the end of the file"))?;
        out.push(String::from_utf8_lossy(&name).into_owned());
        pos += (ENTRY_FIXED as u64 + extra + id_len + name_len).div_ceil(8) * 8;
    }
    Ok(out)
}

/// The snapshot table's length in bytes and each snapshot's L1 table (offset, entries), for
/// `check`. Reads at most [`MAX_TABLE_BYTES`].
pub(super) fn l1_tables(src: &dyn Source, h: &Header) -> Result<(u64, Vec<(u64, u32)>), String> {
    let mut pos = h.snapshots_offset;
    if pos % 8 != 0 || pos == 0 {
        return Err(format!("misaligned table offset {pos:#x}"));
    }
    let mut out = Vec::new();
    for i in 0..h.nb_snapshots {
        if pos - h.snapshots_offset > MAX_TABLE_BYTES {
            return Err("table larger than 64 MiB".into());
        }
        let mut fixed = [0u8; ENTRY_FIXED];
        src.read_exact_at(pos, &mut fixed)
            .map_err(|_| format!("entry {i} lies beyond the end of the file"))?;
        let l1 = crate::bytes::be64(&fixed, 0);
        let l1_size = be32(&fixed, 8);
        let id_len = u64::from(be16(&fixed, 12));
        let name_len = u64::from(be16(&fixed, 14));
        let extra = u64::from(be32(&fixed, 36));
        if extra > 1024 {
            return Err(format!("entry {i} has {extra} bytes of extra data"));
        }
        out.push((l1, l1_size));
        pos += (ENTRY_FIXED as u64 + extra + id_len + name_len).div_ceil(8) * 8;
    }
    Ok((pos - h.snapshots_offset, out))
}
