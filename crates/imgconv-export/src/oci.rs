//! The `OCI` export format of Oracle Cloud: a tar holding `image_metadata.json` and
//! `output.QCOW2`. The QCOW2 is streamed into the tar: its size is known before a byte is
//! written (imgconv's QCOW2 writer plans the file, and `measure` gives its exact size), so the
//! entry's header goes first and the archive is one pass, with no scratch file. The digests are
//! of the archive as stored.

use std::sync::{Arc, Mutex};

use imgconv::digest::Digester;
use imgconv::Bytes;
use imgconv::{Digest, DigestKind, Error, ErrorKind, Result, Sink};

const BLOCK: usize = 512;

/// The metadata OCI writes next to the disk of an exported custom image.
pub fn default_metadata() -> serde_json::Value {
    serde_json::json!({
        "version": 2,
        "externalLaunchOptions": {
            "firmware": "BIOS",
            "networkType": "PARAVIRTUALIZED",
            "bootVolumeType": "PARAVIRTUALIZED",
            "remoteDataVolumeType": "PARAVIRTUALIZED",
            "localDataVolumeType": "PARAVIRTUALIZED",
            "launchOptionsSource": "PARAVIRTUALIZED",
            "pvAttachmentVersion": 2,
            "pvEncryptionInTransitEnabled": false,
            "consistentVolumeNamingEnabled": false
        },
        "imageCapabilityData": null,
        "imageCapsFormatVersion": null,
        "operatingSystem": "Custom",
        "operatingSystemVersion": "Custom",
        "additionalMetadata": { "shapeCompatibilities": [] }
    })
}

/// A ustar header for a regular file of `size` bytes (sizes of 8 GiB and more in the GNU
/// base-256 form, which GNU tar, bsdtar and Python read).
pub(crate) fn tar_header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    if name.len() > 99 {
        return Err(Error::invalid_argument("tar entry name too long"));
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(format!("{:011o}\0", mtime.min(0o77777777777)).as_bytes());
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

fn padding(len: u64) -> usize {
    (BLOCK - (len % BLOCK as u64) as usize) % BLOCK
}

/// The archive's digests, available once the sink has finished.
pub(crate) type Digests = Arc<Mutex<Option<Vec<Digest>>>>;

/// A sink that wraps the QCOW2 stream in the OCI tar on its way to `inner`.
pub(crate) struct OciArchiveSink {
    inner: Box<dyn Sink>,
    digester: Option<Digester>,
    disk_size: u64,
    written: u64,
    out: Digests,
}

impl OciArchiveSink {
    /// Start the archive: the metadata entry, then the header of a `disk_size`-byte
    /// `output.QCOW2`, both dated `epoch` (now when `None`).
    pub(crate) fn new(
        inner: Box<dyn Sink>,
        metadata: &serde_json::Value,
        disk_size: u64,
        epoch: Option<u64>,
        out: Digests,
    ) -> Result<Self> {
        let mtime = epoch.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
        let meta = serde_json::to_vec_pretty(metadata)
            .map_err(|e| Error::new(ErrorKind::Internal, "image metadata").with_source(e))?;
        let mut s = OciArchiveSink {
            inner,
            digester: Some(Digester::start(&[DigestKind::Md5, DigestKind::Sha256])?),
            disk_size,
            written: 0,
            out,
        };
        s.emit(&tar_header(
            "image_metadata.json",
            meta.len() as u64,
            mtime,
        )?)?;
        s.emit(&meta)?;
        s.emit(&vec![0; padding(meta.len() as u64)])?;
        s.emit(&tar_header("output.QCOW2", disk_size, mtime)?)?;
        Ok(s)
    }

    fn emit(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(d) = &self.digester {
            d.data(&Bytes::from_vec(data.to_vec()))?;
        }
        self.inner.write(data)
    }
}

impl Sink for OciArchiveSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.written += data.len() as u64;
        if self.written > self.disk_size {
            return Err(Error::new(
                ErrorKind::Io,
                "the QCOW2 grew past the size its tar entry declares",
            ));
        }
        self.emit(data)
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        crate::parts::in_zero_pieces(len, |z| self.write(z))
    }

    fn position(&self) -> u64 {
        self.written
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.written != self.disk_size {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the QCOW2 is {} bytes, not the {} its tar entry declares",
                    self.written, self.disk_size
                ),
            ));
        }
        // The entry's padding, then the two zero blocks that end an archive.
        let tail = vec![0u8; padding(self.disk_size) + 2 * BLOCK];
        self.emit(&tail)?;
        let digests = self
            .digester
            .take()
            .map(Digester::finish)
            .transpose()?
            .unwrap_or_default();
        let OciArchiveSink { inner, out, .. } = *self;
        inner.finish()?;
        if let Ok(mut o) = out.lock() {
            *o = Some(digests);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn octal(field: &[u8]) -> u64 {
        let text: String = field
            .iter()
            .take_while(|&&b| b != 0 && b != b' ')
            .map(|&b| b as char)
            .collect();
        u64::from_str_radix(&text, 8).unwrap_or(u64::MAX)
    }

    #[test]
    fn headers_carry_size_and_a_valid_checksum() -> Result<()> {
        let h = tar_header("output.QCOW2", 123_456, 1_700_000_000)?;
        assert_eq!(octal(&h[124..136]), 123_456);
        assert_eq!(&h[257..263], b"ustar\0");
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(octal(&h[148..156]), sum);
        let big = tar_header("output.QCOW2", 20 << 30, 0)?;
        assert_eq!(big[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(big[128..136].try_into().unwrap_or_default()),
            20 << 30
        );
        Ok(())
    }
}
