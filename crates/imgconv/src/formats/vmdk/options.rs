//! The VMDK writers' options: subformat, descriptor fields and the deflate level.

use crate::error::{Error, Result};
use crate::model::Format;

/// Default deflate level (libdeflate's 6: smaller than zlib's 6 and much faster).
pub(super) const DEFAULT_LEVEL: i32 = 6;

/// Descriptor fields of a VMDK output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VmdkOptions {
    /// `ddb.adapterType`: lsilogic (default), ide, buslogic, legacyESX or pvscsi.
    pub adapter_type: String,
    /// `ddb.virtualHWVersion` (default 4, which every ESXi and Workstation accepts).
    pub hw_version: String,
    /// Deflate level 1 to 12 (libdeflate's scale).
    pub level: i32,
    /// The extent file name the descriptor names (the output's own name).
    pub file_name: String,
    /// Where the descriptor's ids come from (reproducible output); random when `None`.
    pub identity: Option<crate::identity::Identity>,
}

impl VmdkOptions {
    /// The option names VMDK takes.
    pub(crate) const KNOWN: &'static [&'static str] = &[
        "subformat",
        "adapter_type",
        "hwversion",
        "compression_level",
    ];

    /// Take VMDK's options; returns the subformat and the descriptor options.
    pub(crate) fn parse(
        mut opts: crate::formats::options::WriterOptions,
        file_name: &str,
    ) -> Result<(String, VmdkOptions)> {
        let subformat = opts
            .take("subformat")
            .unwrap_or_else(|| "streamOptimized".into());
        let adapter_type = opts
            .take("adapter_type")
            .unwrap_or_else(|| "lsilogic".into());
        if !["lsilogic", "ide", "buslogic", "legacyESX", "pvscsi"].contains(&adapter_type.as_str())
        {
            return Err(Error::invalid_argument(format!(
                "adapter_type '{adapter_type}' is not one of lsilogic, ide, buslogic, legacyESX, pvscsi"
            )));
        }
        let hw_version = opts.take("hwversion").unwrap_or_else(|| "4".into());
        if hw_version.is_empty() || !hw_version.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::invalid_argument(format!(
                "hwversion '{hw_version}' is not a number"
            )));
        }
        let level = opts.take_level(DEFAULT_LEVEL)?;
        opts.finish(Format::Vmdk, Self::KNOWN)?;
        Ok((
            subformat,
            VmdkOptions {
                adapter_type,
                hw_version,
                level,
                file_name: file_name.to_string(),
                identity: None,
            },
        ))
    }
}
