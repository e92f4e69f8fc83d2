//! QCOW2: images made by other tools, the writer checked by qemu-img and libqcow, round trips,
//! and hostile inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::*;

/// Decompress a fixture from `testdata/qcow2` into `dir`.
fn fixture(dir: &Path, name: &str) -> PathBuf {
    fixture_in(dir, "qcow2", name)
}

/// The source for writer tests: holes, allocated zeros, random and compressible data, and a
/// size (9 MiB + 3 KiB) that is not a multiple of any cluster size.
fn source(dir: &Path) -> PathBuf {
    mixed_source(dir)
}

fn path(p: &Path) -> &str {
    path_str(p)
}

fn qemu_ok(args: &[&str]) -> String {
    let out = tool("qemu-img", args);
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Size and MD5 of the virtual disk as libqcow (`pyqcow`) reads it.
fn pyqcow_md5(img: &Path) -> (u64, String) {
    let script = "import sys, hashlib, pyqcow\n\
        f = pyqcow.file(); f.open(sys.argv[1]); n = f.get_media_size(); h = hashlib.md5(); o = 0\n\
        while o < n:\n    b = f.read_buffer_at_offset(min(1 << 20, n - o), o); h.update(b); o += len(b)\n\
        print(n, h.hexdigest())\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, path(img)])
        .output()
        .expect("python3 with pyqcow (package python3-libqcow) is required");
    assert!(out.status.success(), "pyqcow failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let size = words.next().and_then(|w| w.parse().ok()).expect("size");
    (size, words.next().expect("md5").to_string())
}

/// MD5 of the first `size` bytes of `raw`, zero-padded past its end.
fn md5_padded(raw: &Path, size: u64) -> String {
    let mut bytes = std::fs::read(raw).expect("read");
    bytes.resize(size as usize, 0);
    let tmp = raw.with_extension("padded");
    std::fs::write(&tmp, bytes).expect("write");
    md5sum(&tmp)
}

#[test]
fn images_made_by_other_tools_read_as_the_manifest_says() {
    let dir = scratch("qcow2-fixtures");
    for (name, sha) in [
        (
            "freebsd-mkimg-v2.qcow2",
            "1253b03b3052103f839fbea755a298b8a4ae7993a3e414c0420e7e30b363ed33",
        ),
        (
            "malformed-cdi-qcow2-65536-snapshots.qcow2",
            "076a27c79e5ace2a3d47f9dd2e83e4ff6ea8872b3c2218f66c92b89b55f36560",
        ),
    ] {
        let img = fixture(&dir, name);
        let out = dir.join(format!("{name}.raw"));
        ok(imgconv().arg(&img).arg(&out));
        assert_eq!(sha256sum(&out), sha, "{name}");
    }
    let info = ok(imgconv()
        .arg("info")
        .arg(dir.join("malformed-cdi-qcow2-65536-snapshots.qcow2")));
    assert!(
        info.contains("snapshots: 65536 (table unreadable"),
        "{info}"
    );

    let qcow1 = fixture(&dir, "malformed-cdi-qcow1-152TiB-virtual.qcow");
    let err = fails_with(imgconv().arg(&qcow1).arg(dir.join("v1.raw")), 9);
    assert!(err.contains("version 1"), "{err}");
    assert!(!dir.join("v1.raw").exists());
}

#[test]
fn writer_variants_pass_qemu_img_and_libqcow() {
    let dir = scratch("qcow2-writer");
    let src = source(&dir);
    let size = std::fs::metadata(&src).expect("src").len();
    let padded = size.div_ceil(512) * 512;
    // (convert arguments, compat, cluster size, compression type, libqcow reads it)
    let variants: [(&[&str], &str, u64, &str, bool); 7] = [
        (&[], "1.1", 65536, "zlib", true),
        (&["-o", "compat=0.10"], "0.10", 65536, "zlib", true),
        (&["-o", "cluster_size=4K"], "1.1", 4096, "zlib", true),
        (&["-o", "cluster_size=64K"], "1.1", 65536, "zlib", true),
        (&["-o", "cluster_size=2M"], "1.1", 2 << 20, "zlib", true),
        (&["-c"], "1.1", 65536, "zlib", true),
        // libqcow (2020) predates zstd clusters; qemu-img checks this one alone.
        (
            &["-c", "-o", "compression_type=zstd"],
            "1.1",
            65536,
            "zstd",
            false,
        ),
    ];
    for (i, (args, compat, cluster, ctype, libqcow)) in variants.into_iter().enumerate() {
        let opts = format!("{args:?}");
        let out = dir.join(format!("out-{i}.qcow2"));
        ok(imgconv().arg("convert").args(args).arg(&src).arg(&out));
        let check = tool("qemu-img", &["check", "-f", "qcow2", path(&out)]);
        assert!(check.status.success(), "{opts}: check: {check:?}");
        assert!(
            String::from_utf8_lossy(&check.stdout).contains("No errors were found"),
            "{opts}: {check:?}"
        );
        let cmp = qemu_compare_formats(&src, "raw", &out, "qcow2");
        assert_eq!(cmp, 0, "{opts}");
        let info = qemu_info(&out, "qcow2");
        let data = &info["format-specific"]["data"];
        assert_eq!(info["cluster-size"], cluster, "{opts}");
        assert_eq!(data["compat"], compat, "{opts}");
        assert_eq!(data["compression-type"], ctype, "{opts}");
        assert_eq!(info["virtual-size"], padded, "{opts}");
        if libqcow {
            let (lib_size, lib_md5) = pyqcow_md5(&out);
            assert_eq!(lib_size, padded, "{opts}");
            assert_eq!(lib_md5, md5_padded(&src, lib_size), "{opts}");
        }
        let file = std::fs::metadata(&out).expect("out").len();
        if args.contains(&"-c") {
            assert!(file < size / 2, "{opts}: compressed output of {file} bytes");
            continue;
        }
        let m: serde_json::Value = serde_json::from_str(&ok(imgconv()
            .args(["measure", "-O", "qcow2", "--output", "json"])
            .args(args)
            .arg(&src)))
        .expect("measure JSON");
        assert_eq!(m["required"], file, "{opts}");
    }
}

#[test]
fn images_qemu_img_makes_convert_to_its_own_raw() {
    let dir = scratch("qcow2-from-qemu");
    let src = source(&dir);
    let variants: [&[&str]; 9] = [
        &[],
        &["-o", "compat=0.10"],
        &["-o", "cluster_size=4K"],
        &["-o", "cluster_size=64K"],
        &["-o", "cluster_size=2M"],
        &["-c"],
        &["-c", "-o", "compression_type=zstd"],
        &["-o", "extended_l2=on"],
        &["-o", "preallocation=metadata"],
    ];
    for (i, opts) in variants.iter().enumerate() {
        let img = dir.join(format!("q{i}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[path(&src), path(&img)]);
        qemu_ok(&args);
        assert_converts_like_qemu(&dir, &img, &format!("{opts:?}"));
    }
}

/// `imgconv IMG out.raw` has the MD5 of `qemu-img convert -O raw IMG`.
fn assert_converts_like_qemu(dir: &Path, img: &Path, what: &str) {
    let ours = dir.join("ours.raw");
    let theirs = dir.join("theirs.raw");
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
    ok(imgconv().arg(img).arg(&ours));
    qemu_ok(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        path(img),
        path(&theirs),
    ]);
    assert_eq!(md5sum(&ours), md5sum(&theirs), "{what}");
}

#[test]
fn zero_clusters_subclusters_and_snapshots_read_like_qemu() {
    let dir = scratch("qcow2-zero-snap");
    let src = source(&dir);
    let qemu_io = |img: &Path, cmds: &[&str]| {
        let mut args = vec!["-f", "qcow2"];
        for c in cmds {
            args.extend_from_slice(&["-c", c]);
        }
        args.push(path(img));
        let out = tool("qemu-io", &args);
        assert!(out.status.success(), "qemu-io {cmds:?}: {out:?}");
    };
    // A discarded range and explicit zero clusters.
    let zeroed = dir.join("zeroed.qcow2");
    qemu_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path(&src),
        path(&zeroed),
    ]);
    qemu_io(
        &zeroed,
        &["discard 0 64k", "write -z 4M 128k", "write -z -u 6M 64k"],
    );
    assert_converts_like_qemu(&dir, &zeroed, "discard and zero clusters");

    // Subclusters: partial writes into 64 KiB clusters with 2 KiB subclusters.
    let sub = dir.join("sub.qcow2");
    qemu_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        path(&sub),
        "4M",
    ]);
    qemu_io(
        &sub,
        &[
            "write -P 0x44 6k 2k",
            "write -P 0x55 70k 10k",
            "write -z 72k 2k",
            "write -P 0x66 4094k 2k",
        ],
    );
    assert_converts_like_qemu(&dir, &sub, "extended L2");

    // Internal snapshots: the active layer is converted and the snapshot is listed.
    let snap = dir.join("snap.qcow2");
    qemu_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path(&src),
        path(&snap),
    ]);
    qemu_ok(&["snapshot", "-c", "before", path(&snap)]);
    qemu_io(&snap, &["write -P 0x33 0 64k"]);
    assert_converts_like_qemu(&dir, &snap, "snapshot");
    let info = ok(imgconv().arg("info").arg(&snap));
    assert!(info.contains("snapshots: 1: before"), "{info}");
}

#[test]
fn round_trips_keep_the_content() {
    let dir = scratch("qcow2-round-trip");
    let src = source(&dir);
    let a = dir.join("a.qcow2");
    let b = dir.join("b.qcow2");
    let raw = dir.join("back.raw");
    let c = dir.join("c.qcow2");
    ok(imgconv().arg(&src).arg(&a));
    ok(imgconv()
        .args(["convert", "-o", "cluster_size=4K"])
        .arg(&a)
        .arg(&b));
    ok(imgconv().arg(&b).arg(&raw));
    ok(imgconv().arg(&raw).arg(&c));
    let size = std::fs::metadata(&raw).expect("raw").len();
    assert_eq!(
        size,
        std::fs::metadata(&src).expect("src").len().div_ceil(512) * 512
    );
    assert_eq!(md5sum(&raw), md5_padded(&src, size));
    let cmp = imgconv()
        .arg("compare")
        .arg(&a)
        .arg(&c)
        .output()
        .expect("compare");
    assert_eq!(cmp.status.code(), Some(0));
}

/// A small valid image to corrupt: (path, bytes, L1 offset, first L2 offset).
fn victim(dir: &Path) -> (PathBuf, Vec<u8>, u64, u64) {
    let raw = Image::new(dir.join("v.raw"), 2 * MIB)
        .data(0, 200_000)
        .done();
    let img = dir.join("v.qcow2");
    ok(imgconv().arg(&raw).arg(&img));
    let bytes = std::fs::read(&img).expect("read");
    let be = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let l1 = be(40);
    let l2 = be(l1 as usize) & 0x00ff_ffff_ffff_fe00;
    (img, bytes, l1, l2)
}

#[test]
fn malformed_images_fail_clearly_without_output() {
    let dir = scratch("qcow2-malformed");
    let (_, good, l1, l2) = victim(&dir);
    let l1 = l1 as usize;
    let l2 = l2 as usize;
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let compressed = {
        let img = dir.join("c.qcow2");
        qemu_ok(&[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path(&dir.join("v.raw")),
            path(&img),
        ]);
        let b = std::fs::read(&img).expect("read");
        b[..b.len() / 2].to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("truncated in the header", good[..50].to_vec(), 8),
        ("truncated in L1", good[..l1 + 4].to_vec(), 8),
        ("truncated in L2", good[..l2 + 100].to_vec(), 8),
        ("truncated in a compressed cluster", compressed, 8),
        ("bad magic", patch(0, b"QFI\x00"), 8),
        ("version 4", patch(4, &4u32.to_be_bytes()), 9),
        ("cluster_bits 8", patch(20, &8u32.to_be_bytes()), 8),
        ("cluster_bits 22", patch(20, &22u32.to_be_bytes()), 8),
        (
            "L1 over the memory limit",
            patch(36, &(16u32 << 20).to_be_bytes()),
            10,
        ),
        (
            "L2 beyond the end",
            patch(l1, &(0x8000_0000_1000_0000u64).to_be_bytes()),
            8,
        ),
        (
            "L2 unaligned",
            patch(l1, &((l2 as u64 + 512) | 1 << 63).to_be_bytes()),
            8,
        ),
        (
            "compressed descriptor past the end",
            patch(l2, &(1u64 << 62 | 0x3fff_0000).to_be_bytes()),
            8,
        ),
        (
            "refcount table over the header",
            patch(48, &0u64.to_be_bytes()),
            8,
        ),
        (
            "unknown incompatible bit",
            patch(72, &(1u64 << 10).to_be_bytes()),
            9,
        ),
        ("external data file", patch(72, &4u64.to_be_bytes()), 9),
        ("encryption", patch(32, &1u32.to_be_bytes()), 9),
        (
            "backing file",
            {
                let mut b = patch(8, &0x200u64.to_be_bytes());
                b[16..20].copy_from_slice(&8u32.to_be_bytes());
                b[0x200..0x208].copy_from_slice(b"base.img");
                b
            },
            9,
        ),
        (
            "json: backing file",
            {
                let name = b"json:{\"file.filename\":\"/etc/passwd\"}";
                let mut b = patch(8, &0x200u64.to_be_bytes());
                b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
                b[0x200..0x200 + name.len()].copy_from_slice(name);
                b
            },
            9,
        ),
    ];
    // info still describes a refused image and names what was refused.
    let mut backing = good.clone();
    backing[8..16].copy_from_slice(&0x200u64.to_be_bytes());
    backing[16..20].copy_from_slice(&8u32.to_be_bytes());
    backing[0x200..0x208].copy_from_slice(b"base.img");
    let img = dir.join("backing.qcow2");
    std::fs::write(&img, &backing).expect("write");
    let info = ok(imgconv().arg("info").arg(&img));
    assert!(info.contains("backing file: base.img"), "{info}");
    assert!(
        info.contains("refused: the image has a backing file"),
        "{info}"
    );
    for (what, bytes, code) in cases {
        let img = dir.join("bad.qcow2");
        std::fs::write(&img, &bytes).expect("write");
        let out = dir.join("out.raw");
        let err = fails_with(imgconv().args(["-f", "qcow2"]).arg(&img).arg(&out), code);
        assert!(!out.exists(), "{what}: output left behind");
        assert!(err.len() < 400, "{what}: {err}");
    }
}

#[test]
fn compressed_output_to_a_stream_is_refused_up_front() {
    let dir = scratch("qcow2-stream");
    let src = Image::new(dir.join("in.raw"), MIB).data(0, 4096).done();
    let out = imgconv()
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&src)
        .arg("-")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(9));
    assert!(
        out.stdout.is_empty(),
        "bytes went to stdout before the refusal"
    );
    one_line_error(&out);
}

#[test]
fn into_a_file_the_tables_come_last_and_the_bytes_are_the_streamed_ones() {
    // Written zeros over whole L2 tables' ranges (4 KiB clusters: 2 MiB each), found before
    // the first byte; with 4 KiB clusters the file's map touches 3840 clusters (two refcount
    // blocks of 2048) and 1537 are stored (one), so the room kept is a block too large and
    // the data moves. With 64 KiB clusters the room is exact.
    use std::os::unix::fs::FileExt;
    let dir = scratch("qcow2-tables-last");
    let src = dir.join("in.raw");
    let f = std::fs::File::create(&src).expect("create");
    f.set_len(16 * MIB).expect("size");
    f.write_all_at(&vec![0u8; 9 * MIB as usize], 0)
        .expect("zeros");
    let noise: Vec<u8> = (0..6 * MIB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all_at(&noise, 10 * MIB - 4096).expect("data");
    f.write_all_at(b"tail", 16 * MIB - 4).expect("tail");
    drop(f);
    for args in [&["-o", "cluster_size=4K"][..], &[][..]] {
        let opts = format!("{args:?}");
        let file = dir.join("file.qcow2");
        let streamed = dir.join("streamed.qcow2");
        ok(imgconv()
            .args(["convert", "--force", "-O", "qcow2"])
            .args(args)
            .arg(&src)
            .arg(&file));
        let out = imgconv()
            .args(["convert", "-O", "qcow2"])
            .args(args)
            .arg(&src)
            .arg("-")
            .output()
            .expect("run");
        assert!(out.status.success(), "{opts}: {out:?}");
        std::fs::write(&streamed, &out.stdout).expect("write");
        assert!(
            std::fs::read(&file).expect("file") == out.stdout,
            "{opts}: the file differs from the stream"
        );
        let check = tool("qemu-img", &["check", "-f", "qcow2", path(&file)]);
        assert!(
            String::from_utf8_lossy(&check.stdout).contains("No errors were found"),
            "{opts}: {check:?}"
        );
        assert_eq!(
            qemu_compare_formats(&src, "raw", &file, "qcow2"),
            0,
            "{opts}"
        );
        let (size, md5) = pyqcow_md5(&file);
        assert_eq!((size, md5), (16 * MIB, md5sum(&src)), "{opts}");
        let m: serde_json::Value = serde_json::from_str(&ok(imgconv()
            .args(["measure", "-O", "qcow2", "--output", "json"])
            .args(args)
            .arg(&src)))
        .expect("measure JSON");
        let len = std::fs::metadata(&file).expect("file").len();
        assert_eq!(m["required"], len, "{opts}");
        std::fs::remove_file(&file).ok();
    }
}
