//! Helpers: scratch folders, image builders, and the oracle tools.

#![allow(dead_code, missing_docs)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The binary under test.
pub fn imgconv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgconv"))
}

/// `imgconv` with the given keys as the only AWS settings of its environment: no session
/// token, profile, shared file, region or endpoint leaks in from the caller's.
pub fn imgconv_with_keys(access_key: &str, secret_key: &str) -> Command {
    let mut c = imgconv();
    c.env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent");
    for name in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ] {
        c.env_remove(name);
    }
    c
}

/// A fresh, empty folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    if dir.exists() {
        // An earlier failed run may have left the folder immutable.
        let _ = Command::new("chattr").arg("-i").arg(&dir).output();
        std::fs::remove_dir_all(&dir).expect("clean scratch folder");
    }
    std::fs::create_dir_all(&dir).expect("create scratch folder");
    dir
}

/// Run a tool that a test needs; a missing tool is a failure, never a skip.
pub fn tool(name: &str, args: &[&str]) -> Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is required by this test and could not be run ({e}); the README's test command installs it")
    })
}

/// Run a command and require success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first word of a `*sum` tool's output for `path`.
fn sum(tool_name: &str, path: &Path) -> String {
    let out = tool(tool_name, &[path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{tool_name} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// MD5 as `md5sum` computes it.
pub fn md5sum(path: &Path) -> String {
    sum("md5sum", path)
}

/// SHA-256 as `sha256sum` computes it.
pub fn sha256sum(path: &Path) -> String {
    sum("sha256sum", path)
}

/// Deterministic pseudo-random bytes (xorshift64*), never all zero.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    if let Some(b) = v.first_mut() {
        *b |= 1;
    }
    v
}

/// Builds a sparse image: a size, then pieces of data (or explicit zeros) at offsets.
pub struct Image {
    file: File,
    pub path: PathBuf,
}

impl Image {
    pub fn new(path: PathBuf, size: u64) -> Image {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("create image");
        file.set_len(size).expect("size image");
        Image { file, path }
    }

    /// Random data at `offset`.
    pub fn data(self, offset: u64, len: usize) -> Image {
        self.file
            .write_all_at(&noise(offset ^ 0x9e37, len), offset)
            .expect("write data");
        self
    }

    /// Explicitly written (allocated) zeros at `offset`.
    pub fn zeros(self, offset: u64, len: usize) -> Image {
        self.file
            .write_all_at(&vec![0u8; len], offset)
            .expect("write zeros");
        self
    }

    pub fn done(self) -> PathBuf {
        self.file.sync_all().expect("sync image");
        self.path
    }
}

/// `qemu-img compare` exit code.
pub fn qemu_compare(a: &Path, b: &Path) -> i32 {
    qemu_compare_output(a, b).status.code().expect("exit code")
}

/// `qemu-img compare -f raw -F raw A B`, all of its output.
pub fn qemu_compare_output(a: &Path, b: &Path) -> Output {
    qemu_compare_output_as(a, "raw", b, "raw")
}

/// `qemu-img compare` exit code, with explicit formats.
pub fn qemu_compare_formats(a: &Path, fa: &str, b: &Path, fb: &str) -> i32 {
    qemu_compare_output_as(a, fa, b, fb)
        .status
        .code()
        .expect("exit code")
}

/// `qemu-img compare -f FA -F FB A B`, all of its output.
pub fn qemu_compare_output_as(a: &Path, fa: &str, b: &Path, fb: &str) -> Output {
    tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            fa,
            "-F",
            fb,
            a.to_str().expect("utf-8"),
            b.to_str().expect("utf-8"),
        ],
    )
}

/// `qemu-img info --output=json` parsed.
pub fn qemu_info(path: &Path, format: &str) -> serde_json::Value {
    let out = tool(
        "qemu-img",
        &[
            "info",
            "--output=json",
            "-f",
            format,
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "qemu-img info failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

/// `qemu-img map --output=json` parsed (RAW): the list of extents.
pub fn qemu_map(path: &Path) -> Vec<serde_json::Value> {
    let out = tool(
        "qemu-img",
        &[
            "map",
            "--output=json",
            "-f",
            "raw",
            path.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "qemu-img map failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("qemu-img map JSON")
}

/// Whether `[start, start + len)` is reported as not data (a hole) by `qemu-img map`.
pub fn is_hole(map: &[serde_json::Value], start: u64, len: u64) -> bool {
    map.iter().any(|e| {
        let s = e["start"].as_u64().unwrap_or(u64::MAX);
        let l = e["length"].as_u64().unwrap_or(0);
        e["data"] == serde_json::Value::Bool(false) && s <= start && start + len <= s + l
    })
}

/// The names in a folder, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Run `cmd`, require exit `code` and one clear error line; returns that line.
pub fn fails_with(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {out:?}");
    one_line_error(&out)
}

/// The stderr of a failed run, checked to be one line and no panic.
pub fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.starts_with("imgconv: "),
        "unexpected error text: {err:?}"
    );
    err
}

/// Decompress `testdata/<sub>/<name>.gz` into `dir`.
pub fn fixture_in(dir: &Path, sub: &str, name: &str) -> PathBuf {
    let gz = format!(
        "{}/../../testdata/{sub}/{name}.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = tool("gzip", &["-dc", &gz]);
    assert!(out.status.success(), "gzip failed: {out:?}");
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).expect("write fixture");
    path
}

/// A path as a `&str` for tool arguments.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The writer tests' source: holes, allocated zeros, random and compressible data, and a size
/// (9 MiB + 3 KiB) that is not a multiple of any cluster, grain or block size.
pub fn mixed_source(dir: &Path) -> PathBuf {
    let img = Image::new(dir.join("src.raw"), 9 * MIB + 3072)
        .data(0, 100_000)
        .zeros(MIB, 2 * MIB as usize)
        .data(4 * MIB + 512, 70_000)
        .data(9 * MIB + 1024, 2048);
    let text = b"compressible text, line after line. ".repeat(40_000);
    img.file.write_all_at(&text, 6 * MIB).expect("write text");
    img.done()
}

/// Size and MD5 of the virtual disk as a libyal Python reader reads it: `module` (`pyvmdk`,
/// `pyvhdi`, ...) and `open` (the statements that open `sys.argv[1]` as `f`).
pub fn libyal_md5(module: &str, open: &str, img: &Path) -> (u64, String) {
    let script = format!(
        "import sys, hashlib, {module}\n{open}\n\
         n = f.get_media_size(); h = hashlib.md5(); o = 0\n\
         while o < n:\n    b = f.read_buffer_at_offset(min(1 << 20, n - o), o); h.update(b); o += len(b)\n\
         print(n, h.hexdigest())\n"
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script, path_str(img)])
        .output()
        .unwrap_or_else(|e| panic!("python3 with {module} (libyal) is required: {e}"));
    assert!(out.status.success(), "{module} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let size = words.next().and_then(|w| w.parse().ok()).expect("size");
    (size, words.next().expect("md5").to_string())
}

/// qemu-img's own RAW of `img` (read as `format`) at `out`.
pub fn qemu_raw(img: &Path, format: &str, out: &Path) {
    let q = qemu_raw_output(img, format, out);
    assert!(q.status.success(), "qemu-img convert failed: {q:?}");
}

/// `qemu-img convert -f format -O raw img out`, whatever its outcome.
pub fn qemu_raw_output(img: &Path, format: &str, out: &Path) -> Output {
    let _ = std::fs::remove_file(out);
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            format,
            "-O",
            "raw",
            path_str(img),
            path_str(out),
        ],
    )
}

/// An image of `src` made by qemu-img as `format` with `-o opts`.
pub fn qemu_make(src: &Path, format: &str, opts: &str, out: &Path) {
    let made = tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            format,
            "-o",
            opts,
            path_str(src),
            path_str(out),
        ],
    );
    assert!(made.status.success(), "qemu-img {format} {opts}: {made:?}");
}

/// Write `bytes` as `dir/input`, run `imgconv convert ARGS input dir/output` and require
/// that it fails as invalid input (exit 8) with an error containing `want`, leaving no output.
pub fn assert_refused(
    dir: &Path,
    input: &str,
    bytes: &[u8],
    args: &[&str],
    output: &str,
    want: &str,
) {
    let bad = dir.join(input);
    std::fs::write(&bad, bytes).expect("write");
    let out = imgconv()
        .arg("convert")
        .args(args)
        .arg(&bad)
        .arg(dir.join(output))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(8), "{input}: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{input}: {err}");
    assert!(!dir.join(output).exists(), "{input}: no partial output");
}
