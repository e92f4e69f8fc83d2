//! Digests of the output stream (MD5, SHA-256, CRC32C), each computed on a thread of its own.
//!
//! The stream is fed in order as shared [`Bytes`] and zero runs; each algorithm's thread takes
//! them from a bounded queue, so hashing overlaps reading, encoding and writing, and a slow
//! hash applies back-pressure instead of buffering without limit. MD5 is inherently serial and
//! sets the pace; SHA-256 (with the CPU's SHA extensions) and CRC32C (SSE4.2) keep up easily.

use std::fmt;
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestKind {
    /// MD5 (RFC 1321), what S3's `Content-MD5` and many export APIs report.
    Md5,
    /// SHA-256 (FIPS 180-4).
    Sha256,
    /// CRC-32C (Castagnoli), S3's `x-amz-checksum-crc32c`.
    Crc32c,
}

impl DigestKind {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DigestKind::Md5 => "md5",
            DigestKind::Sha256 => "sha256",
            DigestKind::Crc32c => "crc32c",
        }
    }

    /// Parse a comma-separated list (`md5,sha256`), without duplicates, in a stable order.
    pub fn parse_list(s: &str) -> Result<Vec<DigestKind>> {
        let mut kinds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            kinds.push(part.parse::<DigestKind>()?);
        }
        kinds.sort();
        kinds.dedup();
        Ok(kinds)
    }
}

impl fmt::Display for DigestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<DigestKind> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Ok(DigestKind::Md5),
            "sha256" | "sha-256" => Ok(DigestKind::Sha256),
            "crc32c" => Ok(DigestKind::Crc32c),
            other => Err(Error::invalid_argument(format!(
                "unknown digest '{other}' (known: md5, sha256, crc32c)"
            ))),
        }
    }
}

/// A finished digest: the algorithm and its value as lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    /// The algorithm.
    pub kind: DigestKind,
    /// The value, lower-case hex (CRC32C: 8 hex digits, big-endian).
    pub hex: String,
}

/// A piece of the output stream.
#[derive(Debug, Clone)]
enum Piece {
    Data(Bytes),
    Zeros(u64),
}

/// Zeros fed to the hashers for holes.
static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// How many pieces may wait for one hasher. With 4 MiB chunks this bounds the memory a slow
/// hash can hold back to 32 MiB, and keeps enough queued to ride out scheduling hiccups.
pub const QUEUE_DEPTH: usize = 8;

trait Hasher: Send {
    fn update(&mut self, data: &[u8]) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<String>;
}

#[cfg(not(feature = "openssl"))]
struct Md5(md5::Md5);
#[cfg(feature = "openssl")]
struct Md5(openssl::hash::Hasher);
struct Sha256(sha2::Sha256);
struct Crc32c(u32);

#[cfg(not(feature = "openssl"))]
impl Hasher for Md5 {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        md5::Digest::update(&mut self.0, data);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<String> {
        Ok(hex::encode(md5::Digest::finalize(self.0)))
    }
}

#[cfg(feature = "openssl")]
impl Md5 {
    fn new() -> Md5 {
        // Creating an MD5 context only fails if libcrypto lacks MD5 (a FIPS-only build); the
        // pure-Rust path is not compiled in then, so this is a hard configuration error.
        #[allow(clippy::expect_used)]
        Md5(
            openssl::hash::Hasher::new(openssl::hash::MessageDigest::md5())
                .expect("libcrypto provides MD5"),
        )
    }
}

#[cfg(feature = "openssl")]
/// libcrypto's failure, as an error (never an empty or partial digest).
#[cfg(feature = "openssl")]
fn md5_failed(e: openssl::error::ErrorStack) -> Error {
    Error::new(ErrorKind::Internal, "MD5 (libcrypto) failed").with_source(e)
}

#[cfg(feature = "openssl")]
impl Hasher for Md5 {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.0.update(data).map_err(md5_failed)
    }
    fn finish(mut self: Box<Self>) -> Result<String> {
        self.0.finish().map(hex::encode).map_err(md5_failed)
    }
}

impl Hasher for Sha256 {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        sha2::Digest::update(&mut self.0, data);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<String> {
        Ok(hex::encode(sha2::Digest::finalize(self.0)))
    }
}

impl Hasher for Crc32c {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.0 = crc32c::crc32c_append(self.0, data);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<String> {
        Ok(format!("{:08x}", self.0))
    }
}

fn new_hasher(kind: DigestKind) -> Box<dyn Hasher> {
    match kind {
        #[cfg(not(feature = "openssl"))]
        DigestKind::Md5 => Box::new(Md5(<md5::Md5 as md5::Digest>::new())),
        #[cfg(feature = "openssl")]
        DigestKind::Md5 => Box::new(Md5::new()),
        DigestKind::Sha256 => Box::new(Sha256(<sha2::Sha256 as sha2::Digest>::new())),
        DigestKind::Crc32c => Box::new(Crc32c(0)),
    }
}

struct Worker {
    kind: DigestKind,
    tx: SyncSender<Piece>,
    handle: JoinHandle<Result<String>>,
}

/// Digests of a stream, computed on background threads as the stream is fed.
pub struct Digester {
    workers: Vec<Worker>,
}

impl Digester {
    /// Start one thread per algorithm in `kinds` (none for an empty list).
    pub fn start(kinds: &[DigestKind]) -> Result<Digester> {
        let mut workers = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            let (tx, rx) = sync_channel::<Piece>(QUEUE_DEPTH);
            let handle = std::thread::Builder::new()
                .name(format!("imgconv-{kind}"))
                .spawn(move || run(new_hasher(kind), rx))
                .map_err(|e| Error::io("cannot start a digest thread", e))?;
            workers.push(Worker { kind, tx, handle });
        }
        Ok(Digester { workers })
    }

    /// Whether any digest is being computed.
    pub fn is_active(&self) -> bool {
        !self.workers.is_empty()
    }

    /// Feed bytes.
    pub fn data(&self, bytes: &Bytes) -> Result<()> {
        self.send(|| Piece::Data(bytes.clone()))
    }

    /// Feed `len` zero bytes.
    pub fn zeros(&self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.send(|| Piece::Zeros(len))
    }

    fn send(&self, piece: impl Fn() -> Piece) -> Result<()> {
        for w in &self.workers {
            w.tx.send(piece()).map_err(|_| {
                Error::new(
                    ErrorKind::Io,
                    format!("the {} digest thread stopped", w.kind),
                )
            })?;
        }
        Ok(())
    }

    /// Wait for every thread and return the digests in the order they were asked for.
    pub fn finish(self) -> Result<Vec<Digest>> {
        let mut out = Vec::with_capacity(self.workers.len());
        for w in self.workers {
            drop(w.tx);
            let hex = w.handle.join().map_err(|_| {
                Error::new(
                    ErrorKind::Internal,
                    format!("the {} digest thread failed", w.kind),
                )
            })??;
            out.push(Digest { kind: w.kind, hex });
        }
        Ok(out)
    }
}

/// Hash what arrives until the sender hangs up. On a failure the thread stops taking pieces,
/// so the next send fails at once, and the error is what the thread returns.
fn run(mut hasher: Box<dyn Hasher>, rx: Receiver<Piece>) -> Result<String> {
    for piece in rx {
        match piece {
            Piece::Data(b) => hasher.update(&b)?,
            Piece::Zeros(mut n) => {
                while n > 0 {
                    let step = n.min(ZEROS.len() as u64) as usize;
                    hasher.update(&ZEROS[..step])?;
                    n -= step as u64;
                }
            }
        }
    }
    hasher.finish()
}

/// The raw 16-byte MD5 of `data`, through the same implementation as the stream digests (the
/// system's libcrypto with the `openssl` feature): what `Content-MD5` headers carry.
pub fn md5(data: &[u8]) -> [u8; 16] {
    #[cfg(not(feature = "openssl"))]
    {
        md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(data)).into()
    }
    #[cfg(feature = "openssl")]
    {
        let mut out = [0u8; 16];
        // MD5 is always in libcrypto's default provider (see `Md5::new`); should it fail, fall
        // back to the pure-Rust implementation rather than send a wrong checksum.
        match openssl::hash::hash(openssl::hash::MessageDigest::md5(), data) {
            Ok(d) if d.len() == 16 => out.copy_from_slice(&d),
            _ => {
                out = md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(data)).into()
            }
        }
        out
    }
}

/// Digest a whole byte slice at once (tests and small outputs).
pub fn digest_bytes(kind: DigestKind, data: &[u8]) -> Result<Digest> {
    let mut h = new_hasher(kind);
    h.update(data)?;
    Ok(Digest {
        kind,
        hex: h.finish()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() -> Result<()> {
        assert_eq!(
            digest_bytes(DigestKind::Md5, b"abc")?.hex,
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(hex::encode(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex::encode(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            digest_bytes(DigestKind::Sha256, b"abc")?.hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(
            digest_bytes(DigestKind::Crc32c, &[0u8; 32])?.hex,
            "8a9136aa"
        );
        Ok(())
    }

    #[test]
    fn threaded_digests_equal_one_shot_digests_with_zero_runs() -> Result<()> {
        let kinds = [DigestKind::Md5, DigestKind::Sha256, DigestKind::Crc32c];
        let d = Digester::start(&kinds)?;
        d.data(&Bytes::from_vec(b"head".to_vec()))?;
        d.zeros(200_000)?;
        d.data(&Bytes::from_vec(b"tail".to_vec()))?;
        let got = d.finish()?;
        let mut whole = b"head".to_vec();
        whole.extend(std::iter::repeat_n(0u8, 200_000));
        whole.extend_from_slice(b"tail");
        for (g, k) in got.iter().zip(kinds) {
            assert_eq!(g, &digest_bytes(k, &whole)?);
        }
        Ok(())
    }

    #[test]
    fn digest_list_parses_dedups_and_rejects_unknown_names() {
        assert_eq!(
            DigestKind::parse_list("sha256,md5,md5").ok(),
            Some(vec![DigestKind::Md5, DigestKind::Sha256])
        );
        assert!(DigestKind::parse_list("sha1").is_err());
    }
}
