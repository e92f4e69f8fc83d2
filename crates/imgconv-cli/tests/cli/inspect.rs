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
        ("qcow2", ""),
        ("qcow2", "compat=0.10"),
        ("qcow2", "cluster_size=4096"),
        ("qcow2", "cluster_size=2M"),
        ("qcow2", "extended_l2=on"),
        ("qcow2", "preallocation=metadata"),
        ("vmdk", ""),
        ("vmdk", "subformat=streamOptimized"),
        ("vmdk", "subformat=monolithicFlat"),
        ("vpc", ""),
        ("vpc", "subformat=fixed"),
        ("vdi", ""),
        ("vdi", "static=on"),
    ];
    for (i, (format, opts)) in made.iter().enumerate() {
        let img = dir.join(format!("q{i}.{format}"));
        let o = if opts.is_empty() { "size=0" } else { opts };
        let out = tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                format,
                "-o",
                o,
                path_str(&src),
                path_str(&img),
            ],
        );
        let out = if out.status.success() || !opts.is_empty() {
            out
        } else {
            tool(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    format,
                    path_str(&src),
                    path_str(&img),
                ],
            )
        };
        assert!(out.status.success(), "{format} {opts}: {out:?}");
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
    for (i, (format, args, _)) in OUTPUTS.iter().enumerate() {
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
