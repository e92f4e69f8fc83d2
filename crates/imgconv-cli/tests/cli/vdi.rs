//! VDI: VirtualBox's own images, the writer against qemu-img and VirtualBox's header rules,
//! images qemu-img makes, and hostile headers and maps.

use std::path::{Path, PathBuf};

use crate::*;

const PATTERN: &str = "e8197d04946c7389986f4636c4088e2dda521a54647f080bab2ec45e81d88403";

fn fixture(dir: &Path, name: &str) -> PathBuf {
    fixture_in(dir, "vdi", name)
}

fn path(p: &Path) -> &str {
    path_str(p)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4"))
}

/// Holes, allocated zeros, random data, and a size that is not a whole number of blocks.
fn source(dir: &Path) -> PathBuf {
    Image::new(dir.join("src.raw"), 9 * MIB + 3072)
        .data(0, 100_000)
        .zeros(MIB, 2 * MIB as usize)
        .data(4 * MIB + 512, 70_000)
        .data(9 * MIB + 1024, 2048)
        .done()
}

#[test]
fn virtualbox_images_read_as_the_manifest_says() {
    let dir = scratch("vdi-fixtures");
    for name in ["virtualbox72-dynamic.vdi", "virtualbox72-fixed.vdi"] {
        let img = fixture(&dir, name);
        let out = dir.join(format!("{name}.raw"));
        ok(imgconv().arg(&img).arg(&out));
        assert_eq!(sha256sum(&out), PATTERN, "{name}");
        let info = ok(imgconv().arg("info").arg(&img));
        assert!(info.contains("block size: 1048576"), "{info}");
    }
}

#[test]
fn dynamic_and_fixed_outputs_pass_qemu_img_and_virtualbox_header_rules() {
    let dir = scratch("vdi-writer");
    let src = source(&dir);
    let size = std::fs::metadata(&src).expect("src").len();
    for (opts, image_type) in [
        ("subformat=dynamic", 1u32),
        ("subformat=fixed", 2),
        ("static=on", 2),
    ] {
        let out = dir.join(format!("{}.vdi", opts.replace('=', "-")));
        ok(imgconv().args(["convert", "-o", opts]).arg(&src).arg(&out));
        let check = tool("qemu-img", &["check", "-f", "vdi", path(&out)]);
        assert!(check.status.success(), "{opts}: {check:?}");
        assert_eq!(qemu_compare_formats(&src, "raw", &out, "vdi"), 0, "{opts}");
        let back = dir.join("back.raw");
        let _ = std::fs::remove_file(&back);
        ok(imgconv().arg(&out).arg(&back));
        assert_eq!(md5sum(&back), md5sum(&src), "{opts}");
        // The header rules VirtualBox's VDI code enforces.
        let h = std::fs::read(&out).expect("read");
        assert!(h.starts_with(b"<<< Oracle VM VirtualBox Disk Image >>>\n"));
        assert_eq!(le32(&h, 0x40), 0xBEDA_107F);
        assert_eq!(le32(&h, 0x44), 0x0001_0001);
        assert_eq!(le32(&h, 0x48), 0x190, "header size");
        assert_eq!(le32(&h, 0x4c), image_type, "{opts}");
        let bmap = le32(&h, 0x154) as usize;
        let data = le32(&h, 0x158) as usize;
        assert_eq!(bmap % (1 << 20), 0, "block map aligned to 1 MiB");
        assert_eq!(data % (1 << 20), 0, "data aligned to 1 MiB");
        let disk = u64::from_le_bytes(h[0x170..0x178].try_into().expect("8"));
        assert_eq!(disk, size);
        assert_eq!(le32(&h, 0x178), 1 << 20, "block size");
        let blocks = le32(&h, 0x180) as usize;
        assert!(blocks as u64 * (1 << 20) >= disk, "blocks cover the disk");
        let allocated = le32(&h, 0x184) as usize;
        let map: Vec<u32> = (0..blocks).map(|i| le32(&h, bmap + i * 4)).collect();
        assert_eq!(
            map.iter().filter(|&&e| e < 0xFFFF_FFFE).count(),
            allocated,
            "{opts}"
        );
        assert!(
            h[0x188..0x198].iter().any(|&b| b != 0),
            "create UUID is null"
        );
        assert!(
            h[0x198..0x1a8].iter().any(|&b| b != 0),
            "modify UUID is null"
        );
        assert!(
            h[0x1a8..0x1c8].iter().all(|&b| b == 0),
            "link and parent UUIDs are null"
        );
        assert_eq!(h.len(), data + allocated * (1 << 20), "file size");
        if image_type == 2 {
            assert_eq!(allocated, blocks, "fixed: every block allocated");
        }
    }
}

#[test]
fn vdis_qemu_img_makes_convert_to_its_own_raw() {
    let dir = scratch("vdi-from-qemu");
    let src = source(&dir);
    for opts in ["static=off", "static=on"] {
        let img = dir.join(format!("{opts}.vdi").replace('=', "-"));
        qemu_make(&src, "vdi", opts, &img);
        let theirs = dir.join("theirs.raw");
        let ours = dir.join("ours.raw");
        let _ = std::fs::remove_file(&ours);
        qemu_raw(&img, "vdi", &theirs);
        ok(imgconv().arg(&img).arg(&ours));
        assert_eq!(md5sum(&ours), md5sum(&theirs), "{opts}");
    }
}

#[test]
fn malformed_vdis_fail_clearly_without_output() {
    let dir = scratch("vdi-malformed");
    let good = std::fs::read(fixture(&dir, "virtualbox72-dynamic.vdi")).expect("read");
    let bmap = le32(&good, 0x154) as usize;
    let patch = |at: usize, v: u32| {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("bad signature", patch(0x40, 0xDEAD_BEEF), 8),
        ("version 1.2", patch(0x44, 0x0001_0002), 9),
        ("block size 2 MiB", patch(0x178, 2 << 20), 8),
        ("block size not a power of two", patch(0x178, 3 << 19), 8),
        ("more allocated than blocks", patch(0x184, 4), 8),
        ("index beyond the allocated count", patch(bmap, 7), 8),
        ("two entries share a block", patch(bmap + 8, 0), 8),
        ("truncated data", good[..good.len() - 300_000].to_vec(), 8),
        (
            "parent UUID",
            {
                let mut b = good.clone();
                b[0x1b8] = 1;
                b
            },
            9,
        ),
    ];
    for (what, bytes, code) in cases {
        let img = dir.join("bad.vdi");
        std::fs::write(&img, &bytes).expect("write");
        let out = dir.join("out.raw");
        fails_with(imgconv().args(["-f", "vdi"]).arg(&img).arg(&out), code);
        assert!(!out.exists(), "{what}: output left behind");
    }
}
