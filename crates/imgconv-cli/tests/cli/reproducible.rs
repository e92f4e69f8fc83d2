//! Reproducible output: `--deterministic` and `SOURCE_DATE_EPOCH`.

use std::path::{Path, PathBuf};

use crate::*;

/// Every output format with the options that change its layout.
const OUTPUTS: &[(&str, &[&str])] = &[
    ("raw", &[]),
    ("qcow2", &[]),
    ("qcow2", &["-o", "compat=0.10"]),
    ("qcow2", &["-c"]),
    ("qcow2", &["-c", "-o", "compression_type=zstd"]),
    ("vmdk", &[]),
    ("vmdk", &["-o", "subformat=monolithicSparse"]),
    ("vmdk", &["-o", "subformat=monolithicFlat"]),
    ("vhd", &[]),
    ("vhd", &["-o", "subformat=fixed"]),
    ("vdi", &[]),
    ("vdi", &["-o", "subformat=fixed"]),
    ("vhdx", &[]),
    ("vhdx", &["-o", "subformat=fixed,logical_sector_size=4096"]),
];

/// Convert `src` into `dir/disk.FORMAT` with `extra` arguments and `epoch` in the
/// environment; returns the output (for monolithicFlat, its descriptor) and the SHA-256 of
/// every file written.
fn convert(
    src: &Path,
    dir: &Path,
    format: &str,
    args: &[&str],
    extra: &[&str],
    epoch: Option<&str>,
) -> (PathBuf, Vec<String>) {
    std::fs::create_dir_all(dir).expect("folder");
    let out = dir.join(format!("disk.{format}"));
    let mut cmd = imgconv();
    cmd.args(["convert", "--force", "-O", format])
        .args(args)
        .args(extra)
        .arg(src)
        .arg(&out);
    match epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    ok(&mut cmd);
    let mut sums = vec![sha256sum(&out)];
    let flat = dir.join("disk-flat.vmdk");
    if flat.exists() {
        sums.push(sha256sum(&flat));
    }
    (out, sums)
}

#[test]
fn the_same_input_and_options_give_the_same_bytes_whatever_the_threads_and_chunks() {
    let dir = scratch("reproducible");
    let src = mixed_source(&dir);
    for (i, (format, args)) in OUTPUTS.iter().enumerate() {
        let what = format!("{format} {args:?}");
        let base = dir.join(format!("{i}"));
        let (_, one) = convert(
            &src,
            &base.join("a"),
            format,
            args,
            &["--deterministic", "--threads", "1"],
            None,
        );
        let (_, many) = convert(
            &src,
            &base.join("b"),
            format,
            args,
            &["--deterministic"],
            None,
        );
        let (_, chunks) = convert(
            &src,
            &base.join("c"),
            format,
            args,
            &["--deterministic", "--threads", "2", "--chunk-size", "64K"],
            None,
        );
        let (_, env) = convert(&src, &base.join("d"), format, args, &[], Some("0"));
        assert_eq!(one, many, "{what}: threads");
        assert_eq!(one, chunks, "{what}: chunk size");
        assert_eq!(one, env, "{what}: SOURCE_DATE_EPOCH=0 is --deterministic");
        // Without either, ids are random again (for formats that hold ids).
        if matches!(*format, "vhd" | "vdi" | "vhdx") || *format == "vmdk" {
            let (_, random) = convert(&src, &base.join("e"), format, args, &[], None);
            assert_ne!(
                one[0], random[0],
                "{what}: random ids without --deterministic"
            );
        }
    }
}

/// The byte ranges where two outputs of one format may differ when only the epoch differs.
fn allowed(format: &str, args: &[&str], b: &[u8], at: usize) -> bool {
    match format {
        "vhd" => {
            // Footer (and its copy at the start of a dynamic disk): timestamp, checksum, id.
            let tail = b.len() - 512;
            let fixed = args.contains(&"subformat=fixed");
            [tail]
                .into_iter()
                .chain((!fixed).then_some(0))
                .any(|f| (f + 24..f + 28).contains(&at) || (f + 64..f + 84).contains(&at))
        }
        "vdi" => (0x188..0x1a8).contains(&at),
        // Both headers' checksum and file and data write GUIDs; the page 83 id.
        "vhdx" => {
            [0x10000, 0x20000]
                .iter()
                .any(|h| (h + 4..h + 8).contains(&at) || (h + 16..h + 48).contains(&at))
                || ((2 << 20) + (64 << 10) + 16..(2 << 20) + (64 << 10) + 32).contains(&at)
        }
        _ => false,
    }
}

/// The descriptor lines that may differ when only the epoch differs.
fn vmdk_id_line(line: &str) -> bool {
    line.starts_with("CID=")
        || line.starts_with("ddb.longContentID")
        || line.starts_with("ddb.uuid")
}

#[test]
fn another_epoch_changes_only_the_documented_fields() {
    let dir = scratch("reproducible-epoch");
    let src = mixed_source(&dir);
    for (i, (format, args)) in OUTPUTS.iter().enumerate() {
        let what = format!("{format} {args:?}");
        let base = dir.join(format!("{i}"));
        let (a, sa) = convert(&src, &base.join("a"), format, args, &[], Some("1000000000"));
        let (b, sb) = convert(&src, &base.join("b"), format, args, &[], Some("1700000000"));
        let (x, y) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        assert_eq!(x.len(), y.len(), "{what}");
        if *format == "vmdk" {
            let (tx, ty) = (String::from_utf8_lossy(&x), String::from_utf8_lossy(&y));
            let (lx, ly): (Vec<&str>, Vec<&str>) =
                (tx.split('\n').collect(), ty.split('\n').collect());
            assert_eq!(lx.len(), ly.len(), "{what}");
            let mut changed = 0;
            for (p, q) in lx.iter().zip(&ly) {
                if p != q {
                    assert!(vmdk_id_line(p), "{what}: line {p:?} changed to {q:?}");
                    changed += 1;
                }
            }
            assert_eq!(changed, 3, "{what}: CID, longContentID and uuid change");
            assert_eq!(sa[1..], sb[1..], "{what}: the flat extent holds no ids");
            continue;
        }
        let mut differ = 0;
        for (at, (p, q)) in x.iter().zip(&y).enumerate() {
            if p != q {
                assert!(allowed(format, args, &x, at), "{what}: byte {at} changed");
                differ += 1;
            }
        }
        if matches!(*format, "vhd" | "vdi" | "vhdx") {
            assert!(differ > 0, "{what}: the epoch is in the ids");
        } else {
            assert_eq!(differ, 0, "{what}: no ids or dates");
        }
        if *format == "vhd" {
            let info = ok(imgconv().args(["info", "--output", "json"]).arg(&b));
            assert!(info.contains("2023-11-14 22:13:20 UTC"), "{what}: {info}");
        }
    }
}

#[test]
fn a_malformed_source_date_epoch_is_refused() {
    let dir = scratch("reproducible-bad-epoch");
    let src = mixed_source(&dir);
    let out = imgconv()
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .arg(&src)
        .arg(dir.join("o.vhd"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!dir.join("o.vhd").exists());
}
