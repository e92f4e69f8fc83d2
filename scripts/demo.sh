#!/usr/bin/env bash
# The main job on a generated image: builds imgconv, makes a 1 GiB RAW disk holding an ext4
# file system (filled from /usr/share) with holes and allocated zeros, converts it with
# progress and inline MD5/SHA-256, and checks the result with md5sum and imgconv compare.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mke2fs >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq e2fsprogs; }

cargo build --release --locked -p imgconv-cli
bin=target/release/imgconv
work=target/demo
rm -rf "$work" && mkdir -p "$work"

echo "== generating $work/disk.raw (1 GiB, ext4 from /usr/share/doc)" >&2
mke2fs -q -F -t ext4 -d /usr/share/doc "$work/disk.raw" 1G
dd if=/dev/zero of="$work/disk.raw" bs=1M seek=900 count=64 conv=notrunc status=none

echo "== imgconv info" >&2
"$bin" info "$work/disk.raw"

echo "== imgconv $work/disk.raw $work/out.img --digest md5,sha256 -p" >&2
"$bin" "$work/disk.raw" "$work/out.img" --digest md5,sha256 -p | tee "$work/SUMS"

echo "== checking with md5sum, sha256sum and imgconv compare" >&2
(cd "$work" && sed "s|$work/||" SUMS > SUMS.local \
  && grep '^MD5 ' SUMS.local | md5sum -c - && grep '^SHA256 ' SUMS.local | sha256sum -c -)
"$bin" compare "$work/disk.raw" "$work/out.img"
du -h --apparent-size "$work/out.img"; du -h "$work/out.img"
