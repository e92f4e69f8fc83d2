//! Reproducible output: the ids and dates a writer embeds, derived from the input's content,
//! the options and an epoch instead of randomness and the clock.
//!
//! The content digest is computed in fixed 1 MiB blocks (a block that reads as zeros counts
//! as zeros however it is stored), each block's SHA-256 in parallel, then the SHA-256 of the
//! size and the block digests in order: the same disk gives the same digest whatever the
//! format it is read from, the thread count or the chunk size.

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::error::Result;
use crate::progress::CancelToken;
use crate::reader::{is_known_zero, Reader};

/// The block the content digest is computed in.
const BLOCK: u64 = 1 << 20;
/// Blocks digested per parallel batch (bounds the digests held at once).
const BATCH: u64 = 256;

/// Where an output's ids and dates come from when it must be reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    seed: [u8; 32],
    epoch: u64,
}

impl Identity {
    /// The identity of an output of a disk whose [`content_digest`] is `content`, written
    /// with `options` (the format and its options, as text), dated `epoch` (seconds since
    /// 1970, as `SOURCE_DATE_EPOCH`).
    pub fn derive(content: &[u8; 32], options: &str, epoch: u64) -> Identity {
        let mut h = Sha256::new();
        h.update(b"imgconv output identity 1\0");
        h.update(content);
        h.update((options.len() as u64).to_le_bytes());
        h.update(options.as_bytes());
        h.update(epoch.to_le_bytes());
        Identity {
            seed: h.finalize().into(),
            epoch,
        }
    }

    /// A random identity dated now: for outputs written twice that must come out the same
    /// (a package's rehearsal) without being reproducible.
    pub fn random() -> Identity {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Identity { seed, epoch }
    }

    /// The date every output field that holds one gets (seconds since 1970).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sixteen bytes for the field `label`.
    fn bytes(&self, label: &str) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(label.as_bytes());
        let d: [u8; 32] = h.finalize().into();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    /// A version-4-shaped UUID for the field `label`.
    pub(crate) fn uuid(&self, label: &str) -> uuid::Uuid {
        uuid::Builder::from_random_bytes(self.bytes(label)).into_uuid()
    }
}

/// A UUID for the field `label`: derived from `identity` when given, random otherwise.
pub(crate) fn new_uuid(identity: Option<&Identity>, label: &str) -> uuid::Uuid {
    identity.map_or_else(uuid::Uuid::new_v4, |i| i.uuid(label))
}

/// The SHA-256 content digest of `reader`'s virtual disk (see the module's description).
/// Reads every range the reader does not know to be zeros, once, on the worker pool.
pub fn content_digest(reader: &dyn Reader, cancel: &CancelToken) -> Result<[u8; 32]> {
    let size = reader.virtual_size();
    let blocks = size.div_ceil(BLOCK);
    let zero_block: [u8; 32] = Sha256::digest(vec![0u8; BLOCK as usize]).into();
    let mut top = Sha256::new();
    top.update(b"imgconv content 1\0");
    top.update(size.to_le_bytes());
    let mut first = 0;
    while first < blocks {
        cancel.check()?;
        let last = (first + BATCH).min(blocks);
        let digests = (first..last)
            .into_par_iter()
            .map(|b| {
                let start = b * BLOCK;
                let end = (start + BLOCK).min(size);
                if end - start == BLOCK && is_known_zero(reader, start, end)? {
                    return Ok(zero_block);
                }
                let mut buf = vec![0u8; (end - start) as usize];
                reader.read_at(start, &mut buf)?;
                Ok(Sha256::digest(&buf).into())
            })
            .collect::<Result<Vec<[u8; 32]>>>()?;
        for d in digests {
            top.update(d);
        }
        first = last;
    }
    Ok(top.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Format;
    use crate::open::open_source;
    use crate::source::MemSource;

    fn digest_of(bytes: Vec<u8>) -> [u8; 32] {
        let r = open_source(Box::new(MemSource::new(bytes)), Some(Format::Raw)).expect("open");
        content_digest(&*r, &CancelToken::new()).expect("digest")
    }

    #[test]
    fn the_digest_follows_content_and_size_only() {
        let mut a = vec![0u8; 3 << 20];
        a[(1 << 20) + 5] = 7;
        let b = a.clone();
        assert_eq!(digest_of(a.clone()), digest_of(b));
        let mut c = a.clone();
        c[(1 << 20) + 5] = 8;
        assert_ne!(digest_of(a.clone()), digest_of(c));
        let mut longer = a.clone();
        longer.push(0);
        assert_ne!(digest_of(a), digest_of(longer));
    }

    #[test]
    fn identities_differ_by_content_options_and_epoch() {
        let c = [1u8; 32];
        let base = Identity::derive(&c, "vhd", 0);
        assert_eq!(base, Identity::derive(&c, "vhd", 0));
        assert_ne!(
            base.uuid("x"),
            Identity::derive(&[2u8; 32], "vhd", 0).uuid("x")
        );
        assert_ne!(base.uuid("x"), Identity::derive(&c, "vdi", 0).uuid("x"));
        assert_ne!(base.uuid("x"), Identity::derive(&c, "vhd", 1).uuid("x"));
        assert_ne!(base.uuid("x"), base.uuid("y"));
        assert_eq!(base.uuid("x").get_version_num(), 4);
    }
}
