//! The VMDK text descriptor: `key=value` lines and extent lines
//! (`RW <sectors> SPARSE|FLAT|ZERO "<file>" [<offset>]`), and the safe resolution of extent
//! file names: only inside the descriptor's own folder.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::model::Format;

use super::options::VmdkOptions;

/// Largest descriptor read: VMware's are a few KiB.
pub(crate) const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Most extents a descriptor may list.
pub(crate) const MAX_EXTENTS: usize = 1024;
/// Largest virtual disk a descriptor may describe: 64 TiB, in sectors.
pub(crate) const MAX_TOTAL_SECTORS: u64 = 1 << 37;

/// The kind of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExtentKind {
    /// A sparse extent file (`SPARSE`).
    Sparse,
    /// Raw sectors in a file from an offset (`FLAT`, `VMFS`).
    Flat,
    /// Reads as zeros, no file (`ZERO`).
    Zero,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtentLine {
    /// Size in sectors.
    pub sectors: u64,
    /// Kind.
    pub kind: ExtentKind,
    /// File name as written (may be empty for ZERO).
    pub file: String,
    /// Start offset in the file, in sectors (FLAT).
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// `key = value` pairs in order, quotes removed.
    pub entries: Vec<(String, String)>,
    /// The extents in order.
    pub extents: Vec<ExtentLine>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidImage, msg).with_format(Format::Vmdk)
}

impl Descriptor {
    /// The value of `key` (case-insensitive), if present.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Parse descriptor text. Unknown keys are kept; malformed extent lines are errors.
    pub(crate) fn parse(text: &str) -> Result<Descriptor> {
        let mut d = Descriptor::default();
        for raw in text.split(['\n', '\0']) {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(bad(format!("more than {MAX_EXTENTS} extents")));
                }
                d.extents.push(parse_extent(line)?);
            } else if let Some((k, v)) = line.split_once('=') {
                d.entries
                    .push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
            }
        }
        let total = d
            .extents
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.sectors))
            .filter(|&t| t <= MAX_TOTAL_SECTORS)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::LimitExceeded,
                    "the extents add up to more than 64 TiB",
                )
                .with_format(Format::Vmdk)
            })?;
        let _ = total;
        Ok(d)
    }

    /// Total size of the extents in sectors.
    #[cfg(test)]
    pub(crate) fn sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
    }
}

fn parse_extent(line: &str) -> Result<ExtentLine> {
    let mut rest = line;
    let mut word = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (w, r) = t.split_at(end);
        rest = r;
        (!w.is_empty()).then_some(w)
    };
    let _access = word();
    let sectors_text = word().ok_or_else(|| bad(format!("extent line without a size: {line}")))?;
    let sectors: u64 = sectors_text.parse().map_err(|_| {
        bad(format!(
            "extent size '{sectors_text}' is not a sector count"
        ))
    })?;
    let kind_text = word().ok_or_else(|| bad(format!("extent line without a type: {line}")))?;
    let kind = match kind_text {
        "SPARSE" => ExtentKind::Sparse,
        "FLAT" | "VMFS" => ExtentKind::Flat,
        "ZERO" => ExtentKind::Zero,
        other => {
            return Err(
                Error::unsupported(format!("VMDK extent type {other} is not supported"))
                    .with_format(Format::Vmdk),
            )
        }
    };
    let tail = rest.trim();
    let (file, after) = if let Some(t) = tail.strip_prefix('"') {
        let end = t
            .find('"')
            .ok_or_else(|| bad(format!("unterminated file name in: {line}")))?;
        (t[..end].to_string(), t[end + 1..].trim())
    } else {
        (String::new(), tail)
    };
    let offset = if after.is_empty() {
        0
    } else {
        after
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .parse()
            .map_err(|_| bad(format!("extent offset '{after}' is not a sector count")))?
    };
    if kind != ExtentKind::Zero && file.is_empty() {
        return Err(bad(format!("extent without a file name: {line}")));
    }
    Ok(ExtentLine {
        sectors,
        kind,
        file,
        offset,
    })
}

/// Resolve an extent file name inside `folder`: absolute names, `..` and links that lead out
/// of the folder are refused; nothing outside the folder is ever opened.
pub(crate) fn resolve(folder: &Path, name: &str) -> Result<PathBuf> {
    let refuse = |why: &str| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "extent '{name}' {why}; imgconv opens extents only inside the descriptor's folder"
            ),
        )
        .with_format(Format::Vmdk)
    };
    let rel = Path::new(name);
    if rel.is_absolute() {
        return Err(refuse("is an absolute path"));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse("leaves the folder"));
    }
    let joined = folder.join(rel);
    let base = folder
        .canonicalize()
        .map_err(|e| Error::io("cannot resolve the descriptor's folder", e))?;
    let real = joined.canonicalize().map_err(|e| {
        Error::new(
            ErrorKind::NotFound,
            format!("extent file '{name}' named by the descriptor is missing"),
        )
        .with_format(Format::Vmdk)
        .with_source(e)
    })?;
    if !real.starts_with(&base) {
        return Err(refuse("is a link that leaves the folder"));
    }
    Ok(real)
}

/// The embedded descriptor text.
pub(super) fn descriptor(
    capacity: u64,
    o: &VmdkOptions,
    create_type: &str,
    extent: &str,
) -> String {
    let content = crate::identity::new_uuid(o.identity.as_ref(), "vmdk content id");
    let mut cid = (content.as_u128() & 0xffff_ffff) as u32;
    if cid >= 0xffff_fffe {
        cid = 0x1234_5678;
    }
    let long_id = content.simple().to_string();
    let heads = 255u64;
    let sectors = 63u64;
    let cylinders = (capacity / (heads * sectors)).clamp(1, 65535);
    let u = long_id.as_bytes();
    let uuid = (0..16)
        .map(|i| String::from_utf8_lossy(&u[i * 2..i * 2 + 2]).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n\
         # Extent description\n{extent}\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"{}\"\nddb.adapterType = \"{}\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{sectors}\"\nddb.longContentID = \"{long_id}\"\n\
         ddb.uuid = \"{uuid}\"\nddb.toolsVersion = \"2147483647\"\n",
        o.hw_version, o.adapter_type
    )
}

/// The descriptor of a monolithicFlat disk of `capacity` sectors stored in `flat_name`.
pub(crate) fn flat_descriptor(capacity: u64, o: &VmdkOptions, flat_name: &str) -> String {
    let extent = format!("RW {capacity} FLAT \"{flat_name}\" 0");
    descriptor(capacity, o, "monolithicFlat", &extent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"a-flat.vmdk\" 0\n\
        RW 100 ZERO\nRDONLY 8 SPARSE \"b.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n";

    #[test]
    fn keys_and_extents_parse() -> Result<()> {
        let d = Descriptor::parse(TEXT)?;
        assert_eq!(d.get("createtype"), Some("monolithicFlat"));
        assert_eq!(d.get("ddb.adapterType"), Some("lsilogic"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file, "a-flat.vmdk");
        assert_eq!(d.extents[1].kind, ExtentKind::Zero);
        assert_eq!(d.sectors(), 2156);
        Ok(())
    }

    #[test]
    fn negative_or_huge_sector_counts_are_refused() {
        assert!(Descriptor::parse("RW -5 FLAT \"x\" 0\n").is_err());
        assert!(Descriptor::parse("RW 18446744073709551615 FLAT \"x\" 0\n").is_err());
        let two = "RW 9223372036854775807 FLAT \"x\" 0\nRW 9223372036854775807 FLAT \"y\" 0\n";
        assert!(Descriptor::parse(two).is_err());
    }

    #[test]
    fn names_outside_the_folder_are_refused() {
        let dir = std::env::temp_dir();
        for name in ["/etc/passwd", "../outside.raw", "a/../../x"] {
            let err = resolve(&dir, name).err().map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::Unsupported), "{name}");
        }
    }
}
