//! VMDK reading: images made by other tools, every subformat qemu-img writes, descriptors that
//! point outside their folder, hostile headers.

use std::path::{Path, PathBuf};

use crate::*;

fn fixture(dir: &Path, name: &str) -> PathBuf {
    fixture_in(dir, "vmdk", name)
}

fn path(p: &Path) -> &str {
    path_str(p)
}

const PATTERN: &str = "e8197d04946c7389986f4636c4088e2dda521a54647f080bab2ec45e81d88403";

#[test]
fn images_made_by_other_tools_read_as_the_manifest_says() {
    let dir = scratch("vmdk-fixtures");
    for (name, sha) in [
        ("virtualbox72-monolithicSparse.vmdk", PATTERN),
        ("virtualbox72-streamOptimized.vmdk", PATTERN),
        (
            "vmdktool-streamOptimized.vmdk",
            "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14",
        ),
        (
            "freebsd-mkimg-monolithicSparse-grain8k.vmdk",
            "7255789b5f305e9f7a6c0771c45240db90594f7044ea8da6a823c070e1b06d8a",
        ),
    ] {
        let img = fixture(&dir, name);
        let out = dir.join(format!("{name}.raw"));
        ok(imgconv().arg(&img).arg(&out));
        assert_eq!(sha256sum(&out), sha, "{name}");
        std::fs::remove_file(&out).expect("rm");
    }
    // 8 GiB of zeros: hashing it takes long, so qemu-img compares it with an empty disk.
    let ova = fixture(&dir, "virtualbox4x-ova-export-streamOptimized.vmdk");
    let out = dir.join("ova.raw");
    ok(imgconv().arg(&ova).arg(&out));
    let zeros = Image::new(dir.join("zeros.raw"), 8 * GIB).done();
    assert_eq!(std::fs::metadata(&out).expect("out").len(), 8 * GIB);
    assert_eq!(qemu_compare(&out, &zeros), 0);
    let missing = fixture(
        &dir,
        "vmware-workstation-twoGbMaxExtentSparse-descriptor-only.vmdk",
    );
    let err = fails_with(imgconv().arg(&missing).arg(dir.join("m.raw")), 3);
    assert!(err.contains("disk-s001.vmdk"), "{err}");
    for name in [
        "malformed-cdi-huge-capacity-grain1025.vmdk",
        "malformed-cdi-huge-capacity-grain3456.vmdk",
        "malformed-truncated-streamOptimized.vmdk",
    ] {
        let img = fixture(&dir, name);
        fails_with(imgconv().arg(&img).arg(dir.join("bad.raw")), 8);
        assert!(!dir.join("bad.raw").exists(), "{name}");
    }
}

#[test]
fn every_subformat_qemu_img_writes_converts_to_its_own_raw() {
    let dir = scratch("vmdk-from-qemu");
    let src = Image::new(dir.join("src.raw"), 9 * MIB + 3072)
        .data(100 * 1024, 300 * 1024)
        .zeros(2 * MIB, MIB as usize)
        .data(9 * MIB, 3072)
        .done();
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
        "monolithicSparse,zeroed_grain=on",
    ] {
        let sub_dir = dir.join(sub.replace([',', '='], "_"));
        std::fs::create_dir_all(&sub_dir).expect("mkdir");
        let img = sub_dir.join("img.vmdk");
        qemu_make(&src, "vmdk", &format!("subformat={sub}"), &img);
        let theirs = sub_dir.join("theirs.raw");
        let ours = sub_dir.join("ours.raw");
        qemu_raw(&img, "vmdk", &theirs);
        ok(imgconv().arg(&img).arg(&ours));
        assert_eq!(md5sum(&ours), md5sum(&theirs), "{sub}");
        let info = ok(imgconv().arg("info").arg(&img));
        assert!(info.contains("file format: vmdk"), "{sub}: {info}");
    }
}

#[test]
fn extents_outside_the_descriptors_folder_are_never_read() {
    let dir = scratch("vmdk-escape");
    let folder = dir.join("disk");
    std::fs::create_dir(&folder).expect("mkdir");
    // A secret outside the folder, with a recognisable pattern.
    let secret = dir.join("outside.raw");
    std::fs::write(&secret, b"TOP-SECRET-BYTES".repeat(64)).expect("write secret");
    std::os::unix::fs::symlink(&secret, folder.join("link.raw")).expect("symlink");
    for (name, target) in [
        ("abs", "/etc/passwd".to_string()),
        ("dotdot", "../outside.raw".to_string()),
        ("link", "link.raw".to_string()),
        ("abs-secret", secret.display().to_string()),
    ] {
        let desc = folder.join(format!("{name}.vmdk"));
        std::fs::write(
            &desc,
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
                 createType=\"monolithicFlat\"\nRW 2 FLAT \"{target}\" 0\n"
            ),
        )
        .expect("write descriptor");
        let out = dir.join(format!("{name}.raw"));
        let err = fails_with(imgconv().arg(&desc).arg(&out), 9);
        assert!(err.contains("folder"), "{name}: {err}");
        assert!(!out.exists(), "{name}: output written");
    }
    // Stdout too: not one byte of the secret comes out.
    let piped = imgconv()
        .args(["convert", "-O", "raw"])
        .arg(folder.join("link.vmdk"))
        .arg("-")
        .output()
        .expect("run");
    assert!(!piped.status.success());
    assert!(!String::from_utf8_lossy(&piped.stdout).contains("TOP-SECRET"));
}

#[test]
fn malformed_sparse_headers_and_descriptors_fail_clearly() {
    let dir = scratch("vmdk-malformed");
    let good = std::fs::read(fixture(&dir, "virtualbox72-monolithicSparse.vmdk")).expect("read");
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let gd = le64(&good, 56) as usize * 512;
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("truncated header", good[..300].to_vec(), 8),
        ("truncated grain directory", good[..gd + 2].to_vec(), 8),
        ("truncated grain", good[..good.len() - 1000].to_vec(), 8),
        ("bad magic", patch(0, b"KDMX"), 8),
        ("grain size 0", patch(20, &0u64.to_le_bytes()), 8),
        ("grain size 3", patch(20, &3u64.to_le_bytes()), 8),
        (
            "grain table past the end",
            patch(gd, &0x00ff_ffffu32.to_le_bytes()),
            8,
        ),
    ];
    for (what, bytes, code) in cases {
        let img = dir.join("bad.vmdk");
        std::fs::write(&img, &bytes).expect("write");
        let out = dir.join("out.raw");
        fails_with(imgconv().args(["-f", "vmdk"]).arg(&img).arg(&out), code);
        assert!(!out.exists(), "{what}: output left behind");
    }
    for (what, count) in [("negative", "-2048"), ("huge", "99999999999999999999")] {
        let desc = dir.join(format!("{what}.vmdk"));
        std::fs::write(
            &desc,
            format!("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW {count} ZERO\n"),
        )
        .expect("write");
        fails_with(imgconv().arg(&desc).arg(dir.join("d.raw")), 8);
    }
}

/// The writer tests' source: holes, allocated zeros, random and compressible data, and a size
/// (9 MiB + 3 KiB) that is not a multiple of 64 KiB.
fn source(dir: &Path) -> PathBuf {
    mixed_source(dir)
}

/// Size and MD5 of the virtual disk as libvmdk (`pyvmdk`) reads it.
fn pyvmdk_md5(img: &Path) -> (u64, String) {
    libyal_md5(
        "pyvmdk",
        "f = pyvmdk.handle(); f.open(sys.argv[1]); f.open_extent_data_files()",
        img,
    )
}

#[test]
fn writer_outputs_pass_qemu_img_and_libvmdk() {
    let dir = scratch("vmdk-writers");
    let src = source(&dir);
    let size = std::fs::metadata(&src).expect("src").len();
    let padded = size.div_ceil(512) * 512;
    let mut bytes = std::fs::read(&src).expect("read");
    bytes.resize(padded as usize, 0);
    let want = dir.join("padded.raw");
    std::fs::write(&want, bytes).expect("write");
    let want_md5 = md5sum(&want);
    for sub in ["streamOptimized", "monolithicSparse"] {
        let out = dir.join(format!("{sub}.vmdk"));
        ok(imgconv()
            .args(["convert", "-o", &format!("subformat={sub}")])
            .arg(&src)
            .arg(&out));
        let check = tool("qemu-img", &["check", "-f", "vmdk", path(&out)]);
        assert!(check.status.success(), "{sub}: check: {check:?}");
        assert_eq!(qemu_compare_formats(&src, "raw", &out, "vmdk"), 0, "{sub}");
        let info = qemu_info(&out, "vmdk");
        assert_eq!(info["format-specific"]["data"]["create-type"], sub);
        assert_eq!(info["virtual-size"], padded, "{sub}");
        assert_eq!(pyvmdk_md5(&out), (padded, want_md5.clone()), "{sub}");
        let back = dir.join(format!("{sub}-back.raw"));
        ok(imgconv().arg(&out).arg(&back));
        assert_eq!(md5sum(&back), want_md5, "{sub}");
        let ours = ok(imgconv().arg("info").arg(&out));
        assert!(ours.contains(&format!("create type: {sub}")), "{ours}");
        assert!(ours.contains("adapter type: lsilogic"), "{ours}");
    }
}

#[test]
fn stream_optimized_output_reads_front_to_back_like_an_importer() {
    let dir = scratch("vmdk-stream-walk");
    let src = source(&dir);
    let out = dir.join("walk.vmdk");
    ok(imgconv()
        .args(["convert", "-o", "adapter_type=ide,hwversion=7"])
        .arg(&src)
        .arg(&out));
    let f = std::fs::read(&out).expect("read");
    let le32 = |at: usize| u32::from_le_bytes(f[at..at + 4].try_into().expect("4"));
    let le64 = |at: usize| u64::from_le_bytes(f[at..at + 8].try_into().expect("8"));
    assert_eq!(&f[0..4], b"KDMV");
    assert_eq!(le32(4), 3, "version 3");
    assert_eq!(le64(56), u64::MAX, "grain directory in the footer");
    let text = String::from_utf8_lossy(&f[512..le64(64) as usize * 512]);
    assert!(text.contains("createType=\"streamOptimized\""), "{text}");
    assert!(text.contains("ddb.adapterType = \"ide\""), "{text}");
    assert!(text.contains("ddb.virtualHWVersion = \"7\""), "{text}");
    assert!(text.contains("RW 18438 SPARSE \"walk.vmdk\""), "{text}");
    // Walk every record from the end of the metadata, in file order.
    let mut pos = le64(64) as usize * 512;
    let mut last_lba = None;
    let mut seen = Vec::new();
    loop {
        assert!(pos + 512 <= f.len(), "ran off the end at {pos}");
        let size = le32(pos + 8);
        if size != 0 {
            let lba = le64(pos);
            assert!(
                last_lba.is_none_or(|l| lba > l),
                "grains out of order at {pos}"
            );
            last_lba = Some(lba);
            pos += (12 + size as usize).next_multiple_of(512);
            continue;
        }
        let kind = le32(pos + 12);
        let sectors = le64(pos) as usize;
        seen.push(kind);
        match kind {
            0 => {
                pos += 512;
                break;
            }
            1 | 2 => pos += 512 + sectors * 512,
            3 => {
                assert_eq!(
                    pos,
                    f.len() - 1536,
                    "footer marker where readers look for it"
                );
                assert_eq!(&f[pos + 512..pos + 516], b"KDMV");
                assert_ne!(
                    le64(pos + 512 + 56),
                    u64::MAX,
                    "footer has the real directory"
                );
                pos += 1024;
            }
            k => panic!("unknown marker {k} at {pos}"),
        }
    }
    assert_eq!(pos, f.len(), "end-of-stream is the last sector");
    assert!(last_lba.is_some(), "no grains");
    assert_eq!(
        &seen[seen.len() - 3..],
        &[2, 3, 0],
        "GD, footer, end-of-stream at the end"
    );
    assert!(seen.contains(&1), "grain tables present");
}

#[test]
fn compressed_grain_lengths_out_of_range_fail_clearly() {
    let dir = scratch("vmdk-bad-grain");
    let src = source(&dir);
    let good_path = dir.join("good.vmdk");
    ok(imgconv().arg(&src).arg(&good_path));
    let good = std::fs::read(&good_path).expect("read");
    let overhead = u64::from_le_bytes(good[64..72].try_into().expect("8")) as usize * 512;
    // The first record after the metadata is the first grain: u64 LBA, u32 length.
    assert_ne!(
        u32::from_le_bytes(good[overhead + 8..overhead + 12].try_into().expect("4")),
        0
    );
    for (what, len) in [
        ("length past the end of the file", 0x7fff_ffffu32),
        ("length larger than any deflated grain", 200_000),
    ] {
        let mut bad = good.clone();
        bad[overhead + 8..overhead + 12].copy_from_slice(&len.to_le_bytes());
        let img = dir.join("bad.vmdk");
        std::fs::write(&img, &bad).expect("write");
        let out = dir.join("out.raw");
        let err = fails_with(imgconv().arg(&img).arg(&out), 8);
        assert!(err.contains("compressed grain"), "{what}: {err}");
        assert!(!out.exists(), "{what}: output left behind");
    }
}

#[test]
fn monolithic_flat_output_is_a_descriptor_and_its_extent() {
    let dir = scratch("vmdk-flat");
    let src = source(&dir);
    let out_dir = dir.join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("disk.vmdk");
    let stdout = ok(imgconv()
        .args([
            "convert",
            "-o",
            "subformat=monolithicFlat",
            "--digest",
            "md5",
        ])
        .arg(&src)
        .arg(&out));
    let flat = out_dir.join("disk-flat.vmdk");
    assert_eq!(
        entries(&out_dir),
        vec!["disk-flat.vmdk".to_string(), "disk.vmdk".to_string()]
    );
    // The digest names the file it describes, so md5sum -c can check it.
    assert_eq!(
        stdout.trim(),
        format!("MD5 ({}) = {}", flat.display(), md5sum(&flat))
    );
    let check = tool("qemu-img", &["check", "-f", "vmdk", path(&out)]);
    assert!(check.status.success(), "check: {check:?}");
    assert_eq!(qemu_compare_formats(&src, "raw", &out, "vmdk"), 0);
    assert_eq!(
        qemu_info(&out, "vmdk")["format-specific"]["data"]["create-type"],
        "monolithicFlat"
    );
    let size = std::fs::metadata(&src).expect("src").len();
    let (lib_size, _) = pyvmdk_md5(&out);
    assert_eq!(lib_size, size.div_ceil(512) * 512);
    let back = dir.join("back.raw");
    ok(imgconv().arg(&out).arg(&back));
    assert_eq!(qemu_compare(&src, &back), 0);
    // Existing output: refused before any work, and nothing is touched.
    let before = md5sum(&flat);
    fails_with(
        imgconv()
            .args(["-o", "subformat=monolithicFlat"])
            .arg(&src)
            .arg(&out),
        5,
    );
    assert_eq!(md5sum(&flat), before);
    // Two files cannot go to stdout.
    let piped = imgconv()
        .args(["convert", "-O", "vmdk", "-o", "subformat=monolithicFlat"])
        .arg(&src)
        .arg("-")
        .output()
        .expect("run");
    assert_eq!(piped.status.code(), Some(9));
    assert!(piped.stdout.is_empty());
}

#[test]
fn delta_and_unsupported_create_types_are_refused_by_name() {
    let dir = scratch("vmdk-refused");
    std::fs::write(dir.join("base-flat.vmdk"), vec![0u8; 1024]).expect("write extent");
    for (name, extra, word) in [
        (
            "delta",
            "parentCID=12345678\nparentFileNameHint=\"base.vmdk\"\n",
            "parent",
        ),
        ("sesparse", "createType=\"seSparse\"\n", "seSparse"),
        ("vmfssparse", "createType=\"vmfsSparse\"\n", "vmfsSparse"),
    ] {
        let desc = dir.join(format!("{name}.vmdk"));
        std::fs::write(
            &desc,
            format!("# Disk DescriptorFile\nversion=1\nCID=12345678\n{extra}RW 2 FLAT \"base-flat.vmdk\" 0\n"),
        )
        .expect("write descriptor");
        let err = fails_with(imgconv().arg(&desc).arg(dir.join("out.raw")), 9);
        assert!(err.contains(word), "{name}: {err}");
        assert!(!dir.join("out.raw").exists());
    }
}
