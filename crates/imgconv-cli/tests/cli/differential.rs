//! Findings of the differential campaign against qemu-img (`scripts/differential.py`,
//! FUZZING.md): each case where imgconv read bytes qemu-img refused, or read different bytes,
//! and imgconv was wrong, rebuilt here from a fresh image.

use std::path::{Path, PathBuf};

use crate::*;

/// A small disk with data in its first clusters.
fn disk(dir: &Path) -> PathBuf {
    Image::new(dir.join("d.raw"), 1 << 20)
        .data(0, 200_000)
        .done()
}

fn qemu_refuses(img: &Path, format: &str, dir: &Path) -> String {
    let q = qemu_raw_output(img, format, &dir.join("qemu.raw"));
    assert!(!q.status.success(), "qemu-img read {}", img.display());
    String::from_utf8_lossy(&q.stderr).into_owned()
}

/// Case qcow2 "l2[1] 0x8000000000013000->0x8000000000013001" on a `compat=0.10` image: bit 0
/// of an L2 entry is the zero flag from version 3 on and reserved before. imgconv read the
/// cluster as data; qemu-img reports the entry as corruption. Now refused (exit 8) as well.
#[test]
fn qcow2_version_2_entry_with_the_zero_flag_is_refused_like_qemu() {
    let dir = scratch("diff-qcow2-v2-zero");
    let img = dir.join("v2.qcow2");
    qemu_make(&disk(&dir), "qcow2", "compat=0.10,cluster_size=4096", &img);
    let mut b = std::fs::read(&img).expect("read");
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    let l1 = be(&b, 40) as usize;
    let l2 = (be(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let entry = be(&b, l2 + 8);
    assert!(entry & 0x00ff_ffff_ffff_fe00 != 0, "cluster 1 holds data");
    b[l2 + 8..l2 + 16].copy_from_slice(&(entry | 1).to_be_bytes());
    std::fs::write(&img, &b).expect("write");
    let q = qemu_refuses(&img, "qcow2", &dir);
    assert!(
        q.contains("Zero cluster entry found in pre-v3 image"),
        "{q}"
    );
    let out = dir.join("out.raw");
    let err = fails_with(imgconv().arg(&img).arg(&out), 8);
    assert!(
        err.contains("zero flag is set in a version 2 image"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Case vmdk "header.compressAlgorithm 0x0->0x1" on a monolithicSparse image: qemu (and
/// VirtualBox) take the algorithm field alone to mean compressed grains, imgconv took the
/// flag alone and read the grains plain. The two disagreeing is now refused (exit 8).
#[test]
fn vmdk_compression_algorithm_without_the_flag_is_refused() {
    let dir = scratch("diff-vmdk-algorithm");
    let img = dir.join("s.vmdk");
    qemu_make(&disk(&dir), "vmdk", "subformat=monolithicSparse", &img);
    let mut b = std::fs::read(&img).expect("read");
    b[77..79].copy_from_slice(&1u16.to_le_bytes());
    std::fs::write(&img, &b).expect("write");
    qemu_refuses(&img, "vmdk", &dir);
    let out = dir.join("out.raw");
    let err = fails_with(imgconv().arg(&img).arg(&out), 8);
    assert!(err.contains("without the compressed-grains flag"), "{err}");
    assert!(!out.exists());
}

/// A streamOptimized image whose headers lose the markers flag: qemu then reads each grain
/// as bare deflate data at the grain's offset (and fails on the marker); imgconv expected a
/// marker anyway. Such a layout is now refused as unsupported (exit 9), not guessed at.
#[test]
fn vmdk_compressed_grains_without_markers_are_refused() {
    let dir = scratch("diff-vmdk-markers");
    let img = dir.join("s.vmdk");
    ok(imgconv().arg(disk(&dir)).arg(&img));
    let mut b = std::fs::read(&img).expect("read");
    let footer = b.len() - 1024;
    for at in [0, footer] {
        assert_eq!(&b[at..at + 4], b"KDMV");
        let flags = u32::from_le_bytes(b[at + 8..at + 12].try_into().expect("4"));
        b[at + 8..at + 12].copy_from_slice(&(flags & !(1 << 17)).to_le_bytes());
    }
    std::fs::write(&img, &b).expect("write");
    let out = dir.join("out.raw");
    let err = fails_with(imgconv().arg(&img).arg(&out), 9);
    assert!(err.contains("without grain markers"), "{err}");
    assert!(!out.exists());
}
