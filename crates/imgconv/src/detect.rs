//! Format detection from magic bytes only. An explicit format (`-f`) always wins.

use crate::error::Result;
use crate::model::Format;
use crate::source::Source;

/// Bytes read from the start of an image to detect its format.
pub(crate) const PROBE_HEAD: usize = 4096;
/// Bytes read from the end (a fixed VHD has its only footer there).
pub(crate) const PROBE_TAIL: usize = 512;

/// The format that `head` (the first bytes of an image) and `tail` (its last 512 bytes, if the
/// image is at least that long) show; RAW when nothing matches.
pub(crate) fn detect(head: &[u8], tail: Option<&[u8]>) -> Format {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"QFI\xfb") {
        return Format::Qcow2;
    }
    if starts(b"KDMV") || starts(b"COWD") || is_vmdk_descriptor(head) {
        return Format::Vmdk;
    }
    if starts(super::formats::vhdx::FILE_SIGNATURE) {
        return Format::Vhdx;
    }
    if starts(b"conectix") || tail.is_some_and(|t| t.starts_with(b"conectix")) {
        return Format::Vhd;
    }
    if head.get(0x40..0x44) == Some(&0xBEDA_107Fu32.to_le_bytes()[..]) {
        return Format::Vdi;
    }
    if starts(&[0x1f, 0x8b]) {
        return Format::Gce;
    }
    if is_ova(head) {
        return Format::Ova;
    }
    Format::Raw
}

/// A tar archive whose first member is an OVF descriptor.
fn is_ova(head: &[u8]) -> bool {
    if head.get(257..262) != Some(b"ustar") {
        return false;
    }
    let name = &head[..100];
    let end = name.iter().position(|&b| b == 0).unwrap_or(100);
    name[..end].to_ascii_lowercase().ends_with(b".ovf")
}

fn is_vmdk_descriptor(head: &[u8]) -> bool {
    const MARK: &[u8] = b"# disk descriptorfile";
    head.len() >= MARK.len() && head[..MARK.len()].eq_ignore_ascii_case(MARK)
}

/// The format of the file at `path`, told by its first and last bytes as [`crate::open_image`]
/// tells it, without opening the image (no table is read): for listings of many images.
pub fn detect_format(path: impl AsRef<std::path::Path>) -> Result<Format> {
    detect_source(&crate::FileSource::open(path)?)
}

/// Detect the format of `source` by reading its first and last bytes.
pub(crate) fn detect_source(source: &dyn Source) -> Result<Format> {
    let len = source.len();
    let head_len = len.min(PROBE_HEAD as u64) as usize;
    let mut head = vec![0u8; head_len];
    source.read_exact_at(0, &mut head)?;
    let mut tail = [0u8; PROBE_TAIL];
    let tail = if len >= PROBE_TAIL as u64 {
        source.read_exact_at(len - PROBE_TAIL as u64, &mut tail)?;
        Some(&tail[..])
    } else {
        None
    };
    Ok(detect(&head, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_told_by_its_magic_without_being_opened() -> Result<()> {
        let path = std::env::temp_dir().join(format!("imgconv-detect-{}", std::process::id()));
        // A QCOW2 header whose tables point nowhere: detected, though it would not open.
        let mut head = b"QFI\xfb\0\0\0\x03".to_vec();
        head.resize(4096, 0xff);
        std::fs::write(&path, &head).map_err(|e| crate::Error::io("scratch", e))?;
        let told = detect_format(&path);
        let opened = crate::open_image(&path, None).map(|_| ());
        let _ = std::fs::remove_file(&path);
        assert_eq!(told?, Format::Qcow2);
        assert!(opened.is_err());
        assert!(detect_format("/nonexistent/imgconv/x.raw").is_err());
        Ok(())
    }

    #[test]
    fn magic_bytes_select_the_format() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03", None), Format::Qcow2);
        assert_eq!(detect(b"KDMV\x01\0\0\0", None), Format::Vmdk);
        assert_eq!(
            detect(b"# Disk DescriptorFile\nversion=1", None),
            Format::Vmdk
        );
        assert_eq!(detect(b"conectix\0\0\0\x02", None), Format::Vhd);
        let mut vdi = vec![0u8; 0x48];
        vdi[0x40..0x44].copy_from_slice(&0xBEDA_107Fu32.to_le_bytes());
        assert_eq!(detect(&vdi, None), Format::Vdi);
    }

    #[test]
    fn a_fixed_vhd_is_found_by_its_footer() {
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        assert_eq!(detect(&[0u8; 4096], Some(&tail)), Format::Vhd);
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(detect(b"", None), Format::Raw);
        assert_eq!(detect(&[0xffu8; 4096], Some(&[0u8; 512])), Format::Raw);
    }
}
