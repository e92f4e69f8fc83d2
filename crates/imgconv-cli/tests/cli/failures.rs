//! A conversion that is killed or fails half way leaves nothing at the destination.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::*;

/// An 8 GiB sparse image with data spread through it: hashing it takes seconds, long enough
/// to interrupt the conversion half way.
fn slow_input(dir: &Path) -> PathBuf {
    let mut img = Image::new(dir.join("in.raw"), 8 * GIB);
    for i in 0..16u64 {
        img = img.data(i * 512 * MIB, MIB as usize);
    }
    img.done()
}

/// Start a conversion with JSON progress and return once it has done some but not all work.
fn start_half_way(input: &Path, output: &Path) -> Child {
    let mut child = imgconv()
        .args(["convert", "--progress=json", "--digest", "md5,sha256"])
        .arg(input)
        .arg(output)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("the conversion ended before making progress")
            .expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        let done = v["done"].as_u64().expect("done");
        assert!(
            done < v["total"].as_u64().expect("total"),
            "finished too fast"
        );
        if done > 0 {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn sigint_and_sigterm_half_way_exit_130_and_leave_nothing() {
    for sig in ["-INT", "-TERM"] {
        let dir = scratch(&format!("kill{}", sig.to_lowercase()));
        let input = slow_input(&dir);
        let mut child = start_half_way(&input, &dir.join("out.raw"));
        signal(&child, sig);
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(130), "{sig}");
        assert_eq!(entries(&dir), vec!["in.raw".to_string()], "{sig}");
    }
}

#[test]
fn sigkill_half_way_leaves_nothing_either() {
    // The output is an unnamed O_TMPFILE inode until it is complete: even a process killed
    // with no chance to clean up leaves no file behind.
    let dir = scratch("kill-9");
    let input = slow_input(&dir);
    let mut child = start_half_way(&input, &dir.join("out.raw"));
    signal(&child, "-KILL");
    child.wait().expect("wait");
    assert_eq!(entries(&dir), vec!["in.raw".to_string()]);
}

#[test]
fn an_unwritable_folder_fails_cleanly() {
    let dir = scratch("unwritable");
    let input = Image::new(dir.join("in.raw"), MIB).data(0, 4096).done();
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    // root ignores permission bits, so make the folder immutable instead.
    let is_root = String::from_utf8_lossy(&tool("id", &["-u"]).stdout).trim() == "0";
    if is_root {
        let out = tool("chattr", &["+i", locked.to_str().expect("utf-8")]);
        assert!(out.status.success(), "chattr +i failed: {out:?}");
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    let out = imgconv()
        .arg(&input)
        .arg(locked.join("out.raw"))
        .output()
        .expect("run");
    if is_root {
        tool("chattr", &["-i", locked.to_str().expect("utf-8")]);
    }
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    one_line_error(&out);
    assert!(entries(&locked).is_empty());
}

#[test]
fn a_full_disk_exits_7_and_leaves_nothing() {
    // A file-size limit stands in for a full disk: the write fails with EFBIG as it would with
    // ENOSPC. SIGXFSZ is ignored so that the process sees the error instead of dying.
    let dir = scratch("disk-full");
    let input = Image::new(dir.join("in.raw"), 32 * MIB)
        .data(0, 32 * MIB as usize)
        .done();
    let script = format!(
        "trap '' XFSZ; ulimit -f 4096; exec '{}' '{}' '{}'",
        env!("CARGO_BIN_EXE_imgconv"),
        input.display(),
        dir.join("out.raw").display()
    );
    let err = fails_with(Command::new("bash").args(["-c", &script]), 7);
    assert!(err.contains("cannot write the output"), "{err}");
    assert_eq!(entries(&dir), vec!["in.raw".to_string()]);
}

#[test]
fn an_input_truncated_during_conversion_fails_and_leaves_nothing() {
    let dir = scratch("vanish");
    let input = slow_input(&dir);
    let mut child = start_half_way(&input, &dir.join("out.raw"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .expect("open input")
        .set_len(MIB)
        .expect("truncate");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(6), "a shrunken input must not convert");
    assert_eq!(entries(&dir), vec!["in.raw".to_string()]);
}
