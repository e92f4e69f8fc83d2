//! QCOW2, as qemu's `docs/interop/qcow2.txt` specifies it.
//!
//! Reader: versions 2 and 3 (compat 0.10 and 1.1), cluster sizes 512 B to 2 MiB, standard,
//! zero (v3) and compressed clusters (zlib raw deflate with any window, zstd), extended L2
//! entries with subclusters. Internal snapshots are listed by `info`; conversion reads the
//! active layer. Refused with a clear error: version 1 and 4+, unknown incompatible feature
//! bits, encryption, backing files (including `json:` names) and external data files (imgconv
//! never opens a file an image names), images marked corrupt.
//!
//! Writer: version 3 (default) or 2 (`compat=0.10`), `cluster_size` 512 B to 2 MiB (default
//! 64 KiB), zero clusters left unallocated, 16-bit refcounts, exact. The layout is planned
//! from the allocation map and written in file order (header, L1, refcounts, L2, data).
//!
//! Compressed writer (`-c`, zlib or `-o compression_type=zstd`): clusters compressed in
//! parallel and appended in guest order; needs a seekable file (see `compressed.rs`).
//!
//! Limits: the L1 table is at most 32 MiB (qemu's own limit), L2 tables are cached up to
//! 32 MiB, the snapshot table is read only for `info` and at most 64 MiB of it.

mod check;
mod compressed;
pub(crate) mod header;
mod reader;
pub(crate) mod refcount;
mod snapshot;
mod writer;

pub(crate) use compressed::Qcow2CompressedWriter;
pub(crate) use reader::Qcow2Reader;
pub(crate) use writer::{Qcow2Options, Qcow2Writer};
