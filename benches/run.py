#!/usr/bin/env python3
"""imgconv benchmark runner: imgconv against the reference tools, same input, same run.

Generates a realistic RAW image (an ext4 file system filled from system folders with
`mke2fs -d`, holes where the file system is empty, and runs of allocated zeros written over
some of its free blocks), warms the page cache, then times each case several times and prints
a Markdown table: median wall time, MB/s of virtual size, and the ratio imgconv / reference.

    python3 benches/run.py                  # all cases on a 2 GiB image
    python3 benches/run.py --cases raw,digest --runs 5
    python3 benches/run.py --size 8G --cases memory

Ratios are the numbers to read: absolute times on a shared machine are noise.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "imgconv"
MiB = 1 << 20
GiB = 1 << 30

# Folders the file system is filled from, in this order, until the data target is reached.
SOURCES = ["/usr/share", "/usr/bin", "/usr/include", "/usr/lib", "/usr/libexec", "/usr/local"]


def parse_size(text):
    m = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if not m:
        raise SystemExit(f"bad size {text!r}")
    mult = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2)]
    return int(m.group(1)) * mult


sh_env = None


def sh(cmd, **kw):
    if sh_env is not None:
        kw.setdefault("env", sh_env)
    return subprocess.run(cmd, check=True, **kw)


def need(tool, package):
    if shutil.which(tool) is None:
        raise SystemExit(f"{tool} is missing: apt-get install {package}")


def stage_files(stage, limit):
    """Hard-link (or copy) regular files from SOURCES into `stage` until `limit` bytes."""
    total = 0
    for src in SOURCES:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path) or st.st_size == 0:
                    continue
                if total + st.st_size > limit:
                    continue
                dest = os.path.join(stage, os.path.relpath(path, "/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                try:
                    os.link(path, dest)
                except OSError:
                    try:
                        shutil.copyfile(path, dest)
                    except OSError:
                        continue
                total += st.st_size
                if total >= limit * 0.98:
                    return total
    return total


def free_ranges(image):
    """Free block ranges of the ext4 file system in `image`, as (first, last, block size)."""
    out = subprocess.run(["dumpe2fs", image], capture_output=True, text=True, check=True).stdout
    bs = int(re.search(r"Block size:\s+(\d+)", out).group(1))
    ranges = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Free blocks:"):
            for part in line[len("Free blocks:"):].split(","):
                part = part.strip()
                if not part:
                    continue
                a, _, b = part.partition("-")
                ranges.append((int(a), int(b or a)))
    return ranges, bs


def make_realistic(path, size, work):
    """The realistic image: about 55% file data, 15% allocated zeros, the rest holes."""
    need("mke2fs", "e2fsprogs")
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    data = stage_files(str(stage), int(size * 0.55))
    tmp = path.with_suffix(".tmp")
    if tmp.exists():
        tmp.unlink()
    sh(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "bench", "-E", "root_owner=0:0",
        "-d", str(stage), str(tmp), str(size // 1024) + "k"])
    shutil.rmtree(stage, ignore_errors=True)
    # Write zeros over the largest free ranges (as a guest that zeroes free space leaves them).
    ranges, bs = free_ranges(str(tmp))
    ranges.sort(key=lambda r: r[1] - r[0], reverse=True)
    want = int(size * 0.15)
    written = 0
    zeros = bytes(4 * MiB)
    with open(tmp, "r+b") as f:
        for first, last in ranges:
            if written >= want:
                break
            start = first * bs
            length = min((last - first + 1) * bs, want - written)
            f.seek(start)
            left = length
            while left > 0:
                n = min(left, len(zeros))
                f.write(zeros[:n])
                left -= n
            written += length
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    print(f"# generated {path.name}: {size / GiB:.1f} GiB virtual, {data / MiB:.0f} MiB of files, "
          f"{written / MiB:.0f} MiB of allocated zeros", file=sys.stderr)


def make_sparse(path, size):
    """A sparse image, 25% data: 4 MiB of data every 16 MiB, and data in the last sector."""
    with open(path, "wb") as f:
        f.truncate(size)
        block = os.urandom(4 * MiB)
        for off in range(0, size, 16 * MiB):
            f.seek(off)
            f.write(block[: min(len(block), size - off)])
        f.seek(size - 512)
        f.write(block[:512])


def warm(path):
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def rm(*paths):
    """Remove outputs and flush dirty pages, so no run pays for an earlier run's writeback."""
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    os.sync()


def timed(cmds, before=None, runs=3, keep_last=False):
    """Median wall time of running `cmds` (a list of commands, one after the other). `before`
    runs before each run, and after the last unless `keep_last` (to inspect its output)."""
    times = []
    for _ in range(runs):
        if before:
            before()
        t0 = time.perf_counter()
        for c in cmds:
            sh(c, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    if before and not keep_last:
        before()
    return statistics.median(times)


def timed_ab(a, b, before=None, runs=3):
    """Median wall times of `a` and `b` (lists of commands), run alternately so that a slow
    spell of the machine falls on both alike. `before` runs before each run and at the end."""
    times = ([], [])
    for r in range(runs):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for k in order:
            if before:
                before()
            t0 = time.perf_counter()
            for c in (a, b)[k]:
                sh(c, stdout=subprocess.DEVNULL)
            times[k].append(time.perf_counter() - t0)
    if before:
        before()
    if os.environ.get("BENCH_VERBOSE"):
        print("#     runs: " + " | ".join(" ".join(f"{x:.2f}" for x in v) for v in times),
              file=sys.stderr)
    timed_ab.mins = (min(times[0]), min(times[1]))
    return statistics.median(times[0]), statistics.median(times[1])


def cpu_secs(cmd):
    """User + system CPU seconds of one run of `cmd`."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=sh_env)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{cmd} failed")
    return ru.ru_utime + ru.ru_stime


def max_rss_kib(cmd):
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True,
                         check=True, env=sh_env).stderr
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out).group(1))


class Table:
    def __init__(self):
        self.rows = []

    def add(self, case, tool, secs, size, ref=None, note=""):
        mbps = size / secs / 1e6 if secs > 0 else float("inf")
        ratio = f"{secs / ref:.2f}x" if ref else ""
        self.rows.append((case, tool, f"{secs:.3f}", f"{mbps:.0f}", ratio, note))
        print(f"#   {case:32} {tool:44} {secs:8.3f} s {mbps:7.0f} MB/s {ratio}", file=sys.stderr)

    def markdown(self):
        head = "| case | command | median s | MB/s (virtual) | imgconv / reference | note |\n"
        head += "| --- | --- | ---: | ---: | ---: | --- |\n"
        return head + "".join(f"| {' | '.join(r)} |\n" for r in self.rows)


def case_raw(t, img, size, out, runs):
    clean = lambda: rm(out)
    q = timed([["qemu-img", "convert", "-O", "raw", img, out]], clean, runs)
    t.add("RAW -> RAW", "qemu-img convert -O raw", q, size)
    n = timed([[str(BIN), "--no-sync", img, out]], clean, runs)
    t.add("RAW -> RAW", "imgconv --no-sync IN OUT", n, size, q, "neither syncs")
    qs = timed([["qemu-img", "convert", "-t", "writeback", "-O", "raw", img, out]], clean, runs)
    t.add("RAW -> RAW, synced", "qemu-img convert -t writeback -O raw", qs, size, None,
          "fdatasync at close")
    i = timed([[str(BIN), img, out]], clean, runs)
    t.add("RAW -> RAW, synced", "imgconv IN OUT (default: fsync, then publish)", i, size, qs,
          f"{i / q:.2f}x unsynced qemu-img")


def case_digest(t, img, size, out, runs):
    clean = lambda: rm(out)
    ref = timed([["qemu-img", "convert", "-O", "raw", img, out], ["md5sum", out],
                 ["sha256sum", out]], clean, runs)
    t.add("RAW -> RAW + MD5 + SHA-256", "qemu-img convert; md5sum; sha256sum", ref, size)
    sh(["qemu-img", "convert", "-O", "raw", img, out])
    warm(out)
    md5 = timed([["md5sum", out]], None, runs)
    rm(out)
    t.add("RAW -> RAW + MD5 + SHA-256", "md5sum OUT (alone, the floor)", md5, size)
    i = timed([[str(BIN), "--digest", "md5,sha256", img, out]], clean, runs)
    t.add("RAW -> RAW + MD5 + SHA-256", "imgconv --digest md5,sha256", i, size, ref,
          f"{i / md5:.2f}x md5sum alone")
    n = timed([[str(BIN), "--no-sync", "--digest", "md5,sha256", img, out]], clean, runs)
    t.add("RAW -> RAW + MD5 + SHA-256", "imgconv --no-sync --digest md5,sha256", n, size, ref,
          f"{n / md5:.2f}x md5sum alone")


def case_qcow2(t, img, size, work, runs, out_dir):
    out = str(out_dir / "out.qcow2")
    clean = lambda: rm(out)
    q = timed([["qemu-img", "convert", "-O", "qcow2", img, out]], clean, runs)
    t.add("RAW -> QCOW2", "qemu-img convert -O qcow2", q, size)
    i = timed([[str(BIN), "--no-sync", img, out]], clean, runs)
    t.add("RAW -> QCOW2", "imgconv --no-sync IN OUT.qcow2", i, size, q, "neither syncs")
    for ctype in ["zlib", "zstd"]:
        copt = ["-o", f"compression_type={ctype}"]
        case = f"RAW -> QCOW2 -c {ctype}"
        ref = ["qemu-img", "convert", "-c", "-W", "-m", "16", "-O", "qcow2"] + copt + [img, out]
        q = timed([ref], clean, runs, keep_last=True)
        qsize = os.path.getsize(out)
        rm(out)
        t.add(case, "qemu-img convert -c -W -m 16 " + ctype, q, size, None, f"{qsize / MiB:.0f} MiB")
        i = timed([[str(BIN), "--no-sync", "-c"] + copt + [img, out]], clean, runs, keep_last=True)
        isize = os.path.getsize(out)
        rm(out)
        t.add(case, "imgconv --no-sync -c " + ctype, i, size, q,
              f"{isize / MiB:.0f} MiB ({isize / qsize:.3f}x qemu's size)")
    # Reading compressed QCOW2 back: the input is qemu-img's own zlib output.
    src = str(work / "qemu-zlib.qcow2")
    if not os.path.exists(src):
        sh(["qemu-img", "convert", "-c", "-W", "-m", "16", "-O", "qcow2", img, src])
    warm(src)
    raw = str(out_dir / "back.raw")
    clean = lambda: rm(raw)
    q = timed([["qemu-img", "convert", "-O", "raw", src, raw]], clean, runs)
    t.add("QCOW2 (zlib) -> RAW", "qemu-img convert -O raw", q, size)
    i = timed([[str(BIN), "--no-sync", src, raw]], clean, runs)
    t.add("QCOW2 (zlib) -> RAW", "imgconv --no-sync IN OUT.raw", i, size, q)


def case_vmdk(t, img, size, work, runs, out_dir):
    out = str(out_dir / "out.vmdk")
    clean = lambda: rm(out)
    case = "RAW -> VMDK streamOptimized"
    ref = ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", img, out]
    q = timed([ref], clean, runs, keep_last=True)
    qsize = os.path.getsize(out)
    rm(out)
    t.add(case, "qemu-img convert -O vmdk -o subformat=streamOptimized", q, size, None,
          f"{qsize / MiB:.0f} MiB")
    i = timed([[str(BIN), "--no-sync", img, out]], clean, runs, keep_last=True)
    isize = os.path.getsize(out)
    rm(out)
    t.add(case, "imgconv --no-sync IN OUT.vmdk", i, size, q,
          f"{isize / MiB:.0f} MiB ({isize / qsize:.3f}x qemu's size)")
    case = "RAW -> VMDK monolithicSparse"
    ref = ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", img, out]
    q = timed([ref], clean, runs)
    t.add(case, "qemu-img convert -O vmdk -o subformat=monolithicSparse", q, size)
    i = timed([[str(BIN), "--no-sync", "-o", "subformat=monolithicSparse", img, out]], clean, runs)
    t.add(case, "imgconv --no-sync -o subformat=monolithicSparse", i, size, q)
    src = str(work / "qemu-stream.vmdk")
    if not os.path.exists(src):
        sh(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", img, src])
    warm(src)
    raw = str(out_dir / "back.raw")
    clean = lambda: rm(raw)
    q = timed([["qemu-img", "convert", "-O", "raw", src, raw]], clean, runs)
    t.add("VMDK streamOptimized -> RAW", "qemu-img convert -O raw", q, size)
    i = timed([[str(BIN), "--no-sync", src, raw]], clean, runs)
    t.add("VMDK streamOptimized -> RAW", "imgconv --no-sync IN OUT.raw", i, size, q)


def case_vdi(t, img, size, work, runs, out_dir):
    pair = pair_rows(t, size, runs)
    out = str(out_dir / "out.vdi")
    pair("RAW -> VDI dynamic", ["qemu-img", "convert", "-O", "vdi", img, out],
         "qemu-img convert -O vdi", [str(BIN), "--no-sync", img, out],
         "imgconv --no-sync IN OUT.vdi", lambda: rm(out))
    src = str(work / "qemu.vdi")
    if not os.path.exists(src):
        sh(["qemu-img", "convert", "-O", "vdi", img, src])
    warm(src)
    raw = str(out_dir / "back.raw")
    pair("VDI -> RAW", ["qemu-img", "convert", "-O", "raw", src, raw],
         "qemu-img convert -O raw", [str(BIN), "--no-sync", src, raw],
         "imgconv --no-sync IN OUT.raw", lambda: rm(raw))


def pair_rows(t, size, runs):
    """A function that times a reference command against imgconv's, alternating run by run (both
    take about a second, and the machine's speed drifts more than that between consecutive
    batches), and adds both rows; the note gives each one's fastest run."""
    def pair(case, ref_cmd, ref_name, our_cmd, our_name, clean):
        q, i = timed_ab([ref_cmd], [our_cmd], clean, runs)
        qmin, imin = timed_ab.mins
        t.add(case, ref_name, q, size, note=f"fastest {qmin:.3f} s")
        t.add(case, our_name, i, size, q, note=f"fastest {imin:.3f} s ({imin / qmin:.2f}x)")
    return pair


def case_vhd(t, img, size, work, runs, out_dir):
    pair = pair_rows(t, size, runs)
    out = str(out_dir / "out.vhd")
    clean = lambda: rm(out)
    for sub in ["dynamic", "fixed"]:
        pair(f"RAW -> VHD {sub}",
             ["qemu-img", "convert", "-O", "vpc", "-o", f"subformat={sub}", img, out],
             f"qemu-img convert -O vpc -o subformat={sub}",
             [str(BIN), "convert", "--no-sync", "-O", "vhd", "-o", f"subformat={sub}", img, out],
             f"imgconv --no-sync -O vhd -o subformat={sub}", clean)
    src = str(work / "qemu-dynamic.vhd")
    if not os.path.exists(src):
        sh(["qemu-img", "convert", "-O", "vpc", "-o", "force_size=on", img, src])
    warm(src)
    raw = str(out_dir / "back.raw")
    pair("VHD dynamic -> RAW", ["qemu-img", "convert", "-f", "vpc", "-O", "raw", src, raw],
         "qemu-img convert -f vpc -O raw", [str(BIN), "--no-sync", src, raw],
         "imgconv --no-sync IN OUT.raw", lambda: rm(raw))


def case_inspect(t, img, size, work, runs, out_dir):
    """check, map and measure against qemu-img's on the same images, and what
    --deterministic costs (its content-digest pass) on outputs that hold ids."""
    pair = pair_rows(t, size, runs)
    src = str(work / "qemu-64k.qcow2")
    if not os.path.exists(src):
        sh(["qemu-img", "convert", "-O", "qcow2", img, src])
    warm(src)
    nothing = lambda: None
    pair("check QCOW2", ["qemu-img", "check", src], "qemu-img check",
         [str(BIN), "check", src], "imgconv check", nothing)
    pair("map QCOW2", ["qemu-img", "map", "--output=json", src], "qemu-img map --output=json",
         [str(BIN), "map", "--output", "json", src], "imgconv map --output json", nothing)
    pair("measure RAW -O qcow2", ["qemu-img", "measure", "-O", "qcow2", img],
         "qemu-img measure -O qcow2", [str(BIN), "measure", "-O", "qcow2", img],
         "imgconv measure -O qcow2", nothing)
    for fmt, qfmt in [("vhd", "vpc"), ("vmdk", "vmdk")]:
        out = str(out_dir / f"out.{fmt}")
        opts = ["-o", "subformat=streamOptimized"] if fmt == "vmdk" else []
        pair(f"RAW -> {fmt.upper()} --deterministic",
             ["qemu-img", "convert", "-O", qfmt] + opts + [img, out], f"qemu-img convert -O {qfmt}",
             [str(BIN), "convert", "--no-sync", "--deterministic", "-O", fmt] + opts + [img, out],
             f"imgconv --no-sync --deterministic -O {fmt}", lambda: rm(out))


OVF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="vm-disk1.vmdk" ovf:id="file1"/></References>
  <DiskSection><Info>Virtual disk information</Info>
    <Disk ovf:capacity="{size}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>
</Envelope>
"""


def case_packages(t, img, size, work, runs, out_dir):
    """VHDX against qemu-img; an OVA against the usual several passes (qemu-img streamOptimized,
    an OVF written by hand, sha256sum for the manifest, tar); a GCE tar.gz against GNU tar's
    -Sczf (one core's gzip) and tar piped into pigz."""
    pair = pair_rows(t, size, runs)
    out = str(out_dir / "out.vhdx")
    pair("RAW -> VHDX dynamic", ["qemu-img", "convert", "-O", "vhdx", img, out],
         "qemu-img convert -O vhdx", [str(BIN), "--no-sync", img, out],
         "imgconv --no-sync IN OUT.vhdx", lambda: rm(out))
    src = str(work / "qemu.vhdx")
    if not os.path.exists(src):
        sh(["qemu-img", "convert", "-O", "vhdx", img, src])
    warm(src)
    raw = str(out_dir / "back.raw")
    pair("VHDX -> RAW", ["qemu-img", "convert", "-f", "vhdx", "-O", "raw", src, raw],
         "qemu-img convert -f vhdx -O raw", [str(BIN), "--no-sync", src, raw],
         "imgconv --no-sync IN OUT.raw", lambda: rm(raw))
    # OVA: the passes a user runs by hand.
    d = out_dir / "ova-parts"
    d.mkdir(exist_ok=True)
    (d / "vm.ovf").write_text(OVF_TEMPLATE.format(size=size))
    ova = str(out_dir / "vm.ova")
    manual = ["sh", "-c",
              f"qemu-img convert -O vmdk -o subformat=streamOptimized '{img}' '{d}/vm-disk1.vmdk' && "
              f"cd '{d}' && sha256sum --tag vm.ovf vm-disk1.vmdk > vm.mf && "
              f"tar -cf '{ova}' vm.ovf vm.mf vm-disk1.vmdk"]
    pair("RAW -> OVA", manual, "qemu-img (streamOptimized) + sha256sum + tar",
         [str(BIN), "--no-sync", img, ova], "imgconv --no-sync IN OUT.ova",
         lambda: rm(ova, str(d / "vm-disk1.vmdk"), str(d / "vm.mf")))
    # GCE: disk.raw in a tar.gz.
    g = out_dir / "gce-parts"
    g.mkdir(exist_ok=True)
    disk = g / "disk.raw"
    if not disk.exists():
        sh(["cp", "--sparse=always", img, str(disk)])
    tgz = str(out_dir / "image.tar.gz")
    clean = lambda: rm(tgz)
    pair("RAW -> GCE tar.gz", ["tar", "--format=oldgnu", "-Sczf", tgz, "-C", str(g), "disk.raw"],
         "tar --format=oldgnu -Sczf", [str(BIN), "--no-sync", "-O", "gce", img, tgz],
         "imgconv --no-sync -O gce", clean)
    if shutil.which("pigz"):
        pair("RAW -> GCE tar.gz (pigz)",
             ["sh", "-c", f"tar --format=oldgnu -Scf - -C '{g}' disk.raw | pigz > '{tgz}'"],
             "tar --format=oldgnu -Scf - (piped to pigz)", [str(BIN), "--no-sync", "-O", "gce", img, tgz],
             "imgconv --no-sync -O gce", clean)
    sh([str(BIN), "--no-sync", "-O", "gce", img, tgz])
    x = out_dir / "gce-x"
    x.mkdir(exist_ok=True)
    pair("GCE tar.gz -> RAW", ["tar", "-xzf", tgz, "-C", str(x)], "tar -xzf",
         [str(BIN), "--no-sync", tgz, raw], "imgconv --no-sync IN.tar.gz OUT.raw",
         lambda: rm(raw, str(x / "disk.raw")))
    rm(tgz)


def s3s_fs():
    """The S3-compatible server the tests use (installed by scripts/test.sh)."""
    local = ROOT / "target" / "tools" / "bin" / "s3s-fs"
    if local.exists():
        return str(local)
    found = shutil.which("s3s-fs")
    if not found:
        sys.exit("s3s-fs is needed: run scripts/test.sh once, or "
                 "cargo install --locked s3s-fs@0.14.1 --features binary")
    return found


def case_export(t, img, size, work, runs, out_dir):
    """streamOptimized VMDK into a local S3-compatible server against the same conversion into
    a local file, with the same digests (an export always reports MD5 and SHA-256); the server
    stores its objects next to where the file goes. Measured twice: with the server sharing
    every core with imgconv (its own CPU time, reported, then comes out of the export's wall
    time), and with the server on a core of its own and both imgconv commands on the others,
    which is how an export meets a server on another host."""
    ncpu = len(os.sched_getaffinity(0))
    export_pair(t, img, size, runs, out_dir, None, None, "shared cores")
    if ncpu >= 2:
        export_pair(t, img, size, runs, out_dir, {ncpu - 1}, set(range(ncpu - 1)),
                    f"server on CPU {ncpu - 1}, imgconv on CPU 0-{ncpu - 2}" if ncpu > 2
                    else "server on CPU 1, imgconv on CPU 0")


def export_pair(t, img, size, runs, out_dir, server_cpus, client_cpus, placement):
    root = out_dir / "s3root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "exports").mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin_server = (lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None
    server = subprocess.Popen([s3s_fs(), "--host", "127.0.0.1", "--port", str(port),
                               "--access-key", "bench-key", "--secret-key", "bench-secret-0123",
                               str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=pin_server)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench-key",
                   AWS_SECRET_ACCESS_KEY="bench-secret-0123")
        out = str(out_dir / "out.vmdk")
        obj = str(root / "exports" / "out.vmdk")
        clean = lambda: rm(out, obj)
        pin = ["taskset", "-c", ",".join(map(str, sorted(client_cpus)))] if client_cpus else []
        to_file = pin + [str(BIN), "--no-sync", "--digest", "md5,sha256", "-o",
                         "subformat=streamOptimized", img, out]
        to_s3 = pin + [str(BIN), "-o", "subformat=streamOptimized", img, "s3://exports/out.vmdk",
                       "--endpoint", f"http://127.0.0.1:{port}", "--force"]
        global sh_env
        sh_env = env

        def server_cpu():
            with open(f"/proc/{server.pid}/stat") as st:
                fields = st.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        cpu0 = server_cpu()
        f, s3 = timed_ab([to_file], [to_s3], clean, runs)
        server_secs = (server_cpu() - cpu0) / runs
        fmin, smin = timed_ab.mins
        clean()
        fcpu = cpu_secs(to_file)
        clean()
        scpu = cpu_secs(to_s3)
        osize = os.path.getsize(obj)
        kib = max_rss_kib(to_s3)
        clean()
        sh_env = None
        case = f"RAW -> VMDK streamOptimized, export ({placement})"
        tp = "taskset ... " if pin else ""
        t.add(case, f"{tp}imgconv --no-sync --digest md5,sha256 IN OUT.vmdk (local file)", f,
              size, None, f"fastest {fmin:.2f} s; imgconv CPU {fcpu:.1f} s")
        t.add(case, f"{tp}imgconv IN s3://exports/out.vmdk (s3s-fs on 127.0.0.1)", s3, size, f,
              f"fastest {smin:.2f} s ({smin / fmin:.2f}x); object {osize / MiB:.0f} MiB; "
              f"max RSS {kib / 1024:.0f} MiB; imgconv CPU {scpu:.1f} s; "
              f"server CPU {server_secs:.1f} s per export")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


def case_serve(t, img, size, work, runs):
    """The same streamOptimized VMDK export through `imgconv serve` (boto3's ExportImage, timed
    to the poll that sees it completed) and through the command line, to the same local S3
    server, run alternately; then 20 clients polling while an export runs."""
    py = ROOT / "target" / "sdk-venv" / "bin" / "python"
    if not py.exists():
        sys.exit("the SDKs' venv is needed: run scripts/test.sh once")
    out = subprocess.run([str(py), str(ROOT / "benches" / "serve_bench.py"), json.dumps(
        {"bin": str(BIN), "img": img, "runs": runs, "work": str(work), "s3s_fs": s3s_fs()})],
        capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    case = "RAW -> VMDK streamOptimized, export service"
    t.add(case, "imgconv IN s3://exports/cli/out.vmdk (s3s-fs on 127.0.0.1)", r["cli"], size, None,
          f"fastest {r['cli_min']:.2f} s")
    t.add(case, "boto3 export_image -> imgconv serve -> s3s-fs, until describe says completed",
          r["service"], size, r["cli"], f"fastest {r['service_min']:.2f} s")
    load = r["load"]
    t.rows.append(("export service under polling", "20 boto3 clients polling DescribeExportImageTasks "
                   "while an export runs", "", "", "",
                   f"{load['requests']} requests, {load['failures']} failed, p50 "
                   f"{load['p50'] * 1000:.1f} ms, p99 {load['p99'] * 1000:.1f} ms"))
    print(f"#   pollers: {load}", file=sys.stderr)


def case_tenants(t, img, size, work, runs):
    """Three accounts of 32 boto3 pollers each (DescribeExportImageTasks on their own task)
    while 4 exports run, with and without 4 more clients looping DryRun exports of a 1 TiB
    sparse image: calls per second, p50 and p99 as the clients see them and inside the service
    (its log's time per request); closed loop, then paced as pollers are (a fixed timetable
    offering 1,050 calls/s, latency from each call's scheduled time). 10 s per phase."""
    py = ROOT / "target" / "sdk-venv" / "bin" / "python"
    if not py.exists():
        sys.exit("the SDKs' venv is needed: run scripts/test.sh once")
    out = subprocess.run([str(py), str(ROOT / "benches" / "tenants_bench.py"), json.dumps(
        {"bin": str(BIN), "img": img, "work": str(work), "s3s_fs": s3s_fs(), "seconds": 10,
         "pollers": 32})], capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    for key, what in [("pollers", "3 accounts x 32 boto3 pollers, 4 exports running"),
                      ("pollers_and_dry_runs", "the same, and 4 clients looping DryRun exports "
                                               "of a 1 TiB sparse image"),
                      ("paced", "3 accounts x 32 boto3 pollers paced to offer 1,050 calls/s "
                                "together, 4 exports running"),
                      ("paced_and_dry_runs", "the same paced, and 4 clients looping DryRun "
                                             "exports of a 1 TiB sparse image")]:
        v = r[key]
        s_ = v["in_service"]
        t.rows.append(("accounts polling the export service", what, f"{v['calls_per_s']:.0f} calls/s",
                       "", "", f"clients: p50 {v['p50'] * 1000:.0f} ms, p99 {v['p99'] * 1000:.0f} ms; "
                       f"in the service: p50 {s_['p50'] * 1000:.0f} ms, p99 {s_['p99'] * 1000:.0f} ms; "
                       f"{v['failures']} failed; {v['dry_runs']} dry runs"))
    print(f"#   tenants: {r}", file=sys.stderr)


def case_fleet(t, img, size, work, runs):
    """The export service on a PostgreSQL job store shared by three instances, against one
    instance on SQLite and the command line: the latency from a request to a completed small
    export (idle fleet; receiving instance busy), and the same big export's wall time."""
    py = ROOT / "target" / "sdk-venv" / "bin" / "python"
    if not py.exists():
        sys.exit("the SDKs' venv is needed: run scripts/test.sh once")
    out = subprocess.run([str(py), str(ROOT / "benches" / "fleet_bench.py"), json.dumps(
        {"bin": str(BIN), "img": img, "runs": runs, "work": str(work), "s3s_fs": s3s_fs(),
         "samples": 20})], capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    lat, wall = r["latency"], r["wall"]
    for key, what in [("sqlite", "1 instance on SQLite, idle"),
                      ("pg_idle", "3 instances on PostgreSQL, idle, requests sent to each in turn"),
                      ("pg_busy", "3 instances on PostgreSQL, the receiving instance's worker busy")]:
        v = lat[key]
        t.rows.append(("request -> completed, 4 MiB export", what, f"{v['p50']:.3f}", "", "",
                       f"p90 {v['p90'] * 1000:.0f} ms, max {v['max'] * 1000:.0f} ms, "
                       f"{r['samples']} samples"))
    case = "RAW -> VMDK streamOptimized, job store"
    t.add(case, "imgconv IN s3://exports/cli/out.vmdk", wall["cli"]["median"], size, None,
          f"fastest {wall['cli']['min']:.2f} s")
    t.add(case, "boto3 export_image -> imgconv serve on SQLite", wall["sqlite"]["median"], size,
          wall["cli"]["median"], f"fastest {wall['sqlite']['min']:.2f} s")
    t.add(case, "boto3 export_image -> one of 3 imgconv serve on PostgreSQL", wall["pg"]["median"],
          size, wall["cli"]["median"], f"fastest {wall['pg']['min']:.2f} s")
    print(f"#   fleet: {r}", file=sys.stderr)


def drop_caches():
    """Write back dirty pages and empty the page cache (root only), so that no run pays for
    another's writeback and every run reads its input from the same place."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        sys.exit("the floor case drops the page cache between runs: run it as root")


def time_one(cmd):
    """(wall, system) seconds of one run."""
    t0 = time.perf_counter()
    before = os.times()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = os.times()
    return time.perf_counter() - t0, after.children_system - before.children_system


def alternate(runs, ours, theirs, out, img, cache, measure):
    """`runs` runs each of imgconv (`ours`) and qemu-img (`theirs`), alternating which goes
    first, `out` removed and the page cache dropped (cache "dropped") or the input's data read
    in (cache "warm") before each; {"imgconv": [...], "qemu-img": [...]} of `measure(cmd)`."""
    res = {"imgconv": [], "qemu-img": []}
    for r in range(runs):
        order = [("imgconv", ours), ("qemu-img", theirs)]
        if r % 2:
            order.reverse()
        for who, cmd in order:
            rm(out)
            if cache == "dropped":
                drop_caches()
            else:
                read_data_only(img)
            res[who].append(measure(cmd))
    rm(out)
    return res


def case_floor(t, img, size, out_dir, runs):
    """Uncompressed outputs against qemu-img, as the copy floor is measured: `runs` alternating
    runs (which tool goes first alternates), neither syncing, with the page cache dropped
    before every run and again with the input's data cached (as just after the image was
    built or downloaded); median wall and system time of each."""
    cases = [
        ("RAW -> RAW", "raw", [], "raw", []),
        ("RAW -> QCOW2", "qcow2", [], "qcow2", []),
        ("RAW -> VHD fixed", "vhd", ["-o", "subformat=fixed"], "vpc", ["-o", "subformat=fixed"]),
        ("RAW -> VDI", "vdi", [], "vdi", []),
    ]
    for cache in ("dropped", "warm"):
        for name, fmt, our_opts, qfmt, q_opts in cases:
            out = os.path.join(out_dir, f"floor.{fmt}")
            ours = [str(BIN), "--no-sync", "-O", fmt] + our_opts + [img, out, "--force"]
            theirs = ["qemu-img", "convert", "-O", qfmt] + q_opts + [img, out]
            times = alternate(runs, ours, theirs, out, img, cache, time_one)
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            q_wall, q_sys = med(times["qemu-img"], 0), med(times["qemu-img"], 1)
            i_wall, i_sys = med(times["imgconv"], 0), med(times["imgconv"], 1)
            span = lambda xs: f"{min(x[0] for x in xs):.2f}-{max(x[0] for x in xs):.2f} s"
            label = "copy floor" if cache == "dropped" else "copy floor, input cached"
            t.add(f"{name}, {label}", "qemu-img convert -O " + qfmt + " " + " ".join(q_opts),
                  q_wall, size, None, f"system {q_sys:.2f} s; runs {span(times['qemu-img'])}")
            t.add(f"{name}, {label}", "imgconv --no-sync -O " + fmt + " " + " ".join(our_opts),
                  i_wall, size, q_wall,
                  f"system {i_sys:.2f} s ({i_sys / max(q_sys, 1e-9):.2f}x); "
                  f"runs {span(times['imgconv'])}")


def make_pieces(path, size, pieces, piece=4 * MiB, seed=7):
    """A sparse RAW of `size` bytes holding `pieces` pieces of `piece` bytes (every other one
    random, the rest text) spread evenly over it, each at a seeded 64 KiB-aligned offset in its
    share; the same seed and piece count give the same data at the same ranks in any size."""
    rng = random.Random(seed)
    text = (b"The quick brown fox jumps over the lazy dog. " * (piece // 45 + 1))[:piece]
    step = size // pieces
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(pieces):
            at = i * step + rng.randrange(0, (step - piece) // (64 << 10) + 1) * (64 << 10)
            f.seek(at)
            f.write(rng.randbytes(piece) if i % 2 == 0 else text)
    os.sync()


def read_data_only(path):
    """Bring a file's data into the page cache without touching its holes."""
    with open(path, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            os.lseek(fd, start, os.SEEK_SET)
            left = stop - start
            while left > 0:
                n = len(f.read(min(left, 16 * MiB)))
                if n == 0:
                    break
                left -= n
            pos = stop


def cached_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def case_scale(t, work, runs, only="all"):
    """Cost grows with the data, never with the holes: sparse RAW images (4 TiB holding 1 GiB
    of data, 64 GiB holding 256 MiB) and the same data in 4 GiB files, into every output
    format, imgconv and qemu-img alternating, with the page cache dropped before each run and
    with the input's data cached (holes never read in). Median wall and system time, peak
    RSS and the growth of `Cached` in /proc/meminfo."""
    images = [
        ("4t", "4 TiB, 1 GiB of data", 4 << 40, 256),
        ("4g-1g", "4 GiB, the same 1 GiB", 4 << 30, 256),
        ("64g", "64 GiB, 256 MiB of data", 64 << 30, 64),
        ("4g-256m", "4 GiB, the same 256 MiB", 4 << 30, 64),
        ("1t-tiny", "1 TiB, 8 MiB of data", 1 << 40, 2),
        ("2g-tiny", "2 GiB, the same 8 MiB", 2 << 30, 2),
    ]
    if only == "all":
        only = "4t,4g-1g,64g,4g-256m"
    images = [i[1:] for i in images if i[0] in only.split(",")]
    outputs = [
        ("RAW", "raw", [], "raw", []),
        ("QCOW2", "qcow2", [], "qcow2", []),
        ("VMDK monolithicSparse", "vmdk", ["-o", "subformat=monolithicSparse"], "vmdk", []),
        ("VMDK streamOptimized", "vmdk", ["-o", "subformat=streamOptimized"], "vmdk",
         ["-o", "subformat=streamOptimized"]),
        ("VHD dynamic", "vhd", [], "vpc", []),
        ("VHDX", "vhdx", [], "vhdx", []),
        ("VDI", "vdi", [], "vdi", []),
    ]
    need("/usr/bin/time", "time")
    for label, size, pieces in images:
        img = work / f"scale-{size >> 30}G-{pieces}p.raw"
        if not img.exists() or img.stat().st_size != size:
            make_pieces(img, size, pieces)
        data = pieces * 4 * MiB
        for name, fmt, our_opts, qfmt, q_opts in outputs:
            # VHD and streamOptimized VMDK end at 2 TiB (both tools refuse more); imgconv
            # keeps monolithicSparse to VMware's 2 TiB as well, where qemu-img goes on.
            if size > 2 << 40 and name in ("VHD dynamic", "VMDK streamOptimized",
                                           "VMDK monolithicSparse"):
                continue
            out = str(work / f"scale-out.{fmt}")
            ours = [str(BIN), "--no-sync", "-O", fmt] + our_opts + [str(img), out, "--force"]
            theirs = ["qemu-img", "convert", "-O", qfmt] + q_opts + [str(img), out]
            for cache in ("dropped", "warm"):
                res = alternate(runs, ours, theirs, out, img, cache, measure_run)
                med = lambda who, i: statistics.median(x[i] for x in res[who])
                q_wall = med("qemu-img", 0)
                case = f"scale: RAW {label} -> {name}, cache {cache}"
                for who, cmd_name in (("qemu-img", "qemu-img convert -O " + " ".join([qfmt] + q_opts)),
                                      ("imgconv", "imgconv --no-sync -O " + " ".join([fmt] + our_opts))):
                    wall, sys_s, rss, grew = (med(who, i) for i in range(4))
                    t.add(case, cmd_name, wall, data, q_wall if who == "imgconv" else None,
                          f"MB/s of data; system {sys_s:.2f} s; peak RSS {rss / 1024:.0f} MiB; "
                          f"page cache +{grew:.0f} MiB")


def measure_run(cmd):
    """(wall s, system s, peak RSS KiB, page cache growth MiB) of one run of `cmd`."""
    before = cached_kib()
    t0 = time.perf_counter()
    cpu0 = os.times()
    # GNU time reports the peak RSS of the command itself (the rusage of a forked child
    # also counts the Python interpreter it was forked from, about 30 MiB).
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=sh_env)
    wall = time.perf_counter() - t0
    system = os.times().children_system - cpu0.children_system
    if p.returncode != 0:
        sys.exit(f"{cmd} failed: {p.stderr.decode(errors='replace')}")
    grew = (cached_kib() - before) / 1024
    rss = int(p.stderr.decode().strip().splitlines()[-1])
    return wall, system, rss, grew


def case_memory(t, work, sizes, realistic):
    images = [(realistic, "realistic")] if realistic.exists() else []
    for size in sizes:
        img = work / f"sparse25-{size // GiB}G.raw"
        if not img.exists() or img.stat().st_size != size:
            make_sparse(img, size)
        images.append((img, "25% data"))
    for img, kind in images:
        gib = img.stat().st_size // GiB
        out = str(work / "mem-out.raw")
        rm(out)
        kib = max_rss_kib([str(BIN), "--digest", "md5,sha256,crc32c", str(img), out])
        rm(out)
        t.rows.append((f"peak memory, {gib} GiB {kind}", "imgconv --digest md5,sha256,crc32c",
                       "", "", "", f"max RSS {kib / 1024:.0f} MiB"))
        print(f"#   peak memory {gib} GiB {kind}: {kib / 1024:.0f} MiB", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G", help="virtual size of the realistic image (2G)")
    ap.add_argument("--runs", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument("--cases",
                    default="raw,digest,qcow2,vmdk,vdi,vhd,inspect,packages,export,serve,fleet,memory",
                    help="raw, digest, qcow2, vmdk, vdi, vhd, inspect (check, map, measure, "
                         "--deterministic), packages (VHDX, OVA, GCE), export, serve, fleet, "
                         "tenants, floor, scale, memory "
                         "(floor and scale are not in the default set: they drop the page "
                         "cache, and scale writes 4 TiB sparse files)")
    ap.add_argument("--scale-images", default="all",
                    help="the scale case's images: all (4t,4g-1g,64g,4g-256m) or a list of "
                         "those keys and 1t-tiny, 2g-tiny (1 TiB and 2 GiB holding 8 MiB)")
    ap.add_argument("--work", default=str(ROOT / "bench-work"), help="scratch folder")
    ap.add_argument("--out-dir", default=None,
                    help="where outputs are written (default: --work); a tmpfs such as "
                         "/dev/shm takes the disk's writeback out of the measurement")
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = ap.parse_args()

    need("qemu-img", "qemu-utils")
    need("md5sum", "coreutils")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out_dir) if args.out_dir else work
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_build:
        sh(["cargo", "build", "--release", "-p", "imgconv-cli"], cwd=ROOT)
    size = parse_size(args.size)
    cases = set(args.cases.split(","))
    t = Table()
    img = work / f"realistic-{args.size}.raw"
    if cases & {"raw", "digest", "qcow2", "vmdk", "vdi", "vhd", "inspect", "packages", "export",
                 "serve", "fleet", "tenants", "floor"}:
        if not img.exists() or img.stat().st_size != size:
            make_realistic(img, size, work)
        warm(img)
        out = str(out_dir / "out.raw")
        if "raw" in cases:
            case_raw(t, str(img), size, out, args.runs)
        if "digest" in cases:
            case_digest(t, str(img), size, out, args.runs)
        if "qcow2" in cases:
            case_qcow2(t, str(img), size, work, args.runs, out_dir)
        if "vmdk" in cases:
            case_vmdk(t, str(img), size, work, args.runs, out_dir)
        if "vdi" in cases:
            case_vdi(t, str(img), size, work, args.runs, out_dir)
        if "vhd" in cases:
            case_vhd(t, str(img), size, work, args.runs, out_dir)
        if "inspect" in cases:
            case_inspect(t, str(img), size, work, args.runs, out_dir)
        if "packages" in cases:
            case_packages(t, str(img), size, work, args.runs, out_dir)
        if "export" in cases:
            need("/usr/bin/time", "time")
            case_export(t, str(img), size, work, args.runs, out_dir)
        if "serve" in cases:
            case_serve(t, str(img), size, work, args.runs)
        if "fleet" in cases:
            case_fleet(t, str(img), size, work, args.runs)
        if "tenants" in cases:
            case_tenants(t, str(img), size, work, args.runs)
        if "floor" in cases:
            case_floor(t, str(img), size, out_dir, max(args.runs, 10))
    if "scale" in cases:
        case_scale(t, work, args.runs, args.scale_images)
    if "memory" in cases:
        need("/usr/bin/time", "time")
        case_memory(t, work, [2 * GiB, 8 * GiB], img)
    print(f"cores: {os.cpu_count()}, imgconv {subprocess.run([str(BIN), '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"{subprocess.run(['qemu-img', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}\n")
    print(t.markdown())


if __name__ == "__main__":
    main()
