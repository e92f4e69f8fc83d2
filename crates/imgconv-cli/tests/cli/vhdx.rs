//! VHDX input: images qemu-img makes read to qemu-img's own RAW; malformed ones are refused.

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
        let bad = dir.join(format!("{name}.vhdx"));
        std::fs::write(&bad, bytes).expect("write");
        let out = imgconv()
            .args(["convert", "-f", "vhdx"])
            .arg(&bad)
            .arg(dir.join(format!("{name}.raw")))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(8), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            !dir.join(format!("{name}.raw")).exists(),
            "{name}: no partial output"
        );
    }
}
