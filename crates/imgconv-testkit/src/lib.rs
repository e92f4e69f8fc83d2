//! Servers for the export tests, all on 127.0.0.1 and all stopped when dropped:
//!
//! - [`S3Server`] starts `s3s-fs` (a real S3-compatible server that checks SigV4 signatures,
//!   installed by the test command) with access keys and an `exports` bucket;
//! - [`FaultProxy`] sits between a client and a server and fails chosen requests (a status, a
//!   dropped connection, a stall), and checks each body against its `Content-MD5` and
//!   `x-amz-checksum-crc32c`;
//! - [`ParServer`] implements OCI Object Storage pre-authenticated requests: a plain PUT, and
//!   the multipart protocol (`opc-multipart: true`, parts to `<accessUri><partNum>`, commit by
//!   POST, abort by DELETE);
//! - [`TlsFront`] puts HTTPS, with a certificate from a throwaway CA, in front of a server;
//! - [`pg_database`] makes a fresh database on the test command's PostgreSQL cluster.

mod http;
mod par;
mod pg;
mod proxy;
mod s3;
mod tls;

pub use par::ParServer;
pub use pg::{pg_database, PG_URL_VAR};
pub use proxy::{Fault, FaultProxy, Record, Rule};
pub use s3::{S3Server, ACCESS_KEY, SECRET_KEY};
pub use tls::TlsFront;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// A disk of `mib` MiB plus 3 KiB: every third MiB zeros, the rest pseudo-random bytes from
/// `seed` (incompressible), so that every format needs several parts.
pub fn mixed_disk(mib: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; mib * (1 << 20) + 3072];
    let mut x = seed | 1;
    let n = d.len();
    for (i, b) in d.iter_mut().enumerate() {
        if (i / (1 << 20)) % 3 != 1 || i + 4096 > n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    d
}
