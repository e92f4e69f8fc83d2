//! The RAW writer: data as is, zero units as holes.

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::WriterOptions;
use crate::model::Chunk;
use crate::model::Format;
use crate::model::Plan;
use crate::sink::{Output, Preallocation};
use crate::writer::{Encoder, Writer, WriterSummary};

/// Hole granularity: a 4 KiB run of zeros becomes a hole (qemu-img's `-S 4k` default, and the
/// block size of common file systems, below which a hole saves nothing).
pub(crate) const RAW_UNIT: u64 = 4096;

/// Options of the RAW writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawOptions {
    /// How zero runs are stored in the output file.
    pub preallocation: Preallocation,
}

impl RawOptions {
    /// The option names RAW takes.
    pub(crate) const KNOWN: &'static [&'static str] = &["preallocation"];

    /// Take RAW's options out of `opts`, refusing unknown ones.
    pub(crate) fn parse(mut opts: WriterOptions) -> Result<RawOptions> {
        let preallocation = opts.take_parsed("preallocation")?.unwrap_or_default();
        opts.finish(Format::Raw, Self::KNOWN)?;
        Ok(RawOptions { preallocation })
    }
}

/// A piece of RAW output.
#[derive(Debug, Clone)]
pub(crate) enum RawPiece {
    /// Bytes to write.
    Data(Bytes),
    /// Bytes a worker already wrote in place ([`Encoder::write_placed`]).
    Written(Bytes),
    /// A run of zeros.
    Zeros(u64),
}

/// The RAW encoder: splits a chunk into data runs and zero runs.
/// Bytes a piece stands for.
fn piece_len(piece: &RawPiece) -> u64 {
    match piece {
        RawPiece::Data(b) | RawPiece::Written(b) => b.len() as u64,
        RawPiece::Zeros(n) => *n,
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawEncoder;

impl Encoder for RawEncoder {
    type Encoded = Vec<RawPiece>;

    fn encode(&self, chunk: Chunk) -> Result<Vec<RawPiece>> {
        let Some(data) = &chunk.data else {
            return Ok(vec![RawPiece::Zeros(chunk.len as u64)]);
        };
        Ok(chunk
            .runs()
            .map(|(range, nonzero)| {
                if nonzero {
                    RawPiece::Data(data.slice(range))
                } else {
                    RawPiece::Zeros(range.len() as u64)
                }
            })
            .collect())
    }

    fn placement(&self) -> crate::writer::Placement {
        crate::writer::Placement::Guest
    }

    fn write_placed(
        &self,
        pieces: &mut Vec<RawPiece>,
        offset: u64,
        out: &crate::sink::Placed,
    ) -> Result<()> {
        // A chunk's bytes are the disk's at the same offset (RAW, fixed VHD, a flat extent).
        let mut at = offset;
        for piece in pieces.iter_mut() {
            if let RawPiece::Data(b) = piece {
                out.write_at(at, b)?;
                *piece = RawPiece::Written(b.clone());
            }
            at += piece_len(piece);
        }
        Ok(())
    }
}

/// The RAW writer.
#[derive(Debug)]
pub(crate) struct RawWriter {
    padded_size: u64,
    allocated_units: u64,
}

impl RawWriter {
    /// A writer for a disk of `virtual_size` bytes.
    pub(crate) fn new(virtual_size: u64) -> RawWriter {
        RawWriter::padded(virtual_size, virtual_size)
    }

    /// A writer whose output is zero-padded from `virtual_size` up to `padded_size` bytes
    /// (a flat VMDK extent holds whole sectors).
    pub(crate) fn padded(virtual_size: u64, padded_size: u64) -> RawWriter {
        RawWriter {
            padded_size: padded_size.max(virtual_size),
            allocated_units: 0,
        }
    }
}

impl Writer for RawWriter {
    type Encoder = RawEncoder;

    fn format(&self) -> Format {
        Format::Raw
    }

    fn unit_size(&self) -> u64 {
        RAW_UNIT
    }

    fn needs_plan(&self) -> bool {
        false
    }

    fn output_len(&self) -> Option<u64> {
        Some(self.padded_size)
    }

    fn encoder(&self) -> RawEncoder {
        RawEncoder
    }

    fn begin(&mut self, _plan: Option<&Plan>, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn commit(&mut self, pieces: Vec<RawPiece>, out: &mut Output) -> Result<()> {
        for piece in pieces {
            match piece {
                RawPiece::Data(b) => {
                    self.allocated_units += (b.len() as u64).div_ceil(RAW_UNIT);
                    out.write(&b)?;
                }
                RawPiece::Written(b) => {
                    self.allocated_units += (b.len() as u64).div_ceil(RAW_UNIT);
                    out.written(&b)?;
                }
                RawPiece::Zeros(n) => out.write_zeros(n)?,
            }
        }
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, len: u64, out: &mut Output) -> Result<bool> {
        out.write_zeros(len)?;
        Ok(true)
    }

    fn finish(self, out: &mut Output) -> Result<WriterSummary> {
        out.write_zeros(self.padded_size.saturating_sub(out.position()))?;
        if out.position() != self.padded_size {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "internal error: wrote {} bytes of a {}-byte disk",
                    out.position(),
                    self.padded_size
                ),
            ));
        }
        Ok(WriterSummary {
            format: Format::Raw,
            allocated_units: self.allocated_units,
            unit_size: RAW_UNIT,
        })
    }
}
