//! VMDK (VMware "Virtual Disk Format 1.1"; libyal's VMDK document).
//!
//! Reader: sparse extents of versions 1 to 3 (monolithicSparse; streamOptimized with the grain
//! directory at the start, as qemu writes it, or in the footer, as VMware writes it; zeroed
//! grain entries; compressed grains), and text descriptors with FLAT, SPARSE and ZERO extents
//! (monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat). Extent files resolve only
//! inside the descriptor's folder: absolute names, `..` and links out of it are refused.
//! Delta links (a parent), seSparse and vmfsSparse are refused.
//!
//! Writers: monolithicSparse (planned layout, uncompressed, redundant grain directory; see
//! `sparse_writer.rs`) and streamOptimized (the default), in one pass and in file order, with grains
//! compressed in parallel by libdeflate (zlib-wrapped, `-o compression_level=1..12`, default
//! 6); descriptor options `adapter_type` (lsilogic by default) and `hwversion`. See
//! `stream.rs`.
//!
//! Limits: grains up to 128 MiB, 64 TiB of virtual disk, a 32 MiB grain directory, 16 MiB of
//! cached grain tables, 1 MiB descriptors with at most 1024 extents.

pub(crate) mod descriptor;
pub(crate) mod header;
mod options;
mod reader;
mod sparse;
mod sparse_writer;
mod stream;

pub(crate) use descriptor::flat_descriptor;
pub(crate) use options::VmdkOptions;
pub(crate) use reader::VmdkReader;
pub(crate) use sparse_writer::SparseWriter;
pub(crate) use stream::StreamWriter;
