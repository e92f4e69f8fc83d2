//! The tar format, as far as image packages need it: headers written in ustar (OVA) or GNU
//! (GCE) form, and headers read in every form GNU tar and bsdtar write for a disk file: ustar,
//! GNU and PAX, long names (`L` and PAX `path`), sizes in octal or base-256, and GNU sparse
//! members (`S`, the `--sparse` of the GNU and oldgnu formats).

use crate::error::{Error, Result};
use crate::model::Format;

/// A tar block.
pub(crate) const BLOCK: u64 = 512;
/// GNU tar's default record: the archive's length is padded to a multiple of it.
pub(crate) const RECORD: u64 = 20 * BLOCK;

/// Which magic a written header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// POSIX ustar (`ustar\0` `00`), as ovftool and VirtualBox write OVAs.
    Ustar,
    /// GNU (`ustar  \0`), as Google's image import asks.
    Gnu,
}

/// Write `v` as an octal field of `field.len()` bytes (NUL-terminated), or in GNU base-256
/// when it does not fit.
fn put_number(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if digits >= 22 || v < 1u64 << (3 * digits) {
        let s = format!("{v:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] = 0x80;
    }
}

/// A regular-file header for `name` (at most 100 bytes) of `size` bytes dated `mtime`.
pub(crate) fn header(name: &str, size: u64, mtime: u64, flavor: Flavor) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    let n = &n[..n.len().min(100)];
    h[..n.len()].copy_from_slice(n);
    put_number(&mut h[100..108], 0o644);
    put_number(&mut h[108..116], 0);
    put_number(&mut h[116..124], 0);
    put_number(&mut h[124..136], size);
    put_number(&mut h[136..148], mtime);
    h[156] = b'0';
    match flavor {
        Flavor::Ustar => {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
        }
        Flavor::Gnu => h[257..265].copy_from_slice(b"ustar  \0"),
    }
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Zeros that end a member of `len` bytes at a block boundary.
pub(crate) fn padding(len: u64) -> u64 {
    len.next_multiple_of(BLOCK) - len
}

fn bad(format: Format, at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(format, at, msg)
}

/// Parse an octal or base-256 number field.
fn number(format: Format, at: u64, field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        // GNU base-256: 0x80, then the value big-endian (0xff would start a negative one).
        let digits = &field[1..];
        let skip = digits.len().saturating_sub(8);
        if field[0] != 0x80 || digits[..skip].iter().any(|&b| b != 0) {
            return Err(bad(format, at, "a tar number field is out of range"));
        }
        return Ok(digits[skip..]
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)));
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = String::from_utf8_lossy(&text);
    u64::from_str_radix(&text, 8).map_err(|_| {
        bad(
            format,
            at,
            format!("the tar number field '{text}' is not octal"),
        )
    })
}

/// One member of a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its name (a long name when one was given).
    pub name: String,
    /// Offset of its stored bytes in the archive.
    pub data_at: u64,
    /// Bytes stored in the archive (for a sparse member, the data segments only).
    pub stored: u64,
    /// The file's size (for a sparse member, with its holes).
    pub size: u64,
    /// A regular file (not a directory, link, ...).
    pub regular: bool,
    /// For a GNU sparse member: the data segments, `(file offset, length)`, in order, stored
    /// one after the other from `data_at`.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// The most members read from an archive, the longest long name, the most sparse segments:
/// limits against hostile archives.
pub(crate) const MAX_MEMBERS: usize = 4096;
const MAX_LONG_NAME: u64 = 4096;
const MAX_SEGMENTS: usize = 1 << 20;

/// The members of the archive `read` gives access to (`read(offset, buf)` fills `buf`),
/// `len` bytes long (when known), up to the end blocks. `format` names errors.
pub(crate) fn members(
    format: Format,
    len: Option<u64>,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<Vec<Member>> {
    let mut all = Vec::new();
    walk(format, len, read, &mut |m| {
        all.push(m);
        true
    })?;
    Ok(all)
}

/// The first member `wanted` accepts, reading no further than its header.
pub(crate) fn find_member(
    format: Format,
    len: Option<u64>,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    wanted: &dyn Fn(&Member) -> bool,
) -> Result<Option<Member>> {
    let mut found = None;
    walk(format, len, read, &mut |m| {
        if wanted(&m) {
            found = Some(m);
            false
        } else {
            true
        }
    })?;
    Ok(found)
}

/// Visit the members in order while `visit` answers `true`.
fn walk(
    format: Format,
    len: Option<u64>,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    visit: &mut dyn FnMut(Member) -> bool,
) -> Result<()> {
    let mut count = 0usize;
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let mut pax_sparse = PaxSparse::default();
    loop {
        if count >= MAX_MEMBERS {
            return Err(bad(format, at, "more than 4096 members in the archive"));
        }
        if len.is_some_and(|l| at + BLOCK > l) {
            // No end blocks: some writers stop after the last member.
            return Ok(());
        }
        let mut h = [0u8; 512];
        read(at, &mut h)?;
        if h.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let stored_sum = number(format, at + 148, &h[148..156])?;
        let mut copy = h;
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        if sum != stored_sum {
            return Err(bad(format, at, "a tar header's checksum is wrong"));
        }
        let magic_ok = &h[257..263] == b"ustar\0" || &h[257..265] == b"ustar  \0";
        let mut name = {
            let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
            String::from_utf8_lossy(&h[..end]).into_owned()
        };
        if &h[257..263] == b"ustar\0" && h[345] != 0 {
            let end = h[345..500].iter().position(|&b| b == 0).unwrap_or(155);
            name = format!("{}/{name}", String::from_utf8_lossy(&h[345..345 + end]));
        }
        let kind = h[156];
        let mut stored = number(format, at + 124, &h[124..136])?;
        let data_at = at + BLOCK;
        let next_at = |stored: u64, extra: u64| -> Result<u64> {
            data_at
                .checked_add(extra)
                .and_then(|d| d.checked_add(stored.next_multiple_of(BLOCK)))
                .filter(|e| len.is_none_or(|l| *e <= l))
                .ok_or_else(|| bad(format, at, "a member runs past the end of the archive"))
        };
        match kind {
            b'L' | b'x' => {
                if stored > MAX_LONG_NAME * 4 {
                    return Err(bad(format, at, "an extended header is too long"));
                }
                let mut b = vec![0u8; stored as usize];
                read(data_at, &mut b)?;
                if kind == b'L' {
                    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
                    long_name = Some(String::from_utf8_lossy(&b[..end]).into_owned());
                } else {
                    for (k, v) in pax_records(&b) {
                        match k.as_str() {
                            "path" => long_name = Some(v),
                            "size" => pax_size = v.parse().ok(),
                            "GNU.sparse.name" => pax_sparse.name = Some(v),
                            "GNU.sparse.realsize" | "GNU.sparse.size" => {
                                pax_sparse.size = v.parse().ok()
                            }
                            "GNU.sparse.major" => pax_sparse.major = v.parse().ok(),
                            "GNU.sparse.map" => pax_sparse.map = Some(v),
                            _ => {}
                        }
                    }
                }
                at = next_at(stored, 0)?;
                continue;
            }
            b'g' => {
                at = next_at(stored, 0)?;
                continue;
            }
            _ => {}
        }
        if !magic_ok && kind != b'0' && kind != 0 {
            return Err(bad(format, at, "not a ustar or GNU tar header"));
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        if let Some(s) = pax_size.take() {
            stored = s;
        }
        let mut size = stored;
        let mut sparse = None;
        let mut extra = 0u64;
        let pax = std::mem::take(&mut pax_sparse);
        if let (Some(real), true) = (pax.size, pax.major == Some(1) || pax.map.is_some()) {
            // PAX sparse (tar --format=posix -S): format 1.0 keeps the map at the start of
            // the data, in decimal lines; 0.1 keeps it in the header.
            let mut numbers = Vec::new();
            if let Some(map) = &pax.map {
                for n in map.split(',') {
                    numbers.push(n.trim().parse::<u64>().map_err(|_| {
                        bad(format, at, "the PAX sparse map is not a list of numbers")
                    })?);
                }
            } else {
                let mut text = Vec::new();
                let mut need = None;
                while need.is_none_or(|n| numbers.len() < n) {
                    if extra >= stored || numbers.len() > 2 * MAX_SEGMENTS {
                        return Err(bad(format, at, "the PAX sparse map is malformed"));
                    }
                    let mut blk = [0u8; 512];
                    read(data_at + extra, &mut blk)?;
                    extra += BLOCK;
                    text.extend_from_slice(&blk);
                    let lines: Vec<&[u8]> = text.split(|&c| c == b'\n').collect();
                    numbers.clear();
                    need = None;
                    // Only complete lines count (the last piece may be cut by the block).
                    for line in &lines[..lines.len() - 1] {
                        let v = std::str::from_utf8(line)
                            .ok()
                            .and_then(|t| t.parse::<u64>().ok())
                            .ok_or_else(|| bad(format, at, "the PAX sparse map is malformed"))?;
                        match need {
                            None => {
                                need =
                                    Some(usize::try_from(v).unwrap_or(usize::MAX).saturating_mul(2))
                            }
                            Some(_) => numbers.push(v),
                        }
                        if need.is_some_and(|n| numbers.len() == n) {
                            break;
                        }
                    }
                    if need.is_some_and(|n| n > 2 * MAX_SEGMENTS) {
                        return Err(bad(format, at, "too many sparse segments"));
                    }
                }
                stored -= extra;
            }
            if numbers.len() % 2 != 0 {
                return Err(bad(format, at, "the PAX sparse map is malformed"));
            }
            let segs: Vec<(u64, u64)> = numbers.chunks(2).map(|p| (p[0], p[1])).collect();
            sparse = Some(check_segments(format, at, segs, real, stored)?);
            size = real;
            if let Some(n) = pax.name {
                name = n;
            }
        }
        if kind == b'S' {
            let mut segs = Vec::new();
            let mut push = |e: &[u8], at: u64| -> Result<bool> {
                if e.iter().all(|&b| b == 0) {
                    return Ok(false);
                }
                let off = number(format, at, &e[..12])?;
                let n = number(format, at, &e[12..24])?;
                if segs.len() >= MAX_SEGMENTS {
                    return Err(bad(format, at, "too many sparse segments"));
                }
                segs.push((off, n));
                Ok(true)
            };
            for i in 0..4 {
                push(&h[386 + 24 * i..410 + 24 * i], at + 386)?;
            }
            size = number(format, at + 483, &h[483..495])?;
            let mut more = h[482] != 0;
            let mut ext_at = data_at;
            while more {
                let mut e = [0u8; 512];
                read(ext_at, &mut e)?;
                for i in 0..21 {
                    push(&e[24 * i..24 * i + 24], ext_at)?;
                }
                more = e[504] != 0;
                ext_at += BLOCK;
                extra += BLOCK;
            }
            sparse = Some(check_segments(format, at, segs, size, stored)?);
        }
        let member_end = next_at(stored, extra)?;
        count += 1;
        let more = visit(Member {
            name,
            data_at: data_at + extra,
            stored,
            size,
            regular: matches!(kind, b'0' | 0 | b'S' | b'7'),
            sparse,
        });
        if !more {
            return Ok(());
        }
        at = member_end;
    }
}

/// What PAX headers said of a sparse member.
#[derive(Debug, Default)]
struct PaxSparse {
    name: Option<String>,
    size: Option<u64>,
    major: Option<u32>,
    map: Option<String>,
}

/// Segments in order, inside the file of `size` bytes, their lengths adding up to what is
/// stored; zero-length segments (GNU tar ends a map with one) dropped.
fn check_segments(
    format: Format,
    at: u64,
    segs: Vec<(u64, u64)>,
    size: u64,
    stored: u64,
) -> Result<Vec<(u64, u64)>> {
    let mut end = 0u64;
    let mut total = 0u64;
    let mut out = Vec::with_capacity(segs.len());
    for (off, n) in segs {
        let e = off.checked_add(n).filter(|e| off >= end && *e <= size);
        end = e.ok_or_else(|| bad(format, at, "the sparse map is out of order"))?;
        total += n;
        if n > 0 {
            out.push((off, n));
        }
    }
    if total != stored {
        return Err(bad(
            format,
            at,
            "the sparse map does not add up to the stored size",
        ));
    }
    Ok(out)
}

/// A PAX extended header's `length key=value\n` records.
fn pax_records(b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&c| c == b' ') else {
            break;
        };
        let Some(n) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n > sp && *n <= rest.len())
        else {
            break;
        };
        let rec = &rest[sp + 1..n];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        rest = &rest[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_from(b: &[u8]) -> impl FnMut(u64, &mut [u8]) -> Result<()> + '_ {
        move |at, buf| {
            let at = at as usize;
            match b.get(at..at + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    Ok(())
                }
                None => Err(Error::invalid_image(Format::Ova, at as u64, "short")),
            }
        }
    }

    #[test]
    fn written_headers_read_back_with_large_sizes() {
        for (size, flavor) in [
            (0u64, Flavor::Ustar),
            (1000, Flavor::Gnu),
            (9 << 30, Flavor::Gnu),
            (9 << 30, Flavor::Ustar),
        ] {
            let mut a = header("disk.raw", size, 1_700_000_000, flavor).to_vec();
            // A short member body only when small.
            let body = if size < 4096 { size } else { 0 };
            a.extend(vec![7u8; body.next_multiple_of(512) as usize]);
            a.extend([0u8; 1024]);
            let m = find_member(Format::Gce, None, &mut read_from(&a), &|_| true)
                .expect("members")
                .expect("one");
            assert_eq!((m.name.as_str(), m.size), ("disk.raw", size));
            assert_eq!(m.data_at, 512);
        }
    }

    #[test]
    fn base_256_fields_of_any_width_parse() {
        assert_eq!(
            number(Format::Ova, 0, &[0x80, 0, 0, 0, 0, 0, 1, 2]).ok(),
            Some(258)
        );
        assert_eq!(
            number(Format::Ova, 0, &[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]).ok(),
            Some(256)
        );
        assert!(number(Format::Ova, 0, &[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(number(Format::Ova, 0, &[0xff; 8]).is_err());
        assert_eq!(number(Format::Ova, 0, &[0x80]).ok(), Some(0));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut a = header("x", 5, 0, Flavor::Gnu).to_vec();
        a[0] = b'y';
        assert!(members(Format::Gce, None, &mut read_from(&a)).is_err());
        let a = header("x", 1 << 40, 0, Flavor::Gnu).to_vec();
        assert!(members(Format::Gce, Some(a.len() as u64), &mut read_from(&a)).is_err());
    }
}
