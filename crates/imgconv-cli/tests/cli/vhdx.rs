//! VHDX: images qemu-img makes read to qemu-img's own RAW; malformed and differencing ones are
//! refused; every writer variant reads back equal in qemu-img and libvhdi (pyvhdi).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::*;

#[test]
fn images_qemu_img_makes_convert_to_its_own_raw() {
    let dir = scratch("vhdx-from-qemu");
    let src = mixed_source(&dir);
    for (i, opts) in [
        "subformat=dynamic",
        "subformat=fixed",
        "block_size=1M",
        "block_size=256M",
        "block_size=8M,log_size=1M",
        "block_state_zero=off",
    ]
    .iter()
    .enumerate()
    {
        let img = dir.join(format!("q{i}.vhdx"));
        qemu_make(&src, "vhdx", opts, &img);
        let theirs = dir.join(format!("q{i}.qemu.raw"));
        qemu_raw(&img, "vhdx", &theirs);
        let ours = dir.join(format!("q{i}.raw"));
        ok(imgconv().arg(&img).arg(&ours));
        assert_eq!(md5sum(&ours), md5sum(&theirs), "{opts}");
        let info: serde_json::Value =
            serde_json::from_str(&ok(imgconv().args(["info", "--output", "json"]).arg(&img)))
                .expect("info JSON");
        assert_eq!(info["format"], "vhdx", "{opts}");
        assert_eq!(
            info["virtual-size"],
            std::fs::metadata(&theirs).expect("raw").len(),
            "{opts}"
        );
        let (code, _) = (
            imgconv()
                .args(["check", "-q"])
                .arg(&img)
                .status()
                .expect("run")
                .code(),
            (),
        );
        assert_eq!(code, Some(0), "{opts}");
    }
}

#[test]
fn malformed_vhdx_images_are_refused_cleanly() {
    let dir = scratch("vhdx-malformed");
    let src = mixed_source(&dir);
    let img = dir.join("good.vhdx");
    qemu_make(&src, "vhdx", "subformat=dynamic", &img);
    let good = std::fs::read(&img).expect("read");
    // Where the first stored block is, from the map.
    let map: serde_json::Value =
        serde_json::from_str(&ok(imgconv().args(["map", "--output", "json"]).arg(&img)))
            .expect("map JSON");
    let first_block = map
        .as_array()
        .expect("entries")
        .iter()
        .find_map(|e| e["offset"].as_u64())
        .expect("a stored block");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "headers",
            {
                let mut b = good.clone();
                b[0x10004] ^= 1;
                b[0x20004] ^= 1;
                b
            },
            "neither VHDX header is valid",
        ),
        (
            "region tables",
            {
                let mut b = good.clone();
                b[0x30010] ^= 1;
                b[0x40010] ^= 1;
                b
            },
            "neither VHDX region table is valid",
        ),
        (
            "truncated",
            good[..first_block as usize + 4096].to_vec(),
            "outside the file",
        ),
        ("identifier", vec![0u8; 4096], "no VHDX file identifier"),
    ];
    for (name, bytes, want) in cases {
        assert_refused(
            &dir,
            &format!("{name}.vhdx"),
            &bytes,
            &["-f", "vhdx"],
            &format!("{name}.raw"),
            want,
        );
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `src` written as a VHDX with 1 MiB blocks at `dir/name`.
fn written_1m(dir: &Path, src: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    ok(imgconv()
        .args(["convert", "-O", "vhdx", "-o", "block_size=1M"])
        .arg(src)
        .arg(&out));
    out
}

/// The writer's fixed places: metadata region at 2 MiB (items from 64 KiB into it), BAT at
/// 3 MiB.
const METADATA: usize = 2 << 20;
const ITEMS: usize = METADATA + (64 << 10);
const BAT: usize = 3 << 20;

/// Size and MD5 of the virtual disk as libvhdi reads it.
fn pyvhdi_md5(img: &Path) -> (u64, String) {
    libyal_md5("pyvhdi", "f = pyvhdi.file(); f.open(sys.argv[1])", img)
}

/// A copy of `src` zero-padded to a multiple of `sector`, and its size.
fn padded(src: &Path, sector: u64, dir: &Path) -> (PathBuf, u64) {
    let len = std::fs::metadata(src).expect("src").len();
    let want = len.next_multiple_of(sector);
    let out = dir.join(format!("src-{sector}.raw"));
    std::fs::copy(src, &out).expect("copy");
    let f = OpenOptions::new().write(true).open(&out).expect("open");
    f.set_len(want).expect("pad");
    (out, want)
}

#[test]
fn every_writer_variant_reads_back_equal_in_qemu_img_and_libvhdi() {
    let dir = scratch("vhdx-writer");
    let src = mixed_source(&dir);
    let size = std::fs::metadata(&src).expect("src").len();
    for (opts, fixed, block, logical) in [
        ("", false, 32 * MIB, 512u64),
        ("subformat=fixed", true, 32 * MIB, 512),
        ("block_size=1M", false, MIB, 512),
        ("block_size=256M", false, 256 * MIB, 512),
        ("subformat=fixed,block_size=1M", true, MIB, 512),
        ("physical_sector_size=512", false, 32 * MIB, 512),
        ("logical_sector_size=4096", false, 32 * MIB, 4096),
        (
            "subformat=fixed,block_size=2M,logical_sector_size=4096",
            true,
            2 * MIB,
            4096,
        ),
    ] {
        let out = dir.join("out.vhdx");
        let _ = std::fs::remove_file(&out);
        let mut cmd = imgconv();
        cmd.args(["convert", "-O", "vhdx"]);
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        ok(cmd.arg(&src).arg(&out));
        let (want_src, disk) = padded(&src, logical, &dir);
        let want = md5sum(&want_src);
        // libvhdi reads every variant, 4096-byte sectors too.
        assert_eq!(pyvhdi_md5(&out), (disk, want.clone()), "{opts}: libvhdi");
        // qemu-img reads VHDX with 512-byte logical sectors only (it refuses 4096 as not
        // supported), so it judges those variants.
        if logical == 512 {
            let check = tool("qemu-img", &["check", "-f", "vhdx", path_str(&out)]);
            assert!(check.status.success(), "{opts}: qemu-img check: {check:?}");
            assert_eq!(qemu_compare_formats(&src, "raw", &out, "vhdx"), 0, "{opts}");
            assert_eq!(qemu_info(&out, "vhdx")["virtual-size"], size, "{opts}");
        }
        let back = dir.join("back.raw");
        let _ = std::fs::remove_file(&back);
        ok(imgconv().arg(&out).arg(&back));
        assert_eq!(md5sum(&back), want, "{opts}: read back");
        let (code, _) = (
            imgconv()
                .args(["check", "-q"])
                .arg(&out)
                .status()
                .expect("run")
                .code(),
            (),
        );
        assert_eq!(code, Some(0), "{opts}: imgconv check");
        // Structure: the metadata says what was asked, the BAT holds exactly the stored blocks,
        // and measure predicts the file's size.
        let b = std::fs::read(&out).expect("read");
        assert_eq!(&b[..8], b"vhdxfile");
        assert_eq!(u64::from(le32(&b, ITEMS)), block, "{opts}: block size");
        assert_eq!(
            le32(&b, ITEMS + 4) & 1,
            u32::from(fixed),
            "{opts}: fixed flag"
        );
        assert_eq!(le64(&b, ITEMS + 8), disk, "{opts}: disk size");
        assert_eq!(
            u64::from(le32(&b, ITEMS + 32)),
            logical,
            "{opts}: logical sector"
        );
        let blocks = disk.div_ceil(block);
        let ratio = (1u64 << 23) * logical / block;
        let mut stored = 0;
        for i in 0..blocks {
            let e = le64(&b, BAT + 8 * (i + i / ratio) as usize);
            if e & 7 == 6 {
                stored += 1;
                let at = ((e >> 20) << 20) as usize;
                assert!(at + block as usize <= b.len(), "{opts}: block {i} inside");
            } else {
                assert_eq!(e, 0, "{opts}: block {i} not present");
            }
        }
        let with_data = (0..blocks)
            .filter(|i| {
                let lo = (i * block) as usize;
                let hi = ((i + 1) * block).min(size) as usize;
                std::fs::read(&src).expect("src")[lo..hi]
                    .iter()
                    .any(|&x| x != 0)
            })
            .count() as u64;
        assert_eq!(stored, if fixed { blocks } else { with_data }, "{opts}");
        assert_eq!(
            b.len() as u64,
            (BAT as u64)
                + (8 * (blocks + (blocks - 1) / ratio)).next_multiple_of(MIB)
                + stored * block,
            "{opts}: file size"
        );
        let mut m = imgconv();
        m.args(["measure", "-O", "vhdx", "--output", "json"]);
        if !opts.is_empty() {
            m.args(["-o", opts]);
        }
        let measured: serde_json::Value =
            serde_json::from_str(&ok(m.arg(&src))).expect("measure JSON");
        assert_eq!(measured["required"], b.len() as u64, "{opts}: measure");
    }
}

#[test]
fn the_map_of_a_written_vhdx_points_at_the_blocks_holding_the_data() {
    // qemu-img maps every VHDX as one data extent without offsets (its driver reports no
    // block status), so the map is checked against the file itself.
    let dir = scratch("vhdx-map");
    let src = mixed_source(&dir);
    let out = written_1m(&dir, &src, "m.vhdx");
    let map: serde_json::Value =
        serde_json::from_str(&ok(imgconv().args(["map", "--output", "json"]).arg(&out)))
            .expect("map JSON");
    let (s, b) = (
        std::fs::read(&src).expect("src"),
        std::fs::read(&out).expect("out"),
    );
    let mut covered = 0u64;
    let mut data = 0;
    for e in map.as_array().expect("entries") {
        let (start, len) = (
            e["start"].as_u64().expect("start") as usize,
            e["length"].as_u64().expect("length") as usize,
        );
        assert_eq!(start as u64, covered);
        covered += len as u64;
        let end = (start + len).min(s.len());
        match e["offset"].as_u64() {
            Some(at) => {
                data += 1;
                let at = at as usize;
                assert_eq!(&b[at..at + (end - start)], &s[start..end], "{e}");
            }
            None => assert!(s[start..end].iter().all(|&x| x == 0), "{e}"),
        }
    }
    assert!(data >= 3, "{map}");
    assert_eq!(covered, s.len() as u64);
}

/// Make `img` (written by imgconv) a differencing disk whose parent locator names `parent`.
fn make_differencing(img: &Path, parent: &str) {
    let mut b = std::fs::read(img).expect("read");
    // File parameters: "has parent".
    let flags = le32(&b, ITEMS + 4) | 2;
    b[ITEMS + 4..ITEMS + 8].copy_from_slice(&flags.to_le_bytes());
    // A sixth metadata item: the parent locator, 4 KiB into the items.
    let n = usize::from(u16::from_le_bytes([b[METADATA + 10], b[METADATA + 11]]));
    let entry = METADATA + 32 + 32 * n;
    let at = 64 * 1024 + 4096;
    let mut loc = vec![0u8; 20];
    // Locator type B04AEFB7-D19E-4A81-B789-25B8E9445913.
    loc[..16].copy_from_slice(&[
        0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59,
        0x13,
    ]);
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect() };
    let pairs = [
        (
            "parent_linkage",
            "{00000000-0000-0000-0000-000000000001}".to_string(),
        ),
        ("relative_path", format!(".\\{parent}")),
    ];
    loc[18..20].copy_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let base = 20 + 12 * pairs.len();
    let mut entries = Vec::new();
    for (k, v) in &pairs {
        let (k, v) = (utf16(k), utf16(v));
        let ko = base + strings.len();
        strings.extend_from_slice(&k);
        let vo = base + strings.len();
        strings.extend_from_slice(&v);
        entries.extend_from_slice(&(ko as u32).to_le_bytes());
        entries.extend_from_slice(&(vo as u32).to_le_bytes());
        entries.extend_from_slice(&(k.len() as u16).to_le_bytes());
        entries.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    loc.extend_from_slice(&entries);
    loc.extend_from_slice(&strings);
    b[METADATA + at..METADATA + at + loc.len()].copy_from_slice(&loc);
    b[entry..entry + 16].copy_from_slice(&[
        0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab,
        0x0c,
    ]);
    b[entry + 16..entry + 20].copy_from_slice(&(at as u32).to_le_bytes());
    b[entry + 20..entry + 24].copy_from_slice(&(loc.len() as u32).to_le_bytes());
    b[entry + 24..entry + 28].copy_from_slice(&4u32.to_le_bytes());
    b[METADATA + 10..METADATA + 12].copy_from_slice(&((n + 1) as u16).to_le_bytes());
    std::fs::write(img, b).expect("write");
}

#[test]
fn a_differencing_vhdx_is_refused_naming_its_parent_which_is_never_opened() {
    let dir = scratch("vhdx-differencing");
    let src = mixed_source(&dir);
    let child = dir.join("child.vhdx");
    ok(imgconv()
        .args(["convert", "-O", "vhdx"])
        .arg(&src)
        .arg(&child));
    make_differencing(&child, "base-disk.vhdx");
    // qemu-img agrees that this is a differencing disk (it does not support them either).
    let q = tool("qemu-img", &["info", "-f", "vhdx", path_str(&child)]);
    assert!(!q.status.success(), "{q:?}");
    // A parent that would be read if it were opened: it must not be (it is not a VHDX).
    std::fs::write(dir.join("base-disk.vhdx"), b"not a disk").expect("write");
    for args in [&["info"][..], &["convert", "-O", "raw"][..]] {
        let mut cmd = imgconv();
        cmd.args(args).arg(&child);
        if args[0] == "convert" {
            cmd.arg(dir.join("child.raw"));
        }
        let out = cmd.output().expect("run");
        assert_eq!(out.status.code(), Some(9), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("differencing VHDX"), "{err}");
        assert!(err.contains("base-disk.vhdx"), "names the parent: {err}");
    }
    assert!(!dir.join("child.raw").exists());
}

#[test]
fn malformed_bat_entries_and_metadata_are_refused_cleanly() {
    let dir = scratch("vhdx-malformed-bat");
    let src = mixed_source(&dir);
    let img = written_1m(&dir, &src, "good.vhdx");
    let good = std::fs::read(&img).expect("read");
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bat-past-end",
            {
                let mut b = good.clone();
                put64(&mut b, BAT, 6 | (4096 << 20));
                b
            },
            "outside the file",
        ),
        (
            "bat-partial",
            {
                let mut b = good.clone();
                let e = le64(&b, BAT) & !7 | 7;
                put64(&mut b, BAT, e);
                b
            },
            "partially present",
        ),
        (
            "bat-state",
            {
                let mut b = good.clone();
                put64(&mut b, BAT, 5);
                b
            },
            "unknown state",
        ),
        (
            "block-size",
            {
                let mut b = good.clone();
                put32(&mut b, ITEMS, 3 << 20);
                b
            },
            "block size",
        ),
        (
            "disk-size",
            {
                let mut b = good.clone();
                put64(&mut b, ITEMS + 8, 1000);
                b
            },
            "virtual disk size",
        ),
        (
            "sector-size",
            {
                let mut b = good.clone();
                put32(&mut b, ITEMS + 32, 1024);
                b
            },
            "sector sizes",
        ),
        (
            "item-outside",
            {
                let mut b = good.clone();
                put32(&mut b, METADATA + 32 + 16, 4 << 20);
                b
            },
            "outside its region",
        ),
        (
            "metadata-signature",
            {
                let mut b = good.clone();
                b[METADATA] = b'X';
                b
            },
            "metadata table signature",
        ),
    ];
    for (name, bytes, want) in cases {
        assert_refused(
            &dir,
            &format!("{name}.vhdx"),
            &bytes,
            &["-f", "vhdx"],
            &format!("{name}.raw"),
            want,
        );
    }
}

#[test]
fn check_finds_blocks_overlapping_each_other_or_the_metadata() {
    let dir = scratch("vhdx-check");
    let src = mixed_source(&dir);
    let img = written_1m(&dir, &src, "good.vhdx");
    let good = std::fs::read(&img).expect("read");
    let (code, _) = check_json(&img);
    assert_eq!(code, 0);
    // Block 0's entry, and the next stored block's.
    let first = le64(&good, BAT);
    let second = (1..9)
        .map(|i| BAT + 8 * i)
        .find(|&e| le64(&good, e) & 7 == 6)
        .expect("a second stored block");
    for (name, entry_at, value, structure) in [
        ("shared", second, first, "BAT"),
        ("on-metadata", BAT, 6 | (2 << 20), "BAT"),
    ] {
        let mut b = good.clone();
        b[entry_at..entry_at + 8].copy_from_slice(&value.to_le_bytes());
        let bad = dir.join(format!("{name}.vhdx"));
        std::fs::write(&bad, b).expect("write");
        let (code, doc) = check_json(&bad);
        assert_eq!(code, 2, "{name}: {doc}");
        let findings = doc["findings"].as_array().expect("findings");
        assert!(
            findings
                .iter()
                .any(|f| f["structure"] == structure && f["offset"] == entry_at as u64),
            "{name}: {doc}"
        );
    }
}

/// `imgconv check --output json`: exit code and document.
fn check_json(img: &Path) -> (i32, serde_json::Value) {
    let out = imgconv()
        .args(["check", "--output", "json"])
        .arg(img)
        .output()
        .expect("run");
    let doc = serde_json::from_slice(&out.stdout).expect("check JSON");
    (out.status.code().expect("code"), doc)
}
