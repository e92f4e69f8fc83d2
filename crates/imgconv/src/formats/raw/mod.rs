//! RAW: the virtual disk byte for byte.
//!
//! Reader: any regular file or block device; the extent map comes from `SEEK_DATA`/`SEEK_HOLE`
//! (holes are [`crate::Extent::Unallocated`]), and where the file system cannot say, everything
//! is data and zero detection finds the zeros. Writer: zero runs of 4 KiB units become holes
//! (as `qemu-img convert -S 4k`), the size is exact to the byte, and `-o preallocation=`
//! `off` (default), `falloc` or `full` is available.

mod reader;
mod writer;

pub(crate) use reader::RawReader;
pub(crate) use writer::{RawEncoder, RawOptions, RawPiece, RawWriter, RAW_UNIT};
