//! `measure`, `check` and `map`: each against what imgconv then writes and what qemu-img says.

use std::path::{Path, PathBuf};

use crate::*;

/// Every output format with each option that changes its layout: (format, args, exact).
const OUTPUTS: &[(&str, &[&str], bool)] = &[
    ("raw", &[], true),
    ("raw", &["-o", "preallocation=full"], true),
    ("qcow2", &[], true),
    ("qcow2", &["-o", "compat=0.10"], true),
    ("qcow2", &["-o", "cluster_size=4K"], true),
    ("qcow2", &["-o", "cluster_size=2M"], true),
    ("qcow2", &["-c"], false),
    ("qcow2", &["-c", "-o", "compression_type=zstd"], false),
    ("qcow2", &["-c", "-o", "cluster_size=4K"], false),
    ("vmdk", &[], false),
    ("vmdk", &["-o", "subformat=monolithicSparse"], true),
    ("vmdk", &["-o", "subformat=streamOptimized"], false),
    (
        "vmdk",
        &["-o", "subformat=streamOptimized,compression_level=1"],
        false,
    ),
    ("vmdk", &["-o", "subformat=monolithicFlat"], true),
    ("vhd", &[], true),
    ("vhd", &["-o", "block_size=512K"], true),
    ("vhd", &["-o", "subformat=fixed"], true),
    ("vhd", &["-o", "subformat=fixed,azure=on"], true),
    ("vdi", &[], true),
    ("vdi", &["-o", "subformat=fixed"], true),
    ("vhdx", &["-o", "block_size=1M"], true),
    ("vhdx", &["-o", "subformat=fixed,block_size=1M"], true),
];

/// The generated inputs: mixed content, all holes, all random data (every unit allocated),
/// and a tiny disk that is no multiple of anything.
fn image_set(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mixed = mixed_source(dir);
    let empty = Image::new(dir.join("empty.raw"), 5 * MIB).done();
    let full = dir.join("full.raw");
    std::fs::write(&full, noise(7, (3 * MIB + 512) as usize)).expect("write");
    let tiny = dir.join("tiny.raw");
    std::fs::write(&tiny, noise(8, 1000)).expect("write");
    vec![(mixed, false), (empty, false), (full, true), (tiny, true)]
}

fn measure(src: &Path, format: &str, args: &[&str]) -> serde_json::Value {
    let text = ok(imgconv()
        .args(["measure", "-f", "raw", "-O", format, "--output", "json"])
        .args(args)
        .arg(src));
    serde_json::from_str(&text).expect("measure JSON")
}

#[test]
fn measure_equals_the_written_size_and_bounds_compressed_outputs() {
    let dir = scratch("measure-set");
    for (src, all_data) in image_set(&dir) {
        for (i, (format, args, exact)) in OUTPUTS.iter().enumerate() {
            let what = format!("{} -O {format} {args:?}", src.display());
            let out = dir.join(format!("out-{i}.{format}"));
            ok(imgconv()
                .args(["convert", "--force", "-O", format])
                .args(*args)
                .arg(&src)
                .arg(&out));
            let written = if args.contains(&"subformat=monolithicFlat") {
                let flat = dir.join(format!("out-{i}-flat.vmdk"));
                std::fs::metadata(&flat).expect("flat extent").len()
            } else {
                std::fs::metadata(&out).expect("output").len()
            };
            let m = measure(&src, format, args);
            let required = m["required"].as_u64().expect("required");
            let full = m["fully-allocated"].as_u64().expect("fully-allocated");
            assert_eq!(m["exact"], *exact, "{what}");
            if *exact {
                assert_eq!(required, written, "{what}: measured {m}");
                if all_data {
                    assert_eq!(full, written, "{what}: measured {m}");
                }
            } else {
                assert!(written <= required, "{what}: wrote {written}, measured {m}");
            }
            assert!(required <= full || !exact, "{what}: {m}");
            let human = ok(imgconv()
                .args(["measure", "-f", "raw", "-O", format])
                .args(*args)
                .arg(&src));
            assert!(
                human.contains(&format!("required size: {required}")),
                "{what}: {human}"
            );
        }
    }
}

/// `qemu-img map --output json -f FORMAT IMG`, parsed.
fn qemu_map_as(img: &Path, format: &str) -> Vec<serde_json::Value> {
    let out = tool(
        "qemu-img",
        &["map", "--output=json", "-f", format, path_str(img)],
    );
    assert!(out.status.success(), "qemu-img map failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("qemu-img map JSON")
}

/// `imgconv map --output json IMG`, parsed.
fn imgconv_map(img: &Path, format: &str) -> Vec<serde_json::Value> {
    let text = ok(imgconv()
        .args(["map", "--output", "json", "-f", format])
        .arg(img));
    serde_json::from_str(&text).expect("imgconv map JSON")
}

/// Every field both define must agree, entry by entry.
fn assert_maps_agree(ours: &[serde_json::Value], qemu: &[serde_json::Value], what: &str) {
    let show = |m: &[serde_json::Value]| {
        m.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        ours.len(),
        qemu.len(),
        "{what}: ours\n{}\nqemu's\n{}",
        show(ours),
        show(qemu)
    );
    for (a, b) in ours.iter().zip(qemu) {
        let (a, b) = (a.as_object().expect("entry"), b.as_object().expect("entry"));
        for (k, v) in a {
            if let Some(w) = b.get(k) {
                assert_eq!(v, w, "{what}: field {k}: ours {a:?}, qemu's {b:?}");
            }
        }
        for k in ["start", "length", "present", "zero", "data", "offset"] {
            assert_eq!(
                a.contains_key(k),
                b.contains_key(k),
                "{what}: {k} in {a:?} / {b:?}"
            );
        }
    }
}

#[test]
fn map_json_equals_qemu_img_map_on_images_qemu_img_made() {
    let dir = scratch("map-qemu");
    let src = mixed_source(&dir);
    let made: &[(&str, &str)] = &[
        ("qcow2", "cluster_size=65536"),
        ("qcow2", "compat=0.10"),
        ("qcow2", "cluster_size=4096"),
        ("qcow2", "cluster_size=2M"),
        ("qcow2", "extended_l2=on"),
        ("qcow2", "preallocation=metadata"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=streamOptimized"),
        ("vmdk", "subformat=monolithicFlat"),
        ("vpc", "subformat=dynamic"),
        ("vpc", "subformat=fixed"),
        ("vdi", "static=off"),
        ("vdi", "static=on"),
    ];
    for (i, (format, opts)) in made.iter().enumerate() {
        let img = dir.join(format!("q{i}.{format}"));
        qemu_make(&src, format, opts, &img);
        let what = format!("{format} {opts}");
        assert_maps_agree(
            &imgconv_map(&img, format),
            &qemu_map_as(&img, format),
            &what,
        );
    }
    // Compressed QCOW2 clusters (zlib and zstd).
    for (i, extra) in [&["-c"][..], &["-c", "-o", "compression_type=zstd"]]
        .iter()
        .enumerate()
    {
        let img = dir.join(format!("c{i}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[path_str(&src), path_str(&img)]);
        assert!(tool("qemu-img", &args).status.success());
        let what = format!("qcow2 {extra:?}");
        assert_maps_agree(
            &imgconv_map(&img, "qcow2"),
            &qemu_map_as(&img, "qcow2"),
            &what,
        );
    }
    // The RAW source itself: holes and data as the file system reports them.
    assert_maps_agree(&imgconv_map(&src, "raw"), &qemu_map_as(&src, "raw"), "raw");
}

#[test]
fn map_of_every_writers_output_agrees_with_qemu_img() {
    let dir = scratch("map-ours");
    let src = mixed_source(&dir);
    // qemu-img maps a VHDX as one data extent without offsets (its driver reports no block
    // status): vhdx.rs checks that map against the file instead.
    for (i, (format, args, _)) in OUTPUTS.iter().enumerate().filter(|(_, o)| o.0 != "vhdx") {
        let out = dir.join(format!("out-{i}.{format}"));
        ok(imgconv()
            .args(["convert", "-O", format])
            .args(*args)
            .arg(&src)
            .arg(&out));
        let qemu_format = if *format == "vhd" { "vpc" } else { format };
        let what = format!("{format} {args:?}");
        assert_maps_agree(
            &imgconv_map(&out, format),
            &qemu_map_as(&out, qemu_format),
            &what,
        );
    }
}

#[test]
fn map_human_lists_the_stored_ranges_like_qemu_img() {
    let dir = scratch("map-human");
    let src = mixed_source(&dir);
    let img = dir.join("q.qcow2");
    qemu_make(&src, "qcow2", "cluster_size=65536", &img);
    let ours = ok(imgconv().args(["map"]).arg(&img));
    let qemu = tool("qemu-img", &["map", "-f", "qcow2", path_str(&img)]);
    assert_eq!(ours, String::from_utf8_lossy(&qemu.stdout));
}

/// `imgconv check --output json IMG`: exit code and document.
fn imgconv_check(img: &Path) -> (i32, serde_json::Value) {
    let out = imgconv()
        .args(["check", "--output", "json"])
        .arg(img)
        .output()
        .expect("run imgconv");
    let doc =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("check JSON ({e}): {out:?}"));
    (out.status.code().expect("exit code"), doc)
}

/// `qemu-img check`'s exit code.
fn qemu_check(img: &Path, format: &str) -> i32 {
    let out = tool("qemu-img", &["check", "-f", format, path_str(img)]);
    out.status.code().expect("exit code")
}

#[test]
fn check_finds_every_writers_output_clean() {
    let dir = scratch("check-ours");
    for (src, _) in image_set(&dir) {
        for (i, (format, args, _)) in OUTPUTS.iter().enumerate() {
            let out = dir.join(format!("out-{i}.{format}"));
            ok(imgconv()
                .args(["convert", "--force", "-O", format])
                .args(*args)
                .arg(&src)
                .arg(&out));
            let what = format!("{} -O {format} {args:?}", src.display());
            let (code, doc) = imgconv_check(&out);
            assert_eq!(code, 0, "{what}: {doc}");
            assert_eq!(doc["findings"], serde_json::json!([]), "{what}");
            if matches!(*format, "qcow2" | "vmdk" | "vdi") {
                assert_eq!(qemu_check(&out, format), 0, "{what}");
            }
        }
    }
}

#[test]
fn check_gives_qemu_img_checks_verdict_and_counters_on_its_images() {
    let dir = scratch("check-qemu");
    let src = mixed_source(&dir);
    let made: &[(&str, &str)] = &[
        ("qcow2", "cluster_size=65536"),
        ("qcow2", "compat=0.10"),
        ("qcow2", "cluster_size=4096"),
        ("qcow2", "extended_l2=on"),
        ("qcow2", "preallocation=metadata"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=streamOptimized"),
        ("vdi", "static=off"),
        ("vdi", "static=on"),
    ];
    for (i, (format, opts)) in made.iter().enumerate() {
        let img = dir.join(format!("q{i}.{format}"));
        qemu_make(&src, format, opts, &img);
        let what = format!("{format} {opts}");
        let (code, doc) = imgconv_check(&img);
        assert_eq!(code, qemu_check(&img, format), "{what}: {doc}");
        let q = tool(
            "qemu-img",
            &["check", "--output=json", "-f", format, path_str(&img)],
        );
        let q: serde_json::Value = serde_json::from_slice(&q.stdout).expect("qemu JSON");
        for (k, v) in q.as_object().expect("object") {
            if k != "filename" {
                assert_eq!(&doc[k], v, "{what}: {k}");
            }
        }
    }
    // Internal snapshots: clusters shared with the active layer count twice, and the ones
    // written since once in each.
    let snap = dir.join("snap.qcow2");
    qemu_make(&src, "qcow2", "cluster_size=65536", &snap);
    assert!(
        tool("qemu-img", &["snapshot", "-c", "before", path_str(&snap)])
            .status
            .success()
    );
    let io = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x33 0 64k", path_str(&snap)],
    );
    assert!(io.status.success(), "{io:?}");
    let (code, doc) = imgconv_check(&snap);
    assert_eq!(code, qemu_check(&snap, "qcow2"), "snapshot: {doc}");
    let q = tool("qemu-img", &["check", "--output=json", path_str(&snap)]);
    let q: serde_json::Value = serde_json::from_slice(&q.stdout).expect("qemu JSON");
    for k in [
        "allocated-clusters",
        "image-end-offset",
        "fragmented-clusters",
    ] {
        assert_eq!(doc[k], q[k], "snapshot: {k}");
    }
    // A persistent dirty bitmap: its directory, table and data clusters are referenced.
    let bitmap = dir.join("bitmap.qcow2");
    qemu_make(&src, "qcow2", "cluster_size=65536", &bitmap);
    let add = tool("qemu-img", &["bitmap", "--add", path_str(&bitmap), "b0"]);
    assert!(add.status.success(), "{add:?}");
    let io = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x44 1M 64k",
            path_str(&bitmap),
        ],
    );
    assert!(io.status.success(), "{io:?}");
    let (code, doc) = imgconv_check(&bitmap);
    assert_eq!(code, 0, "bitmap: {doc}");
    assert_eq!(qemu_check(&bitmap, "qcow2"), 0);
    let q = tool("qemu-img", &["check", "--output=json", path_str(&bitmap)]);
    let q: serde_json::Value = serde_json::from_slice(&q.stdout).expect("qemu JSON");
    assert_eq!(doc["image-end-offset"], q["image-end-offset"], "bitmap");
    // Compressed clusters: counted as compressed and fragmented, as qemu counts them.
    let img = dir.join("c.qcow2");
    let c = tool(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path_str(&src),
            path_str(&img),
        ],
    );
    assert!(c.status.success());
    let (code, doc) = imgconv_check(&img);
    let q = tool("qemu-img", &["check", "--output=json", path_str(&img)]);
    let q: serde_json::Value = serde_json::from_slice(&q.stdout).expect("qemu JSON");
    assert_eq!(code, 0);
    for k in [
        "compressed-clusters",
        "fragmented-clusters",
        "allocated-clusters",
        "image-end-offset",
    ] {
        assert_eq!(doc[k], q[k], "{k}");
    }
}

fn be64_at(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().expect("8 bytes"))
}

fn le32_at(b: &[u8], at: u64) -> u32 {
    u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().expect("4 bytes"))
}

fn be32_at(b: &[u8], at: u64) -> u32 {
    u32::from_be_bytes(b[at as usize..at as usize + 4].try_into().expect("4 bytes"))
}

/// A corrupted copy of `img` at `name`, changed by `f`.
fn corrupted(dir: &Path, img: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(img).expect("read image");
    f(&mut b);
    let out = dir.join(name);
    std::fs::write(&out, b).expect("write copy");
    out
}

/// The first finding of a check, as (structure, offset, message).
fn first_finding(doc: &serde_json::Value) -> (String, u64, String) {
    let f = &doc["findings"][0];
    (
        f["structure"].as_str().unwrap_or_default().to_string(),
        f["offset"].as_u64().unwrap_or(u64::MAX),
        f["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn check_names_corruptions_and_leaks_in_qcow2_copies_as_qemu_img_judges_them() {
    let dir = scratch("check-qcow2-bad");
    let src = mixed_source(&dir);
    let img = dir.join("good.qcow2");
    qemu_make(&src, "qcow2", "cluster_size=65536", &img);
    let good = std::fs::read(&img).expect("read");
    let cs = 65536u64;
    let l1 = be64_at(&good, 40);
    let l2 = be64_at(&good, l1) & 0x00ff_ffff_ffff_fe00;
    let host0 = be64_at(&good, l2) & 0x00ff_ffff_ffff_fe00;
    let rt = be64_at(&good, 48);
    let rb = be64_at(&good, rt);
    // Guest cluster 1 pointed at guest cluster 0's host cluster.
    let overlap = corrupted(&dir, &img, "overlap.qcow2", |b| {
        let e = be64_at(b, l2);
        b[(l2 + 8) as usize..(l2 + 16) as usize].copy_from_slice(&e.to_be_bytes());
    });
    // A cluster appended with a refcount of one and no reference.
    let leak = corrupted(&dir, &img, "leak.qcow2", |b| {
        let c = b.len() as u64 / cs;
        b.resize(b.len() + cs as usize, 0);
        let at = (rb + c * 2) as usize;
        b[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    });
    // A data cluster whose refcount says unused.
    let low = corrupted(&dir, &img, "low.qcow2", |b| {
        let at = (rb + host0 / cs * 2) as usize;
        b[at..at + 2].copy_from_slice(&0u16.to_be_bytes());
    });
    for (copy, want) in [(&overlap, 2), (&leak, 3), (&low, 2)] {
        let (code, doc) = imgconv_check(copy);
        assert_eq!(code, want, "{}: {doc}", copy.display());
        assert_eq!(qemu_check(copy, "qcow2"), want, "{}", copy.display());
    }
    let (_, doc) = imgconv_check(&overlap);
    let msgs: Vec<String> = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["message"].as_str().unwrap_or_default().to_string())
        .collect();
    let c0 = host0 / cs;
    assert!(
        msgs.contains(&format!("ERROR cluster {c0} refcount=1 reference=2")),
        "{msgs:?}"
    );
    assert_eq!(doc["corruptions"], 1);
    assert_eq!(
        doc["leaks"], 1,
        "the cluster no longer referenced leaks: {doc}"
    );
    let (_, doc) = imgconv_check(&leak);
    let (structure, offset, _) = first_finding(&doc);
    assert_eq!(
        (structure.as_str(), offset),
        ("refcount", good.len() as u64)
    );
    let (_, doc) = imgconv_check(&low);
    let (structure, offset, message) = first_finding(&doc);
    assert_eq!(
        (structure.as_str(), offset),
        ("refcount", host0),
        "{message}"
    );
    // A refcount table outside the file: a corruption naming the header field.
    let table_gone = corrupted(&dir, &img, "rt-gone.qcow2", |b| {
        b[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes());
    });
    let (code, doc) = imgconv_check(&table_gone);
    assert_eq!(code, 2, "{doc}");
    let (_, offset, message) = first_finding(&doc);
    assert_eq!(offset, 48, "{message}");
    assert!(message.contains("refcount table"), "{message}");
    // The human form: qemu's lines and summary.
    let out = imgconv().args(["check"]).arg(&low).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ERROR cluster {c0} refcount=0 reference=1")),
        "{text}"
    );
    assert!(text.contains("1 errors were found on the image."), "{text}");
}

#[test]
fn check_names_bad_grain_tables_bat_entries_and_shared_vdi_blocks() {
    let dir = scratch("check-bad");
    let src = mixed_source(&dir);

    // VMDK: a grain table past the end of the file; a redundant table that disagrees.
    let vmdk = dir.join("good.vmdk");
    ok(imgconv()
        .args(["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"])
        .arg(&src)
        .arg(&vmdk));
    let good = std::fs::read(&vmdk).expect("read");
    let rgd = u64::from_le_bytes(good[48..56].try_into().expect("8")) * 512;
    let gd = u64::from_le_bytes(good[56..64].try_into().expect("8")) * 512;
    let past = corrupted(&dir, &vmdk, "gt-past-end.vmdk", |b| {
        b[gd as usize..gd as usize + 4].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    });
    let (code, doc) = imgconv_check(&past);
    assert_eq!(code, 2, "{doc}");
    let (structure, offset, message) = first_finding(&doc);
    assert_eq!(
        (structure.as_str(), offset),
        ("grain directory", gd),
        "{message}"
    );
    assert!(message.contains("beyond the end of the file"), "{message}");
    let rgt = u64::from(le32_at(&good, rgd)) * 512;
    let differs = corrupted(&dir, &vmdk, "rgt-differs.vmdk", |b| {
        b[rgt as usize..rgt as usize + 4].copy_from_slice(&0u32.to_le_bytes());
    });
    let (code, doc) = imgconv_check(&differs);
    assert_eq!(code, 2, "{doc}");
    let (structure, offset, _) = first_finding(&doc);
    assert_eq!((structure.as_str(), offset), ("redundant grain table", rgt));

    // VHD: a BAT entry pointing at the footer; a footer copy that differs.
    let vhd = dir.join("good.vhd");
    ok(imgconv().args(["convert", "-O", "vhd"]).arg(&src).arg(&vhd));
    let good = std::fs::read(&vhd).expect("read");
    let header = be64_at(&good, 16);
    let bat = be64_at(&good, header + 16);
    let footer_sector = (good.len() as u32 - 512) / 512;
    let on_footer = corrupted(&dir, &vhd, "bat-on-footer.vhd", |b| {
        b[bat as usize..bat as usize + 4].copy_from_slice(&footer_sector.to_be_bytes());
    });
    let (code, doc) = imgconv_check(&on_footer);
    assert_eq!(code, 2, "{doc}");
    let (_, offset, message) = first_finding(&doc);
    assert_eq!(offset, bat, "{message}");
    assert!(message.contains("block 0"), "{message}");
    let copy = corrupted(&dir, &vhd, "footer-copy.vhd", |b| b[100] ^= 1);
    let (code, doc) = imgconv_check(&copy);
    assert_eq!(code, 2, "{doc}");
    assert_eq!(first_finding(&doc).0, "footer copy");
    // Two blocks overlapping each other.
    let first = be32_at(&good, bat);
    let second_at = (0..good.len() as u64 / 4)
        .map(|i| bat + 4 + i * 4)
        .find(|&at| be32_at(&good, at) != u32::MAX)
        .expect("a second block");
    let shared = corrupted(&dir, &vhd, "blocks-overlap.vhd", |b| {
        b[second_at as usize..second_at as usize + 4].copy_from_slice(&first.to_be_bytes());
    });
    let (code, doc) = imgconv_check(&shared);
    assert_eq!(code, 2, "{doc}");
    let (structure, offset, _) = first_finding(&doc);
    assert_eq!((structure.as_str(), offset), ("BAT", second_at));

    // VDI: two blocks sharing one data block.
    let vdi = dir.join("good.vdi");
    ok(imgconv().args(["convert", "-O", "vdi"]).arg(&src).arg(&vdi));
    let good = std::fs::read(&vdi).expect("read");
    let map = u64::from(le32_at(&good, 0x154));
    let second = (1..64u64)
        .find(|i| le32_at(&good, map + i * 4) != u32::MAX)
        .expect("a second block");
    let vdi_shared = corrupted(&dir, &vdi, "shared.vdi", |b| {
        let e = le32_at(b, map);
        let at = (map + second * 4) as usize;
        b[at..at + 4].copy_from_slice(&e.to_le_bytes());
    });
    let (code, doc) = imgconv_check(&vdi_shared);
    assert_eq!(code, 2, "{doc}");
    let (_, offset, message) = first_finding(&doc);
    assert_eq!(offset, map + second * 4, "{message}");
    assert!(message.contains("share data block"), "{message}");
    assert_eq!(qemu_check(&vdi_shared, "vdi"), 2);
}

#[test]
fn check_that_cannot_run_exits_one_and_subcommands_are_not_the_short_form() {
    let dir = scratch("check-errors");
    let missing = dir.join("missing.qcow2");
    let out = imgconv()
        .args(["check"])
        .arg(&missing)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, noise(3, 4096)).expect("write");
    for cmd in ["check", "map"] {
        let out = imgconv().args([cmd]).arg(&raw).output().expect("run");
        assert!(out.status.success(), "{cmd}: {out:?}");
    }
}
