//! One folder per format, each with the same files: `mod.rs` (spec, subset, limits),
//! `reader.rs`, `writer.rs`, and header/table files where the format has them.

pub mod options;
pub mod qcow2;
pub mod raw;
pub(crate) mod table_cache;
pub mod vdi;
pub mod vhd;
pub mod vmdk;
