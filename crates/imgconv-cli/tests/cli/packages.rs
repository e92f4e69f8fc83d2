//! Image packages: OVA (OVF, manifest, streamOptimized VMDK in a tar) and Compute Engine's
//! `disk.raw` in a GNU `tar.gz`, written by imgconv and checked with tar, sha256sum,
//! qemu-img and Python's XML parser; read from packages GNU tar and VirtualBox made.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::*;

/// `tar ARGS` in `dir`, required to succeed; its stdout.
fn tar_in(dir: &Path, args: &[&str]) -> String {
    ok(Command::new("tar").current_dir(dir).args(args))
}

/// The value of `attr="..."` on the first element that has it.
fn attr(xml: &str, attr: &str) -> String {
    let key = format!("{attr}=\"");
    let at = xml
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} in the OVF"))
        + key.len();
    xml[at..at + xml[at..].find('"').expect("closing quote")].to_string()
}

/// Bytes of the grains (64 KiB) of `src` that hold a non-zero byte.
fn populated(src: &Path) -> u64 {
    let b = std::fs::read(src).expect("src");
    b.chunks(65536)
        .filter(|g| g.iter().any(|&x| x != 0))
        .count() as u64
        * 65536
}

/// Everything the issue asks of an OVA written for `src`, extracted into `dir`: the members
/// in order, the manifest's digests, the OVF's values, the disk's check and content.
fn check_ova(ova: &Path, src: &Path, name: &str, dir: &Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let list = tar_in(dir, &["-tf", path_str(ova)]);
    let names: Vec<&str> = list.lines().collect();
    let (ovf, mf, vmdk) = (
        format!("{name}.ovf"),
        format!("{name}.mf"),
        format!("{name}-disk1.vmdk"),
    );
    assert_eq!(
        names,
        [ovf.as_str(), mf.as_str(), vmdk.as_str()],
        "members in order"
    );
    tar_in(dir, &["-xf", path_str(ova)]);
    // The manifest holds each other member's SHA-256, as sha256sum computes it.
    let manifest = std::fs::read_to_string(dir.join(&mf)).expect("manifest");
    let want = format!(
        "SHA256({ovf})= {}\nSHA256({vmdk})= {}\n",
        sha256sum(&dir.join(&ovf)),
        sha256sum(&dir.join(&vmdk))
    );
    assert_eq!(manifest, want);
    // The OVF is well-formed XML (Python's parser) and its values match the files.
    let parsed = tool(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); \
             print(d.documentElement.tagName)",
            path_str(&dir.join(&ovf)),
        ],
    );
    assert!(parsed.status.success(), "{parsed:?}");
    assert_eq!(String::from_utf8_lossy(&parsed.stdout).trim(), "Envelope");
    let xml = std::fs::read_to_string(dir.join(&ovf)).expect("ovf");
    let size = std::fs::metadata(src).expect("src").len();
    assert_eq!(attr(&xml, "ovf:href"), vmdk);
    assert_eq!(
        attr(&xml, "ovf:size"),
        std::fs::metadata(dir.join(&vmdk))
            .expect("vmdk")
            .len()
            .to_string()
    );
    assert_eq!(
        attr(&xml, "ovf:capacity"),
        size.next_multiple_of(512).to_string()
    );
    assert_eq!(attr(&xml, "ovf:capacityAllocationUnits"), "byte");
    assert_eq!(attr(&xml, "ovf:populatedSize"), populated(src).to_string());
    assert_eq!(
        attr(&xml, "ovf:format"),
        "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
    );
    assert!(xml.contains("<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>"));
    // The disk: qemu-img finds it clean, streamOptimized, and equal to the source.
    let check = tool(
        "qemu-img",
        &["check", "-f", "vmdk", path_str(&dir.join(&vmdk))],
    );
    assert!(check.status.success(), "{check:?}");
    assert_eq!(
        qemu_info(&dir.join(&vmdk), "vmdk")["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    assert_eq!(
        qemu_compare_formats(src, "raw", &dir.join(&vmdk), "vmdk"),
        0
    );
}

#[test]
fn an_ova_holds_the_ovf_then_the_manifest_then_the_disk_all_consistent() {
    let dir = scratch("ova-file");
    let src = mixed_source(&dir);
    let ova = dir.join("appliance.ova");
    ok(imgconv().arg(&src).arg(&ova));
    check_ova(&ova, &src, "appliance", &dir.join("x"));
    // imgconv reads it back: the disk equals the source, the manifest verified.
    let back = dir.join("back.raw");
    ok(imgconv().arg(&ova).arg(&back));
    assert_eq!(md5sum(&back), md5sum(&src));
    let info = ok(imgconv().args(["info"]).arg(&ova));
    assert!(info.contains("file format: ova"), "{info}");
    assert!(info.contains("manifest: verified (2 members)"), "{info}");
    assert!(info.contains("disk format: vmdk"), "{info}");
    // Options: the VM's name and hardware.
    let named = dir.join("named.ova");
    ok(imgconv()
        .args([
            "convert",
            "-O",
            "ova",
            "-o",
            "name=web-1,cpus=4,memory=2048",
        ])
        .arg(&src)
        .arg(&named));
    check_ova(&named, &src, "web-1", &dir.join("y"));
    let xml = std::fs::read_to_string(dir.join("y/web-1.ovf")).expect("ovf");
    assert!(
        xml.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"),
        "{xml}"
    );
    assert!(
        xml.contains("<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>"),
        "{xml}"
    );
}

#[test]
fn an_ova_streamed_to_stdout_is_the_same_package() {
    let dir = scratch("ova-stdout");
    let src = mixed_source(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_imgconv"))
        .args(["convert", "-O", "ova", "-o", "name=streamed"])
        .arg(&src)
        .arg("-")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let ova = dir.join("streamed.ova");
    std::fs::write(&ova, &out.stdout).expect("write");
    check_ova(&ova, &src, "streamed", &dir.join("x"));
    // With --deterministic, the file and the stream are byte for byte the same.
    let file = dir.join("streamed-file.ova");
    ok(imgconv()
        .args([
            "convert",
            "--deterministic",
            "-O",
            "ova",
            "-o",
            "name=streamed",
        ])
        .arg(&src)
        .arg(&file));
    let stream = Command::new(env!("CARGO_BIN_EXE_imgconv"))
        .args([
            "convert",
            "--deterministic",
            "-O",
            "ova",
            "-o",
            "name=streamed",
        ])
        .arg(&src)
        .arg("-")
        .output()
        .expect("run");
    assert!(stream.status.success());
    assert!(
        std::fs::read(&file).expect("file") == stream.stdout,
        "file and stream differ"
    );
}

#[test]
fn an_ova_virtualbox_exported_reads_to_its_disk() {
    // VirtualBox 4.x's export of an 8 GiB empty disk (OVF 2.0, SHA-256 manifest), see
    // testdata/README.md.
    let dir = scratch("ova-virtualbox");
    let ova = fixture_in(&dir, "ova", "virtualbox4x-ubuntu.2.0.ova");
    let info = ok(imgconv().args(["info", "--output", "json"]).arg(&ova));
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["format"], "ova");
    assert_eq!(info["virtual-size"], 8589934592u64);
    let out = dir.join("disk.qcow2");
    ok(imgconv().arg(&ova).arg(&out));
    tar_in(&dir, &["-xf", path_str(&ova)]);
    assert_eq!(
        qemu_compare_formats(&out, "qcow2", &dir.join("ubuntu.2.0-disk1.vmdk"), "vmdk"),
        0
    );
    // All zeros, as the shared manifest says: nothing stored.
    let map = tool(
        "qemu-img",
        &["map", "-f", "qcow2", "--output=json", path_str(&out)],
    );
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).expect("map JSON");
    let entries = map.as_array().expect("entries");
    assert!(entries.iter().all(|e| e["data"] == false), "{map}");
}

/// An OVA as ovftool lays one out, built with GNU tar and sha1sum: two disks (a VMDK qemu-img
/// made and a second one), a SHA-1 manifest.
fn two_disk_ova(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let src = mixed_source(dir);
    let other = dir.join("other.raw");
    std::fs::write(&other, noise(42, 3 << 20)).expect("write");
    qemu_make(
        &src,
        "vmdk",
        "subformat=streamOptimized",
        &dir.join("two-disk1.vmdk"),
    );
    qemu_make(
        &other,
        "vmdk",
        "subformat=streamOptimized",
        &dir.join("two-disk2.vmdk"),
    );
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
    <File ovf:href="two-disk1.vmdk" ovf:id="file1"/>
    <File ovf:href="two-disk2.vmdk" ovf:id="file2"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{}" ovf:capacityAllocationUnits="byte * 2^10" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="3" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="two"><Info>A virtual machine</Info></VirtualSystem>
</Envelope>
"#,
        std::fs::metadata(&src).expect("src").len().div_ceil(1024)
    );
    std::fs::write(dir.join("two.ovf"), ovf).expect("ovf");
    let sha1 = |f: &str| sum_of("sha1sum", &dir.join(f));
    let mf = format!(
        "SHA1(two.ovf)= {}\nSHA1(two-disk1.vmdk)= {}\nSHA1(two-disk2.vmdk)= {}\n",
        sha1("two.ovf"),
        sha1("two-disk1.vmdk"),
        sha1("two-disk2.vmdk")
    );
    std::fs::write(dir.join("two.mf"), mf).expect("mf");
    tar_in(
        dir,
        &[
            "--format=ustar",
            "-cf",
            "two.ova",
            "two.ovf",
            "two.mf",
            "two-disk1.vmdk",
            "two-disk2.vmdk",
        ],
    );
    (dir.join("two.ova"), src, other)
}

fn sum_of(tool_name: &str, path: &Path) -> String {
    let out = tool(tool_name, &[path_str(path)]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

#[test]
fn an_ovftool_style_ova_with_two_disks_reads_each_with_disk_n() {
    let dir = scratch("ova-two-disks");
    let (ova, src, other) = two_disk_ova(&dir);
    // The capacity in KiB rounds the source up: the VMDK says whole sectors.
    let first = dir.join("first.raw");
    ok(imgconv().arg(&ova).arg(&first));
    assert_eq!(md5sum(&first), md5sum(&src));
    let second = dir.join("second.raw");
    ok(imgconv()
        .args(["convert", "--disk", "2"])
        .arg(&ova)
        .arg(&second));
    assert_eq!(md5sum(&second), md5sum(&other));
    let three = imgconv()
        .args(["convert", "--disk", "3"])
        .arg(&ova)
        .arg(dir.join("third.raw"))
        .output()
        .expect("run");
    assert_eq!(three.status.code(), Some(2), "{three:?}");
    assert!(String::from_utf8_lossy(&three.stderr).contains("has 2 disk(s)"));
    assert!(!dir.join("third.raw").exists());
}

#[test]
fn an_ova_whose_manifest_disagrees_or_whose_disk_is_missing_is_refused() {
    let dir = scratch("ova-bad");
    let (ova, _, _) = two_disk_ova(&dir);
    let good = std::fs::read(&ova).expect("read");
    // One byte of the second disk's data changed: its SHA-1 no longer matches.
    let at = good.len() - 10240 - 4096;
    let mut changed = good.clone();
    changed[at] ^= 0x55;
    // The OVF names a file the archive lacks.
    let missing = {
        let d = dir.join("m");
        std::fs::create_dir_all(&d).expect("dir");
        let text = std::fs::read_to_string(dir.join("two.ovf")).expect("ovf");
        std::fs::write(
            d.join("two.ovf"),
            text.replace("two-disk1.vmdk", "gone.vmdk"),
        )
        .expect("ovf");
        std::fs::copy(dir.join("two-disk2.vmdk"), d.join("two-disk2.vmdk")).expect("copy");
        tar_in(
            &d,
            &[
                "--format=ustar",
                "-cf",
                "m.ova",
                "two.ovf",
                "two-disk2.vmdk",
            ],
        );
        std::fs::read(d.join("m.ova")).expect("read")
    };
    for (name, bytes, want) in [
        ("digest", changed, "the manifest says"),
        ("missing", missing, "is not in the archive"),
        ("truncated", good[..good.len() / 2].to_vec(), "past the end"),
    ] {
        assert_refused(
            &dir,
            &format!("{name}.ova"),
            &bytes,
            &[],
            &format!("{name}.raw"),
            want,
        );
    }
}

/// The first 512 bytes of the tar inside a `.tar.gz`.
fn tar_header(tgz: &Path) -> Vec<u8> {
    let out = tool("gzip", &["-dc", path_str(tgz)]);
    assert!(out.status.success(), "{out:?}");
    out.stdout[..512].to_vec()
}

#[test]
fn a_gce_package_holds_exactly_disk_raw_in_gnu_format() {
    let dir = scratch("gce-write");
    let src = mixed_source(&dir);
    let size = std::fs::metadata(&src).expect("src").len();
    // Exact size kept: extracted, it is the source.
    let exact = dir.join("exact.tar.gz");
    ok(imgconv()
        .args(["convert", "-O", "gce", "-o", "round_to_gib=off"])
        .arg(&src)
        .arg(&exact));
    assert_eq!(tar_in(&dir, &["-tzf", path_str(&exact)]), "disk.raw\n");
    let h = tar_header(&exact);
    assert_eq!(&h[257..265], b"ustar  \0", "GNU magic");
    let x = dir.join("x");
    std::fs::create_dir_all(&x).expect("dir");
    tar_in(&x, &["-xzf", path_str(&exact)]);
    let cmp = tool("cmp", &[path_str(&src), path_str(&x.join("disk.raw"))]);
    assert!(cmp.status.success(), "{cmp:?}");
    // gzip itself accepts the stream (several members).
    assert!(tool("gzip", &["-t", path_str(&exact)]).status.success());
    // By default (named .tar.gz) the disk is rounded up to a whole GiB, the tail zeros.
    let rounded = dir.join("image.tar.gz");
    let out = imgconv().arg(&src).arg(&rounded).output().expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rounded up"));
    let y = dir.join("y");
    std::fs::create_dir_all(&y).expect("dir");
    tar_in(&y, &["-xzf", path_str(&rounded)]);
    let disk = y.join("disk.raw");
    assert_eq!(std::fs::metadata(&disk).expect("disk").len(), 1 << 30);
    let cmp = tool(
        "cmp",
        &["-n", &size.to_string(), path_str(&src), path_str(&disk)],
    );
    assert!(cmp.status.success(), "{cmp:?}");
    let tail = tool(
        "cmp",
        &[
            "-i",
            &format!("{size}:0"),
            "-n",
            &((1u64 << 30) - size).to_string(),
            path_str(&disk),
            "/dev/zero",
        ],
    );
    assert!(tail.status.success(), "{tail:?}");
    // And imgconv reads both packages back.
    let back = dir.join("back.raw");
    ok(imgconv().arg(&exact).arg(&back));
    assert_eq!(md5sum(&back), md5sum(&src));
}

#[test]
fn a_tar_gz_gnu_tar_made_reads_to_its_disk_sparse_or_not() {
    let dir = scratch("gce-read");
    let src = mixed_source(&dir);
    let d = dir.join("d");
    std::fs::create_dir_all(&d).expect("dir");
    let copy = tool(
        "cp",
        &[
            "--sparse=always",
            path_str(&src),
            path_str(&d.join("disk.raw")),
        ],
    );
    assert!(copy.status.success());
    for (name, args) in [
        ("oldgnu-sparse", &["--format=oldgnu", "-S"][..]),
        ("gnu", &["--format=gnu"][..]),
        ("gnu-sparse", &["--format=gnu", "-S"][..]),
        ("posix-sparse", &["--format=posix", "-S"][..]),
    ] {
        let tgz = dir.join(format!("{name}.tar.gz"));
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-czf", path_str(&tgz), "disk.raw"]);
        tar_in(&d, &a);
        let out = dir.join(format!("{name}.raw"));
        ok(imgconv().arg(&tgz).arg(&out));
        assert_eq!(md5sum(&out), md5sum(&src), "{name}");
        let info = ok(imgconv().args(["info"]).arg(&tgz));
        assert!(info.contains("file format: gce"), "{name}: {info}");
        let sparse = args.contains(&"-S");
        assert!(
            info.contains(&format!("sparse member: {sparse}")),
            "{name}: {info}"
        );
        if sparse {
            // The holes are known without decoding: the map reports them.
            let map = ok(imgconv().args(["map", "--output", "json"]).arg(&tgz));
            assert!(map.contains("\"data\":false"), "{name}: {map}");
        }
    }
}

#[test]
fn a_broken_tar_gz_is_refused_and_leaves_no_output() {
    let dir = scratch("gce-bad");
    let src = mixed_source(&dir);
    let good_path = dir.join("good.tar.gz");
    ok(imgconv()
        .args(["convert", "-O", "gce", "-o", "round_to_gib=off"])
        .arg(&src)
        .arg(&good_path));
    let good = std::fs::read(&good_path).expect("read");
    let other = {
        let d = dir.join("o");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("notes.txt"), b"hello").expect("write");
        tar_in(&d, &["-czf", "o.tar.gz", "notes.txt"]);
        std::fs::read(d.join("o.tar.gz")).expect("read")
    };
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0xa5;
    }
    for (name, bytes, want) in [
        ("truncated", good[..good.len() / 3].to_vec(), "truncated"),
        ("corrupt", corrupt, "corrupt"),
        ("no-disk", other, "no disk.raw"),
    ] {
        assert_refused(
            &dir,
            &format!("{name}.tar.gz"),
            &bytes,
            &["-O", "qcow2"],
            &format!("{name}.qcow2"),
            want,
        );
    }
}

#[test]
fn a_tar_gz_claiming_a_huge_disk_is_refused_as_a_limit() {
    // A GNU tar header whose base-256 size says 2^60 bytes, and nothing after it: refused
    // before anything is sized or read.
    let dir = scratch("gce-huge");
    let mut h = [0u8; 512];
    h[..8].copy_from_slice(b"disk.raw");
    h[100..107].copy_from_slice(b"0000644");
    h[124] = 0x80;
    h[128..136].copy_from_slice(&(1u64 << 60).to_be_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let tar = dir.join("huge.tar");
    std::fs::write(&tar, h).expect("write");
    assert!(tool("gzip", &["-f", path_str(&tar)]).status.success());
    let out = imgconv()
        .args(["info"])
        .arg(dir.join("huge.tar.gz"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("64 TiB"),
        "{out:?}"
    );
}

#[test]
fn measure_bounds_packages_and_deterministic_packages_repeat() {
    let dir = scratch("packages-measure");
    let src = mixed_source(&dir);
    for (name, format, args) in [
        ("m.ova", "ova", &[][..]),
        ("m.tar.gz", "gce", &["-o", "round_to_gib=off"][..]),
        ("r.tar.gz", "gce", &[][..]),
    ] {
        let out = dir.join(name);
        let _ = std::fs::remove_file(&out);
        ok(imgconv()
            .args(["convert", "--deterministic", "-O", format])
            .args(args)
            .arg(&src)
            .arg(&out));
        let m: serde_json::Value = serde_json::from_str(&ok(imgconv()
            .args(["measure", "--output", "json", "-O", format])
            .args(args)
            .arg(&src)))
        .expect("measure JSON");
        let written = std::fs::metadata(&out).expect("out").len();
        assert_eq!(m["exact"], false, "{name}: {m}");
        assert!(
            m["required"].as_u64().expect("required") >= written,
            "{name}: {m} < {written}"
        );
        // The same input, options, name and epoch: the same bytes.
        let again_dir = dir.join("again");
        std::fs::create_dir_all(&again_dir).expect("dir");
        let again = again_dir.join(name);
        let _ = std::fs::remove_file(&again);
        ok(imgconv()
            .args(["convert", "--deterministic", "-O", format])
            .args(args)
            .arg(&src)
            .arg(&again));
        assert_eq!(sha256sum(&out), sha256sum(&again), "{name}");
    }
}
