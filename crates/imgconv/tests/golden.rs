//! Every writer's bytes, pinned: each format and layout option written from one fixed disk,
//! with the fields that are random or dated by design masked (VDI and VHD UUIDs, VHD
//! timestamps and the checksums over them, VMDK content ids), must hash to the digest recorded
//! here. A change to any structure's encoding shows up as a changed digest: refactors must
//! keep them, format changes must update them on purpose. The digests were recorded from the
//! code before the engine's structures were regrouped (one file per structure), and the
//! regrouped code writes the same bytes.

use imgconv::{
    convert, open_source, CancelToken, ConvertOptions, Destination, Format, MemSource, NoProgress,
    VecSink, WriterOptions,
};
use sha2::{Digest, Sha256};

/// 6 MiB + 1 KiB: data, zeros, a hole-sized gap, text, an odd tail.
fn disk() -> Vec<u8> {
    let mut d = vec![0u8; (6 << 20) + 1024];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in &mut d[..(1 << 20)] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (i, b) in d[(3 << 20)..(3 << 20) + 300_000].iter_mut().enumerate() {
        *b = b"the quick brown fox jumps over the lazy dog "[i % 44];
    }
    let n = d.len();
    d[n - 700..n - 100].fill(0x5a);
    d
}

/// Zero `len` bytes at `at`.
fn blank(b: &mut [u8], at: usize, len: usize) {
    b[at..at + len].fill(0);
}

/// Zero the `len` bytes that follow the first `key` in the first 64 KiB.
fn blank_after(b: &mut [u8], key: &[u8], len: usize) {
    let head = &b[..b.len().min(64 << 10)];
    if let Some(at) = head.windows(key.len()).position(|w| w == key) {
        blank(b, at + key.len(), len);
    }
}

fn masked(format: Format, mut b: Vec<u8>) -> Vec<u8> {
    match format {
        Format::Vdi => blank(&mut b, 0x188, 32),
        Format::Vhd => {
            let n = b.len();
            let mut footers = vec![n - 512];
            if b.starts_with(b"conectix") {
                footers.push(0);
            }
            for f in footers {
                blank(&mut b, f + 24, 4); // timestamp
                blank(&mut b, f + 64, 20); // checksum, UUID
            }
        }
        Format::Vmdk => {
            blank_after(&mut b, b"\nCID=", 8);
            blank_after(&mut b, b"ddb.longContentID = \"", 32);
            blank_after(&mut b, b"ddb.uuid = \"", 47);
        }
        Format::Raw | Format::Qcow2 | Format::Vhdx | Format::Ova | Format::Gce => {}
    }
    b
}

fn written(format: Format, options: &[&str], compress: bool) -> imgconv::Result<String> {
    let reader = open_source(Box::new(MemSource::new(disk())), Some(Format::Raw))?;
    let mut opts = ConvertOptions::new(format);
    let mut wo = WriterOptions::new();
    for o in options {
        wo.extend(o)?;
    }
    opts.writer_options = wo;
    opts.compress = compress;
    let bytes = if opts.needs_seekable_output(reader.virtual_size())? {
        // Written out of order: into a file.
        let path = std::env::temp_dir().join(format!(
            "imgconv-golden-{}-{}.out",
            std::process::id(),
            options.join("-")
        ));
        let dest = Destination::File {
            path: path.clone(),
            overwrite: true,
            sync: false,
        };
        convert(&*reader, dest, &opts, &NoProgress, &CancelToken::new())?;
        let b = std::fs::read(&path).map_err(|e| imgconv::Error::io("golden output", e))?;
        let _ = std::fs::remove_file(&path);
        b
    } else {
        let sink = VecSink::new();
        convert(
            &*reader,
            Destination::Sink(Box::new(sink.clone())),
            &opts,
            &NoProgress,
            &CancelToken::new(),
        )?;
        sink.contents()
    };
    Ok(hex::encode(Sha256::digest(masked(format, bytes))))
}

#[test]
fn every_writer_writes_the_bytes_it_wrote_before() -> imgconv::Result<()> {
    let cases: [(Format, &[&str], bool, &str); 12] = [
        (
            Format::Raw,
            &[],
            false,
            "1775af9233990231d534f19d049cdc8b6885557c459970acedead9e70e37365e",
        ),
        (
            Format::Qcow2,
            &[],
            false,
            "0f50ec2e2984268ca7996d06caea0fdab770f4641360697804146b5f9debbc64",
        ),
        (
            Format::Qcow2,
            &["cluster_size=4096"],
            false,
            "28cb9464a646e4ba42d0b8c61204c6c7d27b5805235d3f4c495fcb22d87964dc",
        ),
        (
            Format::Qcow2,
            &["compat=0.10"],
            false,
            "0fe17b842c157d2fb39faebfd2c0e3bf9ad8c2cdb5395b8d4caaa15d962ccf23",
        ),
        (
            Format::Qcow2,
            &[],
            true,
            "bf9f976a3c682916fc09e6340fe8aec1d1bf71bea4a96c8284cb98df107fe281",
        ),
        (
            Format::Qcow2,
            &["compression_type=zstd"],
            true,
            "7c19b9bc2812485944a28fb5c43bd8c7492be3a42c0e8ad7336f88e519a53a01",
        ),
        (
            Format::Vmdk,
            &[],
            false,
            "f71f04eb3b4c3585b961c028577a334a2a173ec1b393fc30f140549749248b92",
        ),
        (
            Format::Vmdk,
            &["subformat=monolithicSparse"],
            false,
            "57a2bb5c30b48486aa0a65de27a3590a8324578c3b1941343d722031e96781b2",
        ),
        (
            Format::Vhd,
            &[],
            false,
            "494ca3c11cc2448c88033093b7b3db18f403b44940ba717fba95951d855cb0dd",
        ),
        (
            Format::Vhd,
            &["subformat=fixed"],
            false,
            "c30d8d23f7b6fcc4f52c3aeab7511a452a110424c722037f146b2f83570de587",
        ),
        (
            Format::Vdi,
            &[],
            false,
            "1a88496c5d9d62d34b83788697343d19a17e9592c3cab0b3add782eddf8d341a",
        ),
        (
            Format::Vdi,
            &["subformat=fixed"],
            false,
            "f321deec1b9c80e438c164dc646d757ee258b58ebe9b1a26c0c496ae68dda925",
        ),
    ];
    let mut got = vec![];
    for (format, options, compress, _) in cases {
        got.push(written(format, options, compress)?);
    }
    let report: Vec<String> = cases
        .iter()
        .zip(&got)
        .map(|((f, o, c, _), d)| format!("{f} {o:?} compress={c}: {d}"))
        .collect();
    for ((format, options, compress, want), got) in cases.iter().zip(&got) {
        assert_eq!(
            got,
            want,
            "{format} {options:?} compress={compress}\nall:\n{}",
            report.join("\n")
        );
    }
    Ok(())
}
