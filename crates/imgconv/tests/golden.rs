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

/// The options of one case: `format` with `-o` options and `-c`.
fn options_for(
    format: Format,
    options: &[&str],
    compress: bool,
) -> imgconv::Result<ConvertOptions> {
    let mut opts = ConvertOptions::new(format);
    let mut wo = WriterOptions::new();
    for o in options {
        wo.extend(o)?;
    }
    opts.writer_options = wo;
    opts.compress = compress;
    Ok(opts)
}

fn written(format: Format, options: &[&str], compress: bool) -> imgconv::Result<String> {
    let reader = open_source(Box::new(MemSource::new(disk())), Some(Format::Raw))?;
    let opts = options_for(format, options, compress)?;
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

/// Each case's digest must be the one pinned for it; a failure lists every digest got.
fn assert_digests(cases: &[(Format, &[&str], bool, &str)], got: &[String]) {
    let report: Vec<String> = cases
        .iter()
        .zip(got)
        .map(|((f, o, c, _), d)| format!("{f} {o:?} compress={c}: {d}"))
        .collect();
    for ((format, options, compress, want), got) in cases.iter().zip(got) {
        assert_eq!(
            got,
            want,
            "{format} {options:?} compress={compress}\nall:\n{}",
            report.join("\n")
        );
    }
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
    assert_digests(&cases, &got);
    Ok(())
}

/// A 200 MiB disk in a file with holes: pieces of data (random, text, a run across a chunk
/// edge, a short tail) and holes that span many chunks, so that runs of whole zero chunks,
/// planned units partly in a hole and chunks holding data but no planned unit all occur.
fn sparse_file() -> imgconv::Result<std::path::PathBuf> {
    use std::os::unix::fs::FileExt;
    let io = |e| imgconv::Error::io("sparse golden input", e);
    let path =
        std::env::temp_dir().join(format!("imgconv-golden-sparse-{}.raw", std::process::id()));
    let f = std::fs::File::create(&path).map_err(io)?;
    let size = (200u64 << 20) + 3 * 512;
    f.set_len(size).map_err(io)?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = vec![0u8; 1 << 20];
    for b in &mut random {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog "
        .iter()
        .copied()
        .cycle()
        .take(300_000)
        .collect();
    f.write_all_at(&random, 0).map_err(io)?;
    f.write_all_at(&text, (37 << 20) + 4096).map_err(io)?;
    f.write_all_at(&random, (100 << 20) - 8192).map_err(io)?;
    // Data the file system stores that is all zeros: read, found zero, never written.
    f.write_all_at(&vec![0u8; 256 << 10], 150 << 20)
        .map_err(io)?;
    f.write_all_at(&[0x5a; 600], size - 700).map_err(io)?;
    Ok(path)
}

#[test]
fn every_writer_writes_the_bytes_it_wrote_before_from_a_file_with_holes() -> imgconv::Result<()> {
    let input = sparse_file()?;
    let dir = std::env::temp_dir().join(format!("imgconv-golden-sparse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| imgconv::Error::io("output folder", e))?;
    let cases: [(Format, &[&str], bool, &str); 17] = [
        (
            Format::Raw,
            &[],
            false,
            "73e1521e26504dfa675c49f545c8eec29e5d53ccc20ec51da04bf90981743ca8",
        ),
        (
            Format::Qcow2,
            &[],
            false,
            "a98e8947a92b69921f26fccc2c3eb2b1172f1ff5ba2150a6731639429e19cf66",
        ),
        (
            Format::Qcow2,
            &["cluster_size=4096"],
            false,
            "a7b45c731c2a5fa8f4aec59e40de5ceec5d9d7b739b8b557f0e761759b4636e8",
        ),
        (
            Format::Qcow2,
            &[],
            true,
            "1dd307f2837eaf53bf39f3778b514fd351533f67c48df720ce5f06c446a23fde",
        ),
        (
            Format::Vmdk,
            &[],
            false,
            "b8b7fadceee31f953f20cada89743de0b0eafe2b17f1ef1a104fb09d04f054ee",
        ),
        (
            Format::Vmdk,
            &["subformat=monolithicSparse"],
            false,
            "dfdfa64009b32f213f29d33d93a8865840c3a548791f0579935393e52b0a1de4",
        ),
        (
            Format::Vhd,
            &[],
            false,
            "df5edbe02b7974928be9c52976426a531f0e209e479d9457ed56861f56f33174",
        ),
        (
            Format::Vhd,
            &["subformat=fixed"],
            false,
            "e3c9423b4ad0dc3149e1ae8d8ae424957f3edd2dd62960f10ad34ff5e834070d",
        ),
        (
            Format::Vdi,
            &[],
            false,
            "fdfdabab2e173d10ee500d6de7c0e05adedb74dfc921987770cec8eca22beb6a",
        ),
        (
            Format::Vdi,
            &["subformat=fixed"],
            false,
            "de1795bddce202d6e5164951f45a356a93875df62dfb479451ccf7cb26fb8c10",
        ),
        (
            Format::Vhdx,
            &[],
            false,
            "8a84196aed95145763b5f85969c6f4fa8faee6a2b94e8dd20232023f6ac48d41",
        ),
        (
            Format::Vhdx,
            &["block_size=1M"],
            false,
            "47faf219799447f3e881f85670b18e0ce080a4ae210da6b55927616f9a1409cf",
        ),
        (
            Format::Vhdx,
            &["subformat=fixed"],
            false,
            "24ff004360033b415486be1355d09f79bdb0c80b9aec4577dd39c1467994b4ff",
        ),
        (
            Format::Ova,
            &[],
            false,
            "474bba63455130fbb0e84164dd6154440136867c1b1367182c28c50c50ea59ad",
        ),
        (
            Format::Gce,
            &[],
            false,
            "b8dedb5d8f29727638a52ae42c959f2d2efa06202ff01edfcd985b4f59980c21",
        ),
        (
            Format::Gce,
            &["round_to_gib=off"],
            false,
            "903be49864e376aa47a100d290b07852f2480e931b5f777f3d9e88397bb2e4d0",
        ),
        (
            Format::Raw,
            &["preallocation=full"],
            false,
            "73e1521e26504dfa675c49f545c8eec29e5d53ccc20ec51da04bf90981743ca8",
        ),
    ];
    let mut got = vec![];
    for (format, options, compress, _) in cases {
        let reader = imgconv::open_image(&input, Some(Format::Raw))?;
        let mut opts = options_for(format, options, compress)?;
        opts.deterministic = Some(0);
        // The file's name is written into VMDK descriptors and OVA members: no process id.
        let path = dir.join(format!("out-{format}-{}", options.join("-")));
        let dest = Destination::File {
            path: path.clone(),
            overwrite: true,
            sync: false,
        };
        convert(&*reader, dest, &opts, &NoProgress, &CancelToken::new())?;
        let mut hash = Sha256::new();
        let mut f = std::fs::File::open(&path).map_err(|e| imgconv::Error::io("output", e))?;
        std::io::copy(&mut f, &mut hash).map_err(|e| imgconv::Error::io("output", e))?;
        let _ = std::fs::remove_file(&path);
        got.push(hex::encode(hash.finalize()));
    }
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_dir_all(&dir);
    assert_digests(&cases, &got);
    Ok(())
}
