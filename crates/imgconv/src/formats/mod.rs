//! One folder per format, each with the same files: `mod.rs` (spec, subset, limits),
//! `reader.rs`, `writer.rs`, and header/table files where the format has them.

pub(crate) mod gce;
pub(crate) mod options;
pub(crate) mod ova;
pub(crate) mod package;
pub(crate) mod qcow2;
pub(crate) mod raw;
pub(crate) mod table_cache;
pub(crate) mod tar;
pub(crate) mod vdi;
pub(crate) mod vhd;
pub(crate) mod vhdx;
pub(crate) mod vmdk;
