//! Bad invocations: one clear line on stderr, a distinct documented exit code, no panic.

use crate::*;

#[test]
fn a_nonexistent_input_exits_3() {
    let dir = scratch("err-missing");
    assert!(fails_with(
        imgconv().arg(dir.join("nope.raw")).arg(dir.join("out.raw")),
        3
    )
    .contains("does not exist"));
    assert!(entries(&dir).is_empty());
}

#[test]
fn a_directory_as_input_exits_4() {
    let dir = scratch("err-dir");
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    assert!(
        fails_with(imgconv().arg(dir.join("sub")).arg(dir.join("out.raw")), 4)
            .contains("directory")
    );
    assert_eq!(entries(&dir), vec!["sub".to_string()]);
}

#[test]
fn an_unknown_output_extension_exits_2_and_names_the_fix() {
    let dir = scratch("err-ext");
    let input = Image::new(dir.join("in.raw"), MIB).done();
    assert!(fails_with(imgconv().arg(&input).arg(dir.join("out.xyz")), 2).contains("-O FMT"));
    assert_eq!(entries(&dir), vec!["in.raw".to_string()]);
}

#[test]
fn an_existing_output_exits_5_unless_forced() {
    let dir = scratch("err-exists");
    let input = Image::new(dir.join("in.raw"), MIB).data(0, 512).done();
    let output = dir.join("out.raw");
    std::fs::write(&output, b"keep me").expect("write");
    assert!(fails_with(imgconv().arg(&input).arg(&output), 5).contains("--force"));
    assert_eq!(std::fs::read(&output).expect("read"), b"keep me");

    ok(imgconv().arg("--force").arg(&input).arg(&output));
    assert_eq!(md5sum(&input), md5sum(&output));
    assert_eq!(
        entries(&dir),
        vec!["in.raw".to_string(), "out.raw".to_string()]
    );
}

#[test]
fn bad_options_and_formats_exit_2() {
    let dir = scratch("err-args");
    let input = Image::new(dir.join("in.raw"), MIB).done();
    let output = dir.join("out.raw");
    for args in [
        &["-o", "colour=blue"][..],
        &["-o", "preallocation=maybe"],
        &["-O", "qed"],
        &["-f", "nonsense"],
        &["--digest", "sha1"],
        &["--threads", "0"],
    ] {
        fails_with(
            imgconv().arg("convert").args(args).arg(&input).arg(&output),
            2,
        );
    }
    assert_eq!(entries(&dir), vec!["in.raw".to_string()]);
}

#[test]
fn unsupported_features_exit_9() {
    let dir = scratch("err-unsupported");
    let input = Image::new(dir.join("in.raw"), MIB).done();
    fails_with(
        imgconv()
            .args(["convert", "-o", "subformat=twoGbMaxExtentSparse"])
            .arg(&input)
            .arg(dir.join("out.vmdk")),
        9,
    );
    assert_eq!(entries(&dir), vec!["in.raw".to_string()]);
}
