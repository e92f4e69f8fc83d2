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
