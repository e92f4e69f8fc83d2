//! RAW → RAW conversions, digests, info, compare and measure against the oracles.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::*;

/// Convert with MD5 and SHA-256 and check the output against md5sum/sha256sum of the input
/// and of the output; returns the JSON summary.
fn convert_and_verify(input: &Path, output: &Path) -> serde_json::Value {
    let stdout = ok(imgconv()
        .args(["convert", "--digest", "md5,sha256", "--output", "json"])
        .arg(input)
        .arg(output));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    let out_md5 = md5sum(output);
    assert_eq!(md5sum(input), out_md5, "content changed");
    assert_eq!(summary["digests"]["md5"], out_md5.as_str());
    assert_eq!(summary["digests"]["sha256"], sha256sum(output).as_str());
    assert_eq!(
        std::fs::metadata(input).expect("in").len(),
        std::fs::metadata(output).expect("out").len()
    );
    assert_eq!(qemu_compare(input, output), 0);
    summary
}

#[test]
fn a_sparse_2gib_image_keeps_every_byte_and_its_holes() {
    let dir = scratch("sparse-2g");
    let input = Image::new(dir.join("in.raw"), 2 * GIB)
        .data(0, 65536)
        .data(GIB - 4096, 12288)
        .data(2 * GIB - 512, 512)
        .done();
    let output = dir.join("out.raw");
    let summary = convert_and_verify(&input, &output);
    assert_eq!(summary["virtual-size"], 2 * GIB);
    let allocated = std::fs::metadata(&output).expect("out").blocks() * 512;
    assert!(
        allocated < 4 * MIB,
        "output not sparse: {allocated} bytes allocated"
    );
}

#[test]
fn a_size_that_is_not_a_multiple_of_4k_is_kept_exactly() {
    let dir = scratch("odd-size");
    let size = 10 * MIB + 1234;
    let input = Image::new(dir.join("in.raw"), size)
        .data(MIB, 5000)
        .data(size - 1234, 1234)
        .done();
    convert_and_verify(&input, &dir.join("out.raw"));
}

#[test]
fn empty_and_one_sector_images_convert() {
    let dir = scratch("tiny");
    let empty = Image::new(dir.join("empty.raw"), 0).done();
    let out = dir.join("empty-out.raw");
    let summary = convert_and_verify(&empty, &out);
    assert_eq!(
        summary["digests"]["md5"],
        "d41d8cd98f00b204e9800998ecf8427e"
    );
    assert_eq!(std::fs::metadata(&out).expect("out").len(), 0);

    let sector = Image::new(dir.join("sector.raw"), 512).data(0, 512).done();
    convert_and_verify(&sector, &dir.join("sector-out.raw"));
}

#[test]
fn data_in_the_last_sector_survives() {
    let dir = scratch("last-sector");
    let size = 64 * MIB;
    let input = Image::new(dir.join("in.raw"), size)
        .data(size - 1, 1)
        .done();
    let output = dir.join("out.raw");
    convert_and_verify(&input, &output);
    let bytes = std::fs::read(&output).expect("read");
    assert_ne!(bytes[bytes.len() - 1], 0);
}

#[test]
fn allocated_zero_runs_come_out_as_holes() {
    let dir = scratch("zero-runs");
    let input = Image::new(dir.join("in.raw"), 32 * MIB)
        .data(0, 4096)
        .zeros(4096, 8 * MIB as usize)
        .data(16 * MIB, 4096)
        .zeros(20 * MIB, 4 * MIB as usize)
        .done();
    assert!(
        !is_hole(&qemu_map(&input), 4096, 8 * MIB),
        "the input's zeros should be allocated for this test to mean anything"
    );
    let output = dir.join("out.raw");
    convert_and_verify(&input, &output);
    let map = qemu_map(&output);
    assert!(is_hole(&map, 4096, 8 * MIB), "map: {map:?}");
    assert!(is_hole(&map, 20 * MIB, 4 * MIB), "map: {map:?}");
    assert!(!is_hole(&map, 16 * MIB, 4096), "map: {map:?}");
}

#[test]
fn preallocation_full_and_falloc_allocate_the_whole_file() {
    let dir = scratch("prealloc");
    let input = Image::new(dir.join("in.raw"), 8 * MIB).data(0, 4096).done();
    for mode in ["full", "falloc"] {
        let output = dir.join(format!("{mode}.raw"));
        ok(imgconv()
            .args(["convert", "-o", &format!("preallocation={mode}")])
            .arg(&input)
            .arg(&output));
        assert_eq!(md5sum(&input), md5sum(&output));
        let allocated = std::fs::metadata(&output).expect("out").blocks() * 512;
        assert!(
            allocated >= 8 * MIB,
            "{mode}: only {allocated} bytes allocated"
        );
    }
}

#[test]
fn the_short_form_equals_convert_and_writes_to_stdout_with_o() {
    let dir = scratch("short-form");
    let input = Image::new(dir.join("in.raw"), 3 * MIB + 512)
        .data(MIB, 1000)
        .done();
    let output = dir.join("out.img");
    let stdout = ok(imgconv().arg("--digest=md5").arg(&input).arg(&output));
    let md5 = md5sum(&output);
    assert_eq!(md5, md5sum(&input));
    assert_eq!(stdout.trim(), format!("MD5 ({}) = {md5}", output.display()));

    let piped = imgconv()
        .args(["convert", "-O", "raw", "--digest", "sha256"])
        .arg(&input)
        .arg("-")
        .output()
        .expect("run");
    assert!(piped.status.success());
    assert_eq!(piped.stdout, std::fs::read(&input).expect("read input"));
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        err.contains(&sha256sum(&input)),
        "digest not on stderr: {err}"
    );
}

#[test]
fn tagged_digest_lines_verify_with_md5sum_and_sha256sum_check() {
    let dir = scratch("tagged");
    let input = Image::new(dir.join("in.raw"), MIB).data(0, 4096).done();
    let output = dir.join("out.raw");
    let stdout = ok(imgconv().current_dir(&dir).args([
        "convert",
        "--digest",
        "md5,sha256",
        "in.raw",
        "out.raw",
    ]));
    let _ = input;
    let list = dir.join("sums");
    std::fs::write(&list, &stdout).expect("write list");
    for checker in ["md5sum", "sha256sum"] {
        let out = std::process::Command::new(checker)
            .current_dir(&dir)
            .args(["-c", "--ignore-missing", "sums"])
            .output()
            .expect("run checker");
        assert!(out.status.success(), "{checker} -c: {out:?}");
    }
    assert!(output.exists());
}

#[test]
fn info_json_matches_qemu_img_for_raw() {
    let dir = scratch("info");
    let input = Image::new(dir.join("in.raw"), 16 * MIB + 512)
        .data(MIB, 3 * MIB as usize)
        .done();
    let ours: serde_json::Value = serde_json::from_str(&ok(imgconv()
        .args(["info", "--output", "json"])
        .arg(&input)))
    .expect("JSON");
    let theirs = qemu_info(&input, "raw");
    assert_eq!(ours["format"], "raw");
    for key in ["format", "virtual-size", "actual-size"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    let human = ok(imgconv().arg("info").arg(&input));
    assert!(human.contains("file format: raw"), "{human}");
    assert!(
        human.contains("virtual size: 16 MiB (16777728 bytes)"),
        "{human}"
    );
}

#[test]
fn compare_agrees_with_qemu_img() {
    let dir = scratch("compare");
    let a = Image::new(dir.join("a.raw"), 8 * MIB)
        .data(MIB, 4096)
        .done();
    let same = Image::new(dir.join("same.raw"), 8 * MIB)
        .data(MIB, 4096)
        .zeros(4 * MIB, 4096)
        .done();
    let differ = Image::new(dir.join("differ.raw"), 8 * MIB)
        .data(MIB, 4096)
        .data(5 * MIB + 1024, 1)
        .done();
    let longer_zero = Image::new(dir.join("longer-zero.raw"), 9 * MIB)
        .data(MIB, 4096)
        .done();
    let longer_data = Image::new(dir.join("longer-data.raw"), 9 * MIB)
        .data(MIB, 4096)
        .data(8 * MIB + 512, 16)
        .done();
    for other in [&same, &differ, &longer_zero, &longer_data] {
        let ours = imgconv()
            .arg("compare")
            .arg(&a)
            .arg(other)
            .output()
            .expect("run");
        let theirs = qemu_compare_output(&a, other);
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "{}",
            other.display()
        );
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "{}",
            other.display()
        );
    }
    let missing = imgconv()
        .arg("compare")
        .arg(&a)
        .arg(dir.join("nope.raw"))
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn measure_raw_reports_the_virtual_size_like_qemu_img() {
    let dir = scratch("measure");
    let input = Image::new(dir.join("in.raw"), 5 * MIB + 512)
        .data(0, 4096)
        .done();
    let ours = ok(imgconv().args(["measure", "-O", "raw"]).arg(&input));
    let theirs = tool(
        "qemu-img",
        &[
            "measure",
            "-O",
            "raw",
            "-f",
            "raw",
            input.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout));
}

#[test]
fn json_progress_reports_done_and_total() {
    let dir = scratch("progress");
    let size = 64 * MIB;
    let input = Image::new(dir.join("in.raw"), size).data(0, 4096).done();
    let out = imgconv()
        .args(["convert", "--progress=json"])
        .arg(&input)
        .arg(dir.join("out.raw"))
        .output()
        .expect("run");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(lines[0]["done"], 0);
    let last = lines.last().expect("last");
    assert_eq!(last["done"], size);
    assert_eq!(last["total"], size);
    assert_eq!(last["percent"], 100.0);
    assert!(last["rate"].is_u64());
}

/// The JSON lines a successful run printed on stderr.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn json_progress_reports_the_planning_read_before_the_conversion() {
    let dir = scratch("progress-planning");
    let size = 64 * MIB;
    let input = Image::new(dir.join("in.raw"), size)
        .data(0, 8 * MIB as usize)
        .data(40 * MIB, MIB as usize)
        .done();
    // With a digest asked, QCOW2 is laid out from a plan (tables first, digests inline).
    let out = imgconv()
        .args([
            "convert",
            "--progress=json",
            "--digest",
            "md5",
            "-O",
            "qcow2",
        ])
        .arg(&input)
        .arg(dir.join("out.qcow2"))
        .output()
        .expect("run");
    let lines = json_lines(&out);
    let planning: Vec<_> = lines.iter().filter(|l| l["event"] == "planning").collect();
    let first_progress = lines
        .iter()
        .position(|l| l["event"] == "progress")
        .expect("progress lines");
    assert!(!planning.is_empty(), "{lines:?}");
    // Planning comes first and ends complete; then the conversion counts from zero.
    assert!(lines[..first_progress]
        .iter()
        .all(|l| l["event"] == "planning"));
    let last_planning = planning.last().expect("planning");
    assert_eq!(
        (&last_planning["done"], &last_planning["total"]),
        (&serde_json::json!(size), &serde_json::json!(size))
    );
    assert_eq!(lines[first_progress]["done"], 0);
    assert_eq!(lines.last().expect("last")["done"], size);

    // Into a file without digests, the tables are written last: one pass, no planning read.
    let plain = dir.join("plain.qcow2");
    let out = imgconv()
        .args(["convert", "--progress=json", "-O", "qcow2"])
        .arg(&input)
        .arg(&plain)
        .output()
        .expect("run");
    let lines = json_lines(&out);
    assert!(lines.iter().all(|l| l["event"] != "planning"), "{lines:?}");
    assert_eq!(lines.last().expect("last")["done"], size);
    let planned = std::fs::read(dir.join("out.qcow2")).expect("planned output");
    let one_pass = std::fs::read(&plain).expect("one-pass output");
    assert!(planned == one_pass, "the two QCOW2 layouts differ");
}
