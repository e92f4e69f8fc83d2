//! VHD: images other tools made (Windows, VirtualBox, an old qemu), the writer against qemu-img
//! and libvhdi, the Azure mode, images qemu-img makes, and hostile footers, headers and BATs.

use std::path::{Path, PathBuf};

use crate::*;

const PATTERN: &str = "e8197d04946c7389986f4636c4088e2dda521a54647f080bab2ec45e81d88403";

fn fixture(dir: &Path, name: &str) -> PathBuf {
    fixture_in(dir, "vhd", name)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8"))
}

/// The specification's checksum: one's complement of the byte sum, the field taken as zero.
fn vhd_checksum(b: &[u8], field: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)));
    !sum
}

/// Size and MD5 of the virtual disk as libvhdi (`pyvhdi`) reads it.
fn pyvhdi_md5(img: &Path) -> (u64, String) {
    libyal_md5("pyvhdi", "f = pyvhdi.file(); f.open(sys.argv[1])", img)
}

/// `src` zero-padded to `len` bytes, and its MD5.
fn padded_md5(dir: &Path, src: &Path, len: u64) -> String {
    let mut bytes = std::fs::read(src).expect("read");
    bytes.resize(len as usize, 0);
    let want = dir.join("padded.raw");
    std::fs::write(&want, bytes).expect("write");
    md5sum(&want)
}

fn seconds_since_2000() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 946_684_800
}

#[test]
fn images_from_other_tools_read_as_the_manifest_says() {
    let dir = scratch("vhd-fixtures");
    for (name, sha) in [
        (
            "windows10-dynamic-ntfs.vhd",
            "8b10b52e3d1e76075d05a5101a6536b9fa8376a5b8f7c22f502d0987d165c876",
        ),
        // Fixed, its only footer at the end: recognised without -f.
        (
            "fat-parent.vhd",
            "bbdb657bc5aa2fde44e2456149f9257a862cb84f4668e338b90e357b0fbdf118",
        ),
        // Creator vbox: the current size (3 MiB) wins over the smaller geometry.
        ("virtualbox72-dynamic.vhd", PATTERN),
    ] {
        let img = fixture(&dir, name);
        let out = dir.join(format!("{name}.raw"));
        ok(imgconv().arg(&img).arg(&out));
        assert_eq!(sha256sum(&out), sha, "{name}");
        let info = ok(imgconv().arg("info").arg(&img));
        assert!(info.contains("file format: vhd"), "{info}");
    }
    let info = ok(imgconv().arg("info").arg(fixture(&dir, "fat-parent.vhd")));
    assert!(info.contains("subformat: fixed"), "{info}");
    let info = ok(imgconv()
        .arg("info")
        .arg(fixture(&dir, "windows10-dynamic-ntfs.vhd")));
    for line in [
        "subformat: dynamic",
        "creator: win 10.0 (Wi2k)",
        "geometry: 120/4/17 (4177920 bytes)",
        "current size: 4194304",
        "original size: 4194304",
        "block size: 2097152",
    ] {
        assert!(info.contains(line), "{line}: {info}");
    }

    // A differencing disk is refused, its parent named; nothing is opened or written.
    let child = fixture(&dir, "fat-differential.vhd");
    let out = dir.join("child.raw");
    let err = fails_with(imgconv().arg(&child).arg(&out), 9);
    assert!(
        err.contains("differencing") && err.contains("fat-parent.vhd"),
        "{err}"
    );
    assert!(!out.exists());
    let info = ok(imgconv().arg("info").arg(&child));
    assert!(info.contains("subformat: differencing"), "{info}");
    assert!(
        info.contains("parent relative path: .\\fat-parent.vhd"),
        "{info}"
    );
    assert!(info.contains("refused: "), "{info}");

    let bad = fixture(&dir, "malformed-old-qemu-bad-footer-checksum.vhd");
    let err = fails_with(imgconv().arg(&bad).arg(&out), 8);
    assert!(err.contains("checksum"), "{err}");
    assert!(!out.exists());
}

/// Checks every field the specification and the readers rely on; returns the footer.
fn check_layout(img: &Path, disk_size: u64, fixed: bool, block_size: u64) -> Vec<u8> {
    let b = std::fs::read(img).expect("read");
    let footer = b[b.len() - 512..].to_vec();
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(be32(&footer, 8), 2, "features");
    assert_eq!(be32(&footer, 12), 0x0001_0000, "version");
    assert_eq!(
        be32(&footer, 64),
        vhd_checksum(&footer, 64),
        "footer checksum"
    );
    assert_eq!(
        &footer[28..32],
        b"qem2",
        "a creator qemu sizes by current size"
    );
    assert_eq!(be64(&footer, 40), disk_size, "original size");
    assert_eq!(be64(&footer, 48), disk_size, "current size");
    let age = seconds_since_2000().abs_diff(u64::from(be32(&footer, 24)));
    assert!(age < 3600, "timestamp {age} s away from now");
    assert!(footer[68..84].iter().any(|&x| x != 0), "null UUID");
    let (c, h, s) = (
        u64::from(u16::from_be_bytes([footer[56], footer[57]])),
        u64::from(footer[58]),
        u64::from(footer[59]),
    );
    assert!(c * h * s * 512 <= disk_size, "the geometry rounds down");
    if fixed {
        assert_eq!(be32(&footer, 60), 2, "type fixed");
        assert_eq!(be64(&footer, 16), u64::MAX, "data offset");
        assert_eq!(b.len() as u64, disk_size + 512, "file size");
        return footer;
    }
    assert_eq!(be32(&footer, 60), 3, "type dynamic");
    assert_eq!(b[..512], footer[..], "footer copy at 0");
    let dh = be64(&footer, 16) as usize;
    let h = &b[dh..dh + 1024];
    assert_eq!(&h[..8], b"cxsparse");
    assert_eq!(be64(h, 8), u64::MAX);
    assert_eq!(be32(h, 36), vhd_checksum(h, 36), "dynamic header checksum");
    assert_eq!(u64::from(be32(h, 32)), block_size);
    let entries = u64::from(be32(h, 28));
    assert_eq!(entries, disk_size.div_ceil(block_size));
    let bat = be64(h, 16) as usize;
    let bitmap = (block_size / 4096).next_multiple_of(512);
    let mut blocks = 0u64;
    for i in 0..entries as usize {
        let e = be32(&b, bat + i * 4);
        if e == u32::MAX {
            continue;
        }
        blocks += 1;
        let at = u64::from(e) * 512;
        assert!(
            at + bitmap + block_size <= b.len() as u64 - 512,
            "block {i}"
        );
        let bits = &b[at as usize..(at + bitmap) as usize];
        assert!(
            bits[..(block_size / 4096) as usize]
                .iter()
                .all(|&x| x == 0xff),
            "block {i}: every sector marked"
        );
    }
    let first = (bat as u64 + entries * 4).next_multiple_of(512);
    assert_eq!(
        b.len() as u64,
        first + blocks * (bitmap + block_size) + 512,
        "no gaps, no slack"
    );
    footer
}

#[test]
fn dynamic_and_fixed_outputs_pass_qemu_img_and_libvhdi() {
    let dir = scratch("vhd-writer");
    let src = mixed_source(&dir);
    let size = std::fs::metadata(&src).expect("src").len();
    assert_eq!(size % 512, 0);
    assert_ne!(size % (2 << 20), 0);
    let want = md5sum(&src);
    for (opts, fixed, block) in [
        ("subformat=dynamic", false, 2u64 << 20),
        ("subformat=fixed", true, 0),
        ("block_size=512K", false, 512 << 10),
    ] {
        let out = dir.join(format!("{}.vhd", opts.replace('=', "-")));
        let json = ok(imgconv()
            .args(["convert", "-O", "vhd", "-o", opts, "--output", "json"])
            .arg(&src)
            .arg(&out));
        let summary: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(summary["virtual-size"], size, "{opts}");
        let footer = check_layout(&out, size, fixed, block);
        // 9 MiB + 3 KiB = 18438 sectors: the specification's algorithm gives 271/4/17.
        assert_eq!(&footer[56..60], &[1, 15, 4, 17], "{opts}: geometry");
        assert_eq!(qemu_compare_formats(&src, "raw", &out, "vpc"), 0, "{opts}");
        assert_eq!(qemu_info(&out, "vpc")["virtual-size"], size, "{opts}");
        assert_eq!(pyvhdi_md5(&out), (size, want.clone()), "{opts}");
        let back = dir.join("back.raw");
        let _ = std::fs::remove_file(&back);
        ok(imgconv().arg(&out).arg(&back));
        assert_eq!(md5sum(&back), want, "{opts}");
        // measure predicts the file exactly.
        let m = ok(imgconv()
            .args(["measure", "-O", "vhd", "-o", opts])
            .arg(&src));
        let file = std::fs::metadata(&out).expect("out").len();
        assert!(m.contains(&format!("required size: {file}")), "{opts}: {m}");
    }
    // Fixed: the allocated zeros (1 MiB to 3 MiB) and the holes stay holes in the file.
    let fixed = dir.join("subformat-fixed.vhd");
    let map = qemu_map(&fixed);
    assert!(is_hole(&map, MIB, 2 * MIB), "{map:?}");
    // Dynamic: blocks of zeros are left unallocated (block 1 of 2 MiB blocks is all zeros).
    let b = std::fs::read(dir.join("subformat-dynamic.vhd")).expect("read");
    assert_eq!(be32(&b, 1536 + 4), u32::MAX, "zero block unallocated");
}

#[test]
fn vpc_is_accepted_as_the_format_name() {
    let dir = scratch("vhd-vpc-name");
    let src = Image::new(dir.join("src.raw"), 3 * MIB)
        .data(0, 5000)
        .done();
    let out = dir.join("out.img");
    ok(imgconv().args(["convert", "-O", "vpc"]).arg(&src).arg(&out));
    assert_eq!(qemu_compare_formats(&src, "raw", &out, "vpc"), 0);
    let back = dir.join("back.raw");
    ok(imgconv()
        .args(["convert", "-f", "vpc"])
        .arg(&out)
        .arg(&back));
    assert_eq!(md5sum(&back), md5sum(&src));
}

#[test]
fn azure_mode_writes_a_fixed_vhd_of_whole_mib() {
    let dir = scratch("vhd-azure");
    // 5 MiB + 3.5 KiB: not a whole MiB, data up to the last byte.
    let size = 5 * MIB + 7 * 512;
    let src = Image::new(dir.join("src.raw"), size)
        .data(0, 4096)
        .data(size - 512, 512)
        .done();
    let out = dir.join("azure.vhd");
    let json = ok(imgconv()
        .args(["convert", "-O", "vhd", "-o", "azure=on", "--output", "json"])
        .arg(&src)
        .arg(&out));
    let summary: serde_json::Value = serde_json::from_str(&json).expect("json");
    let rounded = 6 * MIB;
    assert_eq!(summary["virtual-size"], rounded);
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains("rounded up") && notes.contains("MiB"),
        "{notes}"
    );
    check_layout(&out, rounded, true, 0);
    assert_eq!(std::fs::metadata(&out).expect("out").len(), rounded + 512);
    assert_eq!(qemu_info(&out, "vpc")["virtual-size"], rounded);
    let want = padded_md5(&dir, &src, rounded);
    assert_eq!(pyvhdi_md5(&out), (rounded, want.clone()));
    let back = dir.join("back.raw");
    ok(imgconv().arg(&out).arg(&back));
    assert_eq!(md5sum(&back), want, "the added tail reads as zeros");
    // The human form says so on stderr.
    let again = imgconv()
        .args(["convert", "-O", "vhd", "-o", "azure=on", "--force"])
        .arg(&src)
        .arg(&out)
        .output()
        .expect("run");
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("rounded up"),
        "{again:?}"
    );
    // A size already in whole MiB is kept.
    let even = Image::new(dir.join("even.raw"), 4 * MIB).data(0, 10).done();
    let out = dir.join("even.vhd");
    ok(imgconv()
        .args(["convert", "-O", "vhd", "-o", "azure=on"])
        .arg(&even)
        .arg(&out));
    check_layout(&out, 4 * MIB, true, 0);
}

#[test]
fn vhds_qemu_img_makes_convert_to_its_own_raw() {
    let dir = scratch("vhd-from-qemu");
    let src = mixed_source(&dir);
    for opts in [
        "subformat=dynamic",
        "subformat=fixed",
        "subformat=dynamic,force_size=on",
        "subformat=fixed,force_size=on",
    ] {
        let img = dir.join(format!("{}.vhd", opts.replace([',', '='], "-")));
        qemu_make(&src, "vpc", opts, &img);
        let theirs = dir.join("theirs.raw");
        let ours = dir.join("ours.raw");
        let _ = std::fs::remove_file(&ours);
        qemu_raw(&img, "vpc", &theirs);
        // No -f: fixed ones are recognised by their footer.
        ok(imgconv().arg(&img).arg(&ours));
        assert_eq!(md5sum(&ours), md5sum(&theirs), "{opts}");
        let info = ok(imgconv().arg("info").arg(&img));
        assert!(info.contains("file format: vhd"), "{opts}: {info}");
    }
}

#[test]
fn bad_writer_options_are_refused() {
    let dir = scratch("vhd-options");
    let src = Image::new(dir.join("src.raw"), MIB).done();
    for opts in [
        "subformat=sparse",
        "block_size=3M",
        "block_size=1K",
        "azure=yes",
        "azure=on,subformat=dynamic",
        "subformat=fixed,block_size=1M",
        "force_size=off",
        "colour=blue",
    ] {
        let out = dir.join("out.vhd");
        fails_with(
            imgconv()
                .args(["convert", "-O", "vhd", "-o", opts])
                .arg(&src)
                .arg(&out),
            2,
        );
        assert!(!out.exists(), "{opts}");
    }
}

#[test]
fn malformed_vhds_fail_clearly_without_output() {
    let dir = scratch("vhd-malformed");
    let src = Image::new(dir.join("src.raw"), 4 * MIB)
        .data(0, 5000)
        .data(3 * MIB, 5000)
        .done();
    let good_path = dir.join("good.vhd");
    ok(imgconv()
        .args(["convert", "-O", "vhd"])
        .arg(&src)
        .arg(&good_path));
    let good = std::fs::read(&good_path).expect("read");
    let n = good.len();
    // Patch a field, then make both footers and the dynamic header checksums right again, so
    // that the field itself is what the reader meets.
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        if at >= n - 512 {
            let copy = b[n - 512..].to_vec();
            b[..512].copy_from_slice(&copy);
        }
        for base in [0, n - 512] {
            let sum = vhd_checksum(&b[base..base + 512], 64);
            b[base + 64..base + 68].copy_from_slice(&sum.to_be_bytes());
        }
        let sum = vhd_checksum(&b[512..1536], 36);
        b[512 + 36..512 + 40].copy_from_slice(&sum.to_be_bytes());
        b
    };
    let footer = n - 512;
    let mut bad_sum = good.clone();
    bad_sum[footer + 64] ^= 1;
    // The second block cut in half, the footer appended again.
    let last_block = be32(&good, 1536 + 4) as usize * 512;
    let mut cut_block = good[..last_block + 512 + MIB as usize].to_vec();
    cut_block.extend_from_slice(&good[footer..]);
    // (case, image, exit code, what the message must say)
    let cases: Vec<(&str, Vec<u8>, i32, &str)> = vec![
        (
            "type 4",
            patch(footer + 60, &4u32.to_be_bytes()),
            9,
            "differencing",
        ),
        (
            "type 7",
            patch(footer + 60, &7u32.to_be_bytes()),
            8,
            "disk type 7",
        ),
        ("bad checksum", bad_sum, 8, "footer checksum"),
        (
            "BAT offset",
            patch(528, &(1u64 << 40).to_be_bytes()),
            8,
            "BAT",
        ),
        (
            "block size 0",
            patch(544, &0u32.to_be_bytes()),
            8,
            "block size 0",
        ),
        (
            "block size 3M",
            patch(544, &(3u32 << 20).to_be_bytes()),
            8,
            "power of two",
        ),
        (
            "BAT entries",
            patch(540, &1u32.to_be_bytes()),
            8,
            "cover less",
        ),
        ("header cookie", patch(512, b"xxsparse"), 8, "cxsparse"),
        (
            "header offset",
            patch(footer + 16, &(1u64 << 50).to_be_bytes()),
            8,
            "outside",
        ),
        (
            "block offset",
            patch(1536, &0x7fff_fff0u32.to_be_bytes()),
            8,
            "block 0",
        ),
        ("truncated block", cut_block, 8, "truncated block"),
        ("truncated footer", good[..n - 100].to_vec(), 8, "cut short"),
        ("shorter than a footer", good[..300].to_vec(), 8, "shorter"),
    ];
    for (what, bytes, code, word) in cases {
        let img = dir.join("bad.vhd");
        std::fs::write(&img, &bytes).expect("write");
        let out = dir.join("out.raw");
        let err = fails_with(imgconv().args(["-f", "vhd"]).arg(&img).arg(&out), code);
        assert!(!out.exists(), "{what}: output left behind");
        assert!(err.contains(word), "{what}: {err}");
    }
}
