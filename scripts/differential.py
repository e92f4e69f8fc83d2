#!/usr/bin/env python3
"""Differential fuzzing of imgconv's readers against qemu-img.

Takes base images of each format (made here by qemu-img and by imgconv's writers from a small
pattern disk, plus the fixtures under testdata/), applies one structure-aware mutation to each
copy (a header field, a table entry, a length, an offset, a truncation, a few flipped bytes),
converts the copy to RAW with both tools and compares:

  agree           both refuse, or both accept and read the same bytes
  differ          both accept, the bytes (or the virtual sizes) differ
  imgconv-only    imgconv accepts, qemu-img refuses
  qemu-only       qemu-img accepts, imgconv refuses
  imgconv-bug     imgconv crashed (a signal, exit 12) or ran out of time

Every disagreement is classified by the rules in VERDICTS (the reason each kind of
disagreement is right, or names the bug); one left unclassified, or an imgconv bug, makes the
script exit 1. Each case is reproducible from the seed and its number (--replay).

  python3 scripts/differential.py [--per-format 20000] [--formats qcow2,vmdk,vhd,vdi]
      [--jobs N] [--seed S] [--out DIR] [--imgconv PATH]
  python3 scripts/differential.py --replay vhd:1234 --out DIR   (writes the mutated image)

qemu-img opens QCOW2 and VMDK images with `backing: null`, so a mutated image never makes it
open another file. Results go to DIR/results.jsonl (every disagreement, with its verdict and both tools'
messages), DIR/disagreements.tsv (the same, one line each, the verdict by number) and
DIR/summary.md (counts per format and per verdict).
"""

import argparse
import collections
import concurrent.futures
import gzip
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
TIMEOUT = 20
QEMU_FMT = {"qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc", "vdi": "vdi"}


# ---------------------------------------------------------------------------------------------
# Base images


def pattern_disk(size=3 * MiB):
    """Data, repeated bytes, zero runs and odd-sized runs around cluster and block edges."""
    b = bytearray(size)
    rng = random.Random(7)
    b[0:65536] = bytes(rng.getrandbits(8) for _ in range(65536))
    b[510:512] = b"\x55\xaa"
    b[200000:200000 + 3000] = b"\xab" * 3000
    b[MiB - 700:MiB + 700] = bytes((i * 7 + 3) % 251 for i in range(1400))
    t = b"imgconv differential fixture " * 40
    b[2 * MiB + 65536:2 * MiB + 65536 + len(t)] = t
    b[size - 512:] = b"\x5a" * 512
    return bytes(b)


QEMU_BASES = {
    "qcow2": [("default", []), ("c4k", ["-o", "cluster_size=4096"]),
              ("v2-c512", ["-o", "compat=0.10,cluster_size=512"]), ("compressed", ["-c"]),
              ("c2m", ["-o", "cluster_size=2M"])],
    "vmdk": [("monolithicSparse", []), ("streamOptimized", ["-o", "subformat=streamOptimized"])],
    "vhd": [("dynamic", []), ("fixed", ["-o", "subformat=fixed"])],
    "vdi": [("dynamic", []), ("static", ["-o", "static=on"])],
}

IMGCONV_BASES = {
    "qcow2": [("default", []), ("c4k", ["-o", "cluster_size=4K"]),
              ("v2-c512", ["-o", "compat=0.10,cluster_size=512"]), ("zlib", ["-c"]),
              ("zstd", ["-c", "-o", "compression_type=zstd"])],
    "vmdk": [("streamOptimized", []), ("monolithicSparse", ["-o", "subformat=monolithicSparse"])],
    "vhd": [("dynamic", []), ("bs4k", ["-o", "block_size=4K"]), ("fixed", ["-o", "subformat=fixed"])],
    "vdi": [("dynamic", []), ("fixed", ["-o", "subformat=fixed"])],
}

FIXTURE_DIRS = {"qcow2": ["qcow2"], "vmdk": ["vmdk"], "vhd": ["vhd"], "vdi": ["vdi"]}
# Fixtures that do not stand alone (a descriptor whose extents are absent) are left out, and
# so is the image with 65536 snapshots: qemu-img spends seconds on its table at every open
# (that imgconv converts its active layer is checked by the fixture tests).
FIXTURE_SKIP = ("descriptor-only", "qcow1", "65536-snapshots")


def make_bases(fmt, work, imgconv):
    """[(name, bytes)] for one format."""
    raw = os.path.join(work, "pattern.raw")
    if not os.path.exists(raw):
        with open(raw, "wb") as f:
            f.write(pattern_disk())
    bases = []
    for name, opts in QEMU_BASES[fmt]:
        out = os.path.join(work, f"base-qemu-{fmt}-{name}")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", QEMU_FMT[fmt], *opts, raw, out],
                       check=True, capture_output=True)
        bases.append((f"qemu-img {name}", open(out, "rb").read()))
    for name, opts in IMGCONV_BASES[fmt]:
        out = os.path.join(work, f"base-imgconv-{fmt}-{name}")
        subprocess.run([imgconv, "convert", "-f", "raw", "-O", fmt, *opts, "--no-sync", "--force",
                        raw, out], check=True, capture_output=True)
        bases.append((f"imgconv {name}", open(out, "rb").read()))
    for d in FIXTURE_DIRS[fmt]:
        folder = os.path.join(ROOT, "testdata", d)
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".gz") or any(s in fname for s in FIXTURE_SKIP):
                continue
            data = gzip.open(os.path.join(folder, fname)).read()
            if len(data) <= 8 * MiB:
                bases.append((f"fixture {fname[:-3]}", data))
    return bases


# ---------------------------------------------------------------------------------------------
# Structure-aware mutations: each returns (mutated bytes, description)


def interesting(rng, old, width, file_len, unit=512):
    """A value for a field of `width` bytes that used to hold `old`."""
    top = (1 << (8 * width)) - 1
    choices = [
        0, 1, top, top - 1, top >> 1, (top >> 1) + 1,
        old + 1, old - 1, old * 2, old // 2, old + unit, old - unit, old ^ (1 << rng.randrange(8 * width)),
        file_len, file_len - 1, file_len + 1, file_len // unit, file_len // unit + 1, file_len * 2,
        1 << rng.randrange(8 * width), rng.getrandbits(8 * width), rng.randrange(0, max(2, file_len)),
        rng.randrange(0, 64) * unit,
    ]
    return rng.choice(choices) & top


def put(buf, off, width, value, big):
    if off < 0 or off + width > len(buf):
        return False
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    struct.pack_into((">" if big else "<") + fmt, buf, off, value)
    return True


def get(buf, off, width, big):
    if off < 0 or off + width > len(buf):
        return 0
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    return struct.unpack_from((">" if big else "<") + fmt, buf, off)[0]


def mutate_field(rng, buf, fields, base, big, what, unit=512):
    name, off, width = rng.choice(fields)
    old = get(buf, base + off, width, big)
    new = interesting(rng, old, width, len(buf), unit)
    put(buf, base + off, width, new, big)
    return f"{what}.{name} {old:#x}->{new:#x}"


def mutate_table(rng, buf, table_off, count, width, big, what, unit, file_len):
    """Change one entry of a table of `count` entries at `table_off`."""
    if count <= 0 or table_off < 0 or table_off >= len(buf):
        return None
    # Prefer entries in use (non-zero, not all-ones) half of the time.
    idx = rng.randrange(count)
    for _ in range(8):
        v = get(buf, table_off + idx * width, width, big)
        if v not in (0, (1 << (8 * width)) - 1) or rng.random() < 0.5:
            break
        idx = rng.randrange(count)
    off = table_off + idx * width
    if off + width > len(buf):
        return None
    old = get(buf, off, width, big)
    new = interesting(rng, old, width, file_len, unit)
    put(buf, off, width, new, big)
    return f"{what}[{idx}] {old:#x}->{new:#x}"


def generic(rng, buf, region_end):
    """A truncation, an extension, or flipped bytes in the first `region_end` bytes."""
    r = rng.random()
    if r < 0.3 and len(buf) > 1:
        cut = rng.choice([rng.randrange(len(buf)), len(buf) - 512, len(buf) - 1, len(buf) // 2,
                          rng.randrange(max(1, region_end))])
        cut = max(0, cut)
        del buf[cut:]
        return f"truncate to {cut}"
    if r < 0.4:
        extra = rng.choice([1, 511, 512, 4096, 65536])
        buf.extend(bytes([rng.getrandbits(8)]) * extra)
        return f"extend by {extra}"
    n = rng.randrange(1, 5)
    spots = []
    for _ in range(n):
        at = rng.randrange(max(1, min(region_end, len(buf))))
        buf[at] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        spots.append(at)
    return "bytes at " + ",".join(str(s) for s in spots)


QCOW2_FIELDS = [("version", 4, 4), ("backing_file_offset", 8, 8), ("backing_file_size", 16, 4),
                ("cluster_bits", 20, 4), ("size", 24, 8), ("crypt_method", 32, 4),
                ("l1_size", 36, 4), ("l1_table_offset", 40, 8), ("refcount_table_offset", 48, 8),
                ("refcount_table_clusters", 56, 4), ("nb_snapshots", 60, 4),
                ("snapshots_offset", 64, 8), ("incompatible_features", 72, 8),
                ("compatible_features", 80, 8), ("autoclear_features", 88, 8),
                ("refcount_order", 96, 4), ("header_length", 100, 4), ("compression_type", 104, 1)]


def mutate_qcow2(rng, buf):
    cbits = get(buf, 20, 4, True)
    cluster = 1 << cbits if 9 <= cbits <= 21 else 65536
    l1_size, l1_off = get(buf, 36, 4, True), get(buf, 40, 8, True)
    r = rng.random()
    if r < 0.3:
        return "header." + mutate_field(rng, buf, QCOW2_FIELDS, 0, True, "h", cluster)[2:]
    if r < 0.45:
        return mutate_table(rng, buf, l1_off, min(l1_size, 4096), 8, True, "l1", cluster, len(buf)) \
            or generic(rng, buf, 512)
    if r < 0.7:
        # An L2 entry of an allocated L2 table.
        tables = []
        for i in range(min(l1_size, 4096)):
            e = get(buf, l1_off + 8 * i, 8, True) & 0x00FFFFFFFFFFFE00
            if e and e + cluster <= len(buf):
                tables.append(e)
        if tables:
            t = rng.choice(tables)
            n = cluster // 8
            idx = rng.randrange(n)
            for _ in range(16):
                if get(buf, t + 8 * idx, 8, True):
                    break
                idx = rng.randrange(n)
            off = t + 8 * idx
            old = get(buf, off, 8, True)
            choice = rng.random()
            if choice < 0.25:
                new = old ^ (1 << rng.choice([0, 62, 63, 61, 9, 56]))
            elif choice < 0.5:
                # Point the entry elsewhere: another cluster, the header, a table, past the end.
                target = rng.choice([0, l1_off, t, len(buf), len(buf) + cluster,
                                     rng.randrange(0, len(buf) + 1) & ~(cluster - 1),
                                     rng.randrange(0, len(buf) + 1)])
                new = (old & ~0x00FFFFFFFFFFFE00) | (target & 0x00FFFFFFFFFFFE00) if not (old >> 62) & 1 \
                    else (old & ~((1 << 62) - 1)) | (target & ((1 << 56) - 1))
            else:
                new = interesting(rng, old, 8, len(buf), cluster)
            put(buf, off, 8, new, True)
            return f"l2[{idx}]@{t:#x} {old:#x}->{new:#x}"
        return generic(rng, buf, 512)
    if r < 0.8:
        rt = get(buf, 48, 8, True)
        if rng.random() < 0.5:
            return mutate_table(rng, buf, rt, 16, 8, True, "refcount_table", cluster, len(buf)) \
                or generic(rng, buf, 512)
        rb = get(buf, rt, 8, True)
        return mutate_table(rng, buf, rb, 64, 2, True, "refcount_block", 1, len(buf)) \
            or generic(rng, buf, 512)
    return generic(rng, buf, max(512, min(len(buf), l1_off + 8 * l1_size)))


VMDK_FIELDS = [("version", 4, 4), ("flags", 8, 4), ("capacity", 12, 8), ("grainSize", 20, 8),
               ("descriptorOffset", 28, 8), ("descriptorSize", 36, 8), ("numGTEsPerGT", 44, 4),
               ("rgdOffset", 48, 8), ("gdOffset", 56, 8), ("overHead", 64, 8),
               ("uncleanShutdown", 72, 1), ("compressAlgorithm", 77, 2)]


def vmdk_header_at(buf):
    """The header whose tables describe the image: the footer's for streamOptimized files."""
    if get(buf, 56, 8, False) == 0xFFFFFFFFFFFFFFFF and len(buf) >= 1536:
        foot = len(buf) - 1024
        if buf[foot:foot + 4] == b"KDMV":
            return foot
    return 0


def mutate_vmdk(rng, buf):
    h = vmdk_header_at(buf) if rng.random() < 0.8 else 0
    grain = get(buf, h + 20, 8, False) * 512 or 65536
    gd = get(buf, h + 56, 8, False) * 512
    gtes = get(buf, h + 44, 4, False) or 512
    cap = get(buf, h + 12, 8, False)
    r = rng.random()
    if r < 0.3:
        return ("footer." if h else "header.") + \
            mutate_field(rng, buf, VMDK_FIELDS, h, False, "h", 512)[2:]
    gd_entries = min(4096, -(-cap * 512 // max(1, grain * gtes))) if grain else 1
    if r < 0.45:
        return mutate_table(rng, buf, gd, max(1, gd_entries), 4, False, "gd", 1, len(buf) // 512) \
            or generic(rng, buf, 1024)
    if r < 0.7:
        tables = [get(buf, gd + 4 * i, 4, False) * 512 for i in range(max(1, gd_entries))]
        tables = [t for t in tables if 0 < t < len(buf)]
        if tables:
            t = rng.choice(tables)
            return mutate_table(rng, buf, t, gtes, 4, False, f"gt@{t:#x}", 1, len(buf) // 512) \
                or generic(rng, buf, 1024)
        return generic(rng, buf, 1024)
    if r < 0.82:
        # The embedded descriptor: a number in it, or its createType.
        d_off = get(buf, 28, 8, False) * 512
        d_len = get(buf, 36, 8, False) * 512
        if 0 < d_off < len(buf) and d_len:
            text = bytes(buf[d_off:d_off + min(d_len, 4096)])
            nums = [m for m in re.finditer(rb"\d+", text)]
            if nums and rng.random() < 0.7:
                m = rng.choice(nums)
                new = str(rng.choice([0, 1, int(m.group()) + 1, int(m.group()) * 2, 2 ** 32, 2 ** 63,
                                      int(m.group()) - 1])).encode()
                text = text[:m.start()] + new + text[m.end():]
                what = f"descriptor number {m.group().decode()}->{new.decode()}"
            else:
                kinds = [b"monolithicSparse", b"streamOptimized", b"monolithicFlat", b"vmfs",
                         b"twoGbMaxExtentSparse", b"custom"]
                new = rng.choice(kinds)
                text, n = re.subn(rb'createType="[^"]*"', b'createType="' + new + b'"', text)
                what = f"descriptor createType {new.decode()}"
            text = text[:d_len]
            buf[d_off:d_off + len(text)] = text
            return what
        return generic(rng, buf, 1024)
    if r < 0.9 and h:
        # A streamOptimized grain marker: its LBA or its size.
        at = 512 * (get(buf, 64, 8, False) or 128)
        markers = []
        while at + 12 <= len(buf) and len(markers) < 64:
            lba, size = get(buf, at, 8, False), get(buf, at + 8, 4, False)
            if size == 0:
                at += 512
                continue
            markers.append(at)
            at = (at + 12 + size + 511) // 512 * 512
        if markers:
            m = rng.choice(markers)
            if rng.random() < 0.5:
                old = get(buf, m, 8, False)
                new = interesting(rng, old, 8, cap, grain // 512)
                put(buf, m, 8, new, False)
                return f"marker@{m:#x}.lba {old:#x}->{new:#x}"
            old = get(buf, m + 8, 4, False)
            new = interesting(rng, old, 4, len(buf), 1)
            put(buf, m + 8, 4, new, False)
            return f"marker@{m:#x}.size {old:#x}->{new:#x}"
    return generic(rng, buf, 1024)


VHD_FOOTER_FIELDS = [("features", 8, 4), ("version", 12, 4), ("data_offset", 16, 8),
                     ("original_size", 40, 8), ("current_size", 48, 8), ("cylinders", 56, 2),
                     ("heads", 58, 1), ("sectors", 59, 1), ("disk_type", 60, 4),
                     ("creator_app", 28, 4)]
VHD_DYN_FIELDS = [("data_offset", 8, 8), ("table_offset", 16, 8), ("version", 24, 4),
                  ("max_table_entries", 28, 4), ("block_size", 32, 4)]


def vhd_checksum(buf, off, length, cks_at):
    s = sum(buf[off:off + length]) - sum(buf[off + cks_at:off + cks_at + 4])
    put(buf, off + cks_at, 4, (~s) & 0xFFFFFFFF, True)


def mutate_vhd(rng, buf):
    foot = len(buf) - 512
    dyn = get(buf, foot + 16, 8, True)
    dynamic = dyn != 0xFFFFFFFFFFFFFFFF and dyn + 1024 <= len(buf)
    r = rng.random()
    fix = rng.random() < 0.85
    if r < 0.3 or not dynamic and r < 0.6:
        copies = [foot] + ([0] if buf[0:8] == b"conectix" else [])
        # Change both copies alike most of the time, or one of them.
        which = rng.random()
        targets = copies if which < 0.6 else [rng.choice(copies)]
        name, off, width = rng.choice(VHD_FOOTER_FIELDS)
        old = get(buf, foot + off, width, True)
        new = interesting(rng, old, width, len(buf), 512)
        for c in targets:
            put(buf, c + off, width, new, True)
            if fix:
                vhd_checksum(buf, c, 512, 64)
        where = "both" if len(targets) == 2 else "only" if len(copies) == 1 else \
            "end" if targets == [foot] else "head"
        return f"footer({where}{'' if fix else ',bad-sum'}).{name} {old:#x}->{new:#x}"
    if dynamic and r < 0.5:
        desc = mutate_field(rng, buf, VHD_DYN_FIELDS, dyn, True, "dyn", 512)
        if fix:
            vhd_checksum(buf, dyn, 1024, 36)
        return desc + ("" if fix else " bad-sum")
    if dynamic and r < 0.8:
        bat = get(buf, dyn + 16, 8, True)
        n = get(buf, dyn + 28, 4, True)
        return mutate_table(rng, buf, bat, min(n, 65536), 4, True, "bat", 1, len(buf) // 512) \
            or generic(rng, buf, 512)
    if dynamic and r < 0.9:
        # A block's sector bitmap.
        bat = get(buf, dyn + 16, 8, True)
        n = min(get(buf, dyn + 28, 4, True), 65536)
        blocks = [get(buf, bat + 4 * i, 4, True) * 512 for i in range(n)]
        blocks = [b for b in blocks if b + 512 <= len(buf)]
        if blocks:
            b = rng.choice(blocks)
            at = b + rng.randrange(512)
            old = buf[at]
            buf[at] = rng.choice([0, 0xFF, old ^ (1 << rng.randrange(8))])
            return f"bitmap@{b:#x}+{at - b} {old:#x}->{buf[at]:#x}"
    return generic(rng, buf, 2048 if dynamic else 512)


VDI_FIELDS = [("signature", 64, 4), ("version", 68, 4), ("header_size", 72, 4),
              ("image_type", 76, 4), ("flags", 80, 4), ("offset_blocks", 340, 4),
              ("offset_data", 344, 4), ("sector_size", 360, 4), ("disk_size", 368, 8),
              ("block_size", 376, 4), ("block_extra", 380, 4), ("blocks", 384, 4),
              ("blocks_allocated", 388, 4)]


def mutate_vdi(rng, buf):
    r = rng.random()
    if r < 0.45:
        return "header." + mutate_field(rng, buf, VDI_FIELDS, 0, False, "h", 512)[2:]
    if r < 0.8:
        bmap = get(buf, 340, 4, False)
        n = get(buf, 384, 4, False)
        nblocks = get(buf, 384, 4, False)
        desc = mutate_table(rng, buf, bmap, min(n, 65536), 4, False, "block_map", 1,
                            max(1, nblocks))
        return desc or generic(rng, buf, 512)
    return generic(rng, buf, 1024)


MUTATORS = {"qcow2": mutate_qcow2, "vmdk": mutate_vmdk, "vhd": mutate_vhd, "vdi": mutate_vdi}


def make_case(fmt, bases, seed, i):
    rng = random.Random(f"{seed}:{fmt}:{i}")
    name, data = bases[rng.randrange(len(bases))]
    buf = bytearray(data)
    desc = MUTATORS[fmt](rng, buf)
    if rng.random() < 0.1:
        desc += "; " + MUTATORS[fmt](rng, buf)
    return name, desc, bytes(buf)


# ---------------------------------------------------------------------------------------------
# Running both tools


def run(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)
        return p.returncode, p.stderr.decode("utf-8", "replace").strip()
    except subprocess.TimeoutExpired:
        return "timeout", ""


def qemu_source(fmt, path):
    if fmt in ("qcow2", "vmdk"):
        return "json:" + json.dumps({"driver": fmt, "backing": None,
                                     "file": {"driver": "file", "filename": path}})
    return path


SEEK_DATA, SEEK_HOLE = 3, 4


def data_runs(fd, size):
    """[(start, end)] of the file's data extents (holes read as zeros)."""
    runs, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, SEEK_HOLE)
        runs.append((start, end))
        pos = end
    return runs


def compare(a, b):
    """None if `a` (qemu-img's RAW) and `b` (imgconv's) read the same, else what differs:
    the sizes, or per 512-byte sector whose side holds only zeros."""
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    kinds = collections.Counter()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        size = min(sa, sb)
        runs = sorted(data_runs(fa.fileno(), size) + data_runs(fb.fileno(), size))
        pos = 0
        for s, e in runs:
            s = max(s, pos)
            e = min(e, size)
            while s < e:
                n = min(e - s, 4 * MiB)
                fa.seek(s)
                fb.seek(s)
                x, y = fa.read(n), fb.read(n)
                if x != y:
                    for k in range(0, n, 512):
                        xs, ys = x[k:k + 512], y[k:k + 512]
                        if xs != ys:
                            kinds["imgconv reads zeros" if not any(ys) else
                                  "qemu reads zeros" if not any(xs) else "both read data"] += 1
                s += n
            pos = max(pos, e)
    parts = [f"sizes {sa} (qemu) and {sb} (imgconv)"] if sa != sb else []
    parts += [f"{k} in {v} sectors" for k, v in sorted(kinds.items())]
    return "; ".join(parts) or None


def one_case(fmt, bases, seed, i, work, imgconv):
    name, desc, data = make_case(fmt, bases, seed, i)
    tag = f"{threading.get_ident()}"
    img = os.path.join(work, f"case-{tag}.{fmt}")
    out_q, out_i = img + ".qemu.raw", img + ".imgconv.raw"
    with open(img, "wb") as f:
        f.write(data)
    for p in (out_q, out_i):
        if os.path.exists(p):
            os.unlink(p)
    q = run(["qemu-img", "convert", "-f", QEMU_FMT[fmt], "-O", "raw", qemu_source(fmt, img), out_q])
    c = run([imgconv, "convert", "-f", fmt, "-O", "raw", "--no-sync", "--force", img, out_i])
    q_ok, i_ok = q[0] == 0, c[0] == 0
    rec = {"case": f"{fmt}:{i}", "base": name, "mutation": desc,
           "qemu": q[0], "imgconv": c[0]}
    if c[0] == "timeout" or c[0] == 12 or (isinstance(c[0], int) and c[0] < 0):
        rec["outcome"] = "imgconv-bug"
        rec["imgconv_error"] = c[1][-400:]
    elif q_ok and i_ok:
        difference = compare(out_q, out_i)
        if difference is None:
            rec["outcome"] = "agree"
        else:
            rec.update(outcome="differ", difference=difference)
    elif not q_ok and not i_ok:
        rec["outcome"] = "agree"
    elif i_ok:
        rec.update(outcome="imgconv-only", qemu_error=q[1][-300:])
    else:
        rec.update(outcome="qemu-only", imgconv_error=c[1][-300:])
    for p in (out_q, out_i):
        if os.path.exists(p):
            os.unlink(p)
    return rec


# ---------------------------------------------------------------------------------------------
# Verdicts: (format or None, outcome, regex on "mutation | imgconv error | qemu error", verdict)
# The first rule that matches a disagreement classifies it.

PAST_END = (r"imgconv: .*(lies outside the file|beyond the end of the file|lies beyond|truncated|missing|"
            r"ends before|ends inside|past the end|outside the file)")

VERDICTS = [
    # Both accept, different bytes.
    ("vhd", "differ", r"\| (imgconv reads zeros in \d+ sectors)$",
     "imgconv right: it honours a dynamic block's sector bitmap (a clear bit reads as zeros, as "
     "the specification, Windows and VirtualBox have it); qemu ignores bitmaps and returns the "
     "stored bytes. A changed BAT entry or bitmap byte moves which bitmap bits apply"),
    ("vhd", "differ", r"footer\((head|end)[,)]",
     "by design: the two footer copies now disagree; qemu takes the copy at offset 0, imgconv "
     "the footer at the end, the specification's (the copy at 0 is for recovery)"),
    ("vhd", "differ", r"footer\((both|only).*(cylinders|heads|sectors|current_size|creator_app).*\| sizes",
     "by design: the size rule: imgconv takes the CHS geometry only for Virtual PC and qemu "
     "creators and current_size otherwise (as Windows and VirtualBox read them); qemu takes the "
     "geometry for every creator it does not list"),
    ("qcow2", "differ", r"(header\.size |bytes at (\d+,)*(2[4-9]|3[01])[,;| ]).*\| sizes \d+ \(qemu\) "
     r"and \d+ \(imgconv\)$",
     "by design: a size that is not a whole number of 512-byte sectors: qemu rounds it down "
     "(and drops the tail's data), imgconv keeps the header's exact byte count"),
    # imgconv accepts, qemu refuses.
    ("qcow2", "imgconv-only", r"[Ss]napshot",
     "by design: the snapshot table is not needed to read the active layer; imgconv converts it "
     "(info reports the table unreadable), qemu refuses the whole image"),
    ("qcow2", "imgconv-only", r"data-file-raw requires a data file",
     "by design: autoclear feature bits may be ignored by a reader (the specification); without "
     "the external-data-file incompatible bit, data-file-raw has no meaning for reading"),
    ("qcow2", "imgconv-only", r"Header extension|header extension",
     "by design: imgconv reads no header extension (what could change the reading, an external "
     "data file or encryption, is flagged in the header and refused there)"),
    ("vdi", "imgconv-only", r"sector size \d+ is not 512",
     "by design: the sector size field is not used for reading (every VDI offset and size is in "
     "bytes); VirtualBox writes 512 and qemu insists on it"),
    ("vhd", "imgconv-only", r"free_data_block_offset points after the end of file",
     "by design: BAT entries past the disk's size are never read; qemu scans every entry the "
     "header claims (here into the data area) for its allocation pointer"),
    ("vhd", "imgconv-only", r"footer\(head|footer\(both,bad-sum|bitmap@0x0\+|"
     r"(^|; )bytes at (\d+,)*(\d\d?|[1-4]\d\d|50\d|51[01])[,;| ]|"
     r"Incorrect header checksum.*malformed-old-qemu",
     "by design: the footer copy at offset 0 is damaged or differs; imgconv reads the footer at "
     "the end, which is intact, qemu reads the copy at 0"),
    ("vhd", "imgconv-only", r"Max Table Entries too large",
     "by design: BAT entries past the disk's size are never read; qemu refuses a table larger "
     "than it would allocate"),
    ("vmdk", "imgconv-only", r"malformed-truncated-streamOptimized",
     "by design: the blank embedded descriptor: imgconv reads a single sparse extent from its "
     "binary header, qemu requires a descriptor with a createType"),
    ("qcow2", "imgconv-only", r"does not contain a reference count table",
     "by design: refcounts are not needed to read an image; qemu refuses one without them"),
    ("vmdk", "imgconv-only", r"marker@.*\.size .*(Invalid argument|error while reading)",
     "by design: a grain marker's length cut into the zlib trailer: every byte of the grain "
     "decodes, imgconv reads it, qemu requires the whole trailer"),
    ("vmdk", "imgconv-only", r"L2 table size too big",
     "by design: imgconv follows the header's entries per grain table (up to its limit); qemu "
     "takes only 512 or fewer"),
    ("vmdk", "imgconv-only", r"(^|; )(bytes at|descriptor|header\.descriptor(Offset|Size)).*Could not "
     r"open.*Invalid argument",
     "by design: the embedded descriptor is damaged; imgconv reads a single sparse extent "
     "from its binary header, qemu parses the descriptor"),
    ("vmdk", "imgconv-only", r"rgdOffset.*(backup|Input/output)|Could not read l1 backup table",
     "by design: the redundant grain directory is not needed to read; qemu reads it and fails"),
    ("vmdk", "imgconv-only", r"overHead.*File truncated, expecting",
     "by design: overHead is not needed to read (grains are found through the tables); qemu "
     "checks it against the file size"),
    ("vmdk", "imgconv-only", r"Invalid footer",
     "by design: the markers around an intact footer (the footer marker, the end-of-stream "
     "marker) are damaged; imgconv checks the footer itself (magic, fields, agreement with "
     "the header), qemu requires the markers as well"),
    ("vmdk", "imgconv-only", r"capacity 0x[0-9a-f]+->0x0 .*Unsupported image type",
     "by design: a capacity of 0 is an empty disk; imgconv reads it as such, qemu refuses"),
    ("vdi", "imgconv-only", r"unaligned data offset",
     "by design: VDI offsets are in bytes; imgconv reads at any offset, qemu wants 512-byte "
     "alignment"),
    ("vdi", "differ", r"header\.disk_size .*\| sizes \d+ \(qemu\) and \d+ \(imgconv\)$",
     "by design: a disk size that is not a whole number of sectors: qemu rounds it up (reading "
     "past the disk's end into the block), imgconv keeps the header's exact byte count"),
    # qemu accepts, imgconv refuses.
    ("qcow2", "qemu-only", r"has a backing file|does not open files an image names",
     "by design: the image names a backing file; imgconv never opens a file an image names "
     "(qemu here runs with backing disabled and reads the unallocated clusters as zeros)"),
    ("qcow2", "qemu-only", r"header_length \d+ is invalid",
     "imgconv right: the specification requires a version 3 header_length of at least 104 and "
     "a multiple of 8"),
    ("vhd", "qemu-only", r"footer\(end",
     "by design: the two footer copies now disagree; imgconv reads the footer at the end (the "
     "specification's), qemu the copy at offset 0, which is intact"),
    ("vhd", "qemu-only", r"no VHD footer \(cookie 'conectix'\) at the end of the file",
     "by design: the file was cut inside its footer; qemu rounds the file's length up to a "
     "sector and reads the missing bytes as zeros, imgconv finds no footer at the end"),
    ("vhd", "qemu-only", r"merge it into its parent",
     "by design: a differencing disk is refused, naming its parent; imgconv never opens a file "
     "an image names (qemu reads the child alone)"),
    ("vhd", "qemu-only", r"checksum .* does not match",
     "imgconv right: a footer or dynamic header whose checksum does not match is damaged; "
     "qemu checks only the footer copy at offset 0"),
    ("vhd", "qemu-only", r"disk type \d+ is none of",
     "imgconv right: the disk type must be fixed, dynamic or differencing"),
    ("vmdk", "qemu-only", r"without the compressed-grains flag",
     "by design since this campaign: the algorithm field and the flag disagree, so either "
     "reading is a guess (see the regression test in tests/cli/differential.rs)"),
    ("vmdk", "qemu-only", r"footer disagrees with the header",
     "by design: the streamOptimized footer must describe the same disk as the header; qemu "
     "takes the footer alone"),
    ("vmdk", "qemu-only", r"grain marker names sector",
     "imgconv right: a grain marker must name the grain the table points it at; qemu ignores "
     "the marker's LBA"),
    (None, "qemu-only", r"imgconv: .*(exceed the limit|exceeds the limit|is not a power of two|"
     r"out of range|too large|too many)",
     "by design: a value over one of imgconv's documented limits or outside the format's "
     "range (exit 10 or 8)"),
    (None, "qemu-only", PAST_END,
     "by design: a table, a grain/cluster/block or the file's own metadata lies past the end "
     "of the file (a truncated or damaged image); qemu reads the missing bytes as zeros and "
     "converts silently, imgconv refuses (exit 8)"),
    (None, "qemu-only", r"imgconv: .*(share|overlap|two blocks|twice)",
     "by design: two table entries claim the same storage, or a table overlaps other "
     "metadata: imgconv refuses a damaged image, qemu reads through it"),
    (None, "qemu-only", r"imgconv: .*(not supported|unsupported)",
     "by design: a value or feature imgconv does not support (refused with exit 9); qemu "
     "accepts or ignores it"),
    ("vdi", "qemu-only", r"imgconv: .*(past the \d+ allocated|allocated blocks but only|header size|"
     r"block map|blocks in the image|disk size|block size)",
     "by design: the VDI header or block map contradicts itself (entries past the allocated "
     "count, more allocated than exist, sizes that do not match); VirtualBox refuses these too"),
    (None, "qemu-only", r"imgconv: .*(invalid offset|unaligned|not aligned|misaligned)",
     "by design: an entry points at an unaligned host offset; imgconv refuses, qemu reads it"),
    (None, "qemu-only", r"imgconv: .*(decompress|inflate|deflate|zstd|zlib)",
     "by design: a compressed cluster or grain does not decompress to its full size; imgconv "
     "refuses, qemu pads or reads past the end as zeros"),
]


def classify(rec):
    """The verdict ("V<n>: text", n its place in VERDICTS) of the first rule that matches."""
    text = " | ".join([rec["mutation"], rec.get("imgconv_error", ""), rec.get("qemu_error", ""),
                       rec["base"], rec.get("difference", "")])
    for n, (fmt, outcome, pattern, verdict) in enumerate(VERDICTS, 1):
        if (fmt is None or rec["case"].startswith(fmt + ":")) and outcome == rec["outcome"] \
                and re.search(pattern, text):
            return f"V{n}: {verdict}"
    return None


def reclassify(out):
    """Apply the current VERDICTS to a finished run's disagreements; print the classes."""
    path = os.path.join(out, "results.jsonl")
    recs = [json.loads(line) for line in open(path)]
    classes = collections.Counter()
    examples = {}
    unclassified = 0
    for rec in recs:
        verdict = classify(rec) if rec["outcome"] != "imgconv-bug" else None
        rec["verdict"] = verdict or "UNCLASSIFIED"
        unclassified += verdict is None
        key = (rec["case"].split(":")[0], rec["outcome"], rec["verdict"])
        classes[key] += 1
        examples.setdefault(key, rec)
    with open(path, "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")
    print("| format | outcome | cases | verdict | example |\n| --- | --- | ---: | --- | --- |")
    for key, n in sorted(classes.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[1])):
        ex = examples[key]
        print(f"| {key[0]} | {key[1]} | {n} | {key[2]} | {ex['case']} {ex['base']}: "
              f"{ex['mutation']} |")
    write_tsv(out, recs)
    return 1 if unclassified else 0


def write_tsv(out, recs):
    """DIR/disagreements.tsv: every disagreement, one line each, its verdict by number."""
    with open(os.path.join(out, "disagreements.tsv"), "w") as f:
        f.write("case\toutcome\tverdict\tbase\tmutation\n")
        for rec in recs:
            f.write(f"{rec['case']}\t{rec['outcome']}\t{rec['verdict'].split(':')[0]}\t"
                    f"{rec['base']}\t{rec['mutation']}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-format", type=int, default=20000)
    ap.add_argument("--formats", default="qcow2,vmdk,vhd,vdi")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "differential"))
    ap.add_argument("--work", default="/dev/shm/imgconv-differential" if os.path.isdir("/dev/shm")
                    else None)
    ap.add_argument("--imgconv", default=os.path.join(ROOT, "target", "release", "imgconv"))
    ap.add_argument("--replay", help="FMT:N: write that case's image to --out and stop")
    ap.add_argument("--reclassify", action="store_true",
                    help="classify DIR/results.jsonl again with the current rules")
    args = ap.parse_args()
    work = args.work or os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    if not os.path.exists(args.imgconv):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "imgconv-cli"], cwd=ROOT,
                       check=True)
    if args.reclassify:
        return reclassify(args.out)
    if args.replay:
        fmt, i = args.replay.split(":")
        name, desc, data = make_case(fmt, make_bases(fmt, work, args.imgconv), args.seed, int(i))
        path = os.path.join(args.out, f"case-{fmt}-{i}.{fmt}")
        open(path, "wb").write(data)
        print(f"{path}: {name}: {desc}")
        return 0

    formats = args.formats.split(",")
    counts = collections.defaultdict(collections.Counter)
    verdicts = collections.defaultdict(collections.Counter)
    examples = {}
    unclassified = 0
    started = time.time()
    results = open(os.path.join(args.out, "results.jsonl"), "w")
    for fmt in formats:
        bases = make_bases(fmt, work, args.imgconv)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(one_case, fmt, bases, args.seed, i, work, args.imgconv)
                       for i in range(args.per_format)]
            for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                rec = fut.result()
                counts[fmt][rec["outcome"]] += 1
                if rec["outcome"] != "agree":
                    verdict = classify(rec) if rec["outcome"] != "imgconv-bug" else None
                    rec["verdict"] = verdict or "UNCLASSIFIED"
                    if verdict is None:
                        unclassified += 1
                    verdicts[(fmt, rec["outcome"])][rec["verdict"]] += 1
                    examples.setdefault((fmt, rec["outcome"], rec["verdict"]), rec)
                    results.write(json.dumps(rec) + "\n")
                if n % 1000 == 0:
                    print(f"{fmt}: {n}/{args.per_format} {dict(counts[fmt])} "
                          f"({time.time() - started:.0f} s)", flush=True)
    results.close()
    write_tsv(args.out, [json.loads(line) for line in open(os.path.join(args.out, "results.jsonl"))])
    with open(os.path.join(args.out, "summary.md"), "w") as s:
        s.write(f"seed {args.seed}, {args.per_format} cases per format, "
                f"{time.time() - started:.0f} s\n\n")
        s.write("| format | cases | agree | differ | imgconv-only | qemu-only | imgconv-bug |\n")
        s.write("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
        for fmt in formats:
            c = counts[fmt]
            s.write(f"| {fmt} | {sum(c.values())} | {c['agree']} | {c['differ']} | "
                    f"{c['imgconv-only']} | {c['qemu-only']} | {c['imgconv-bug']} |\n")
        s.write("\n| format | outcome | cases | verdict | example |\n| --- | --- | ---: | --- | --- |\n")
        for (fmt, outcome), vs in sorted(verdicts.items()):
            for verdict, n in vs.most_common():
                ex = examples[(fmt, outcome, verdict)]
                s.write(f"| {fmt} | {outcome} | {n} | {verdict} | {ex['case']} {ex['base']}: "
                        f"{ex['mutation']} |\n")
    print(open(os.path.join(args.out, "summary.md")).read())
    shutil.rmtree(work, ignore_errors=True)
    return 1 if unclassified else 0


if __name__ == "__main__":
    sys.exit(main())
