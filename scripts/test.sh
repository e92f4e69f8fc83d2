#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need if it is missing
# (qemu-utils for the qemu-img oracle, libyal's python3-libqcow, python3-libvmdk and python3-libvhdi, e2fsprogs for chattr and mke2fs, the OpenSSL headers the
# CLI's MD5 builds against, a C compiler, tar and kill for the export tests, and the s3s-fs
# S3-compatible server from crates.io; the providers' Python SDKs into a venv; PostgreSQL for
# the job store's tests, run as a throwaway cluster), then format, lint, unit, integration and
# doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
command -v chattr >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v md5sum >/dev/null 2>&1 || missing+=(coreutils)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
command -v tar >/dev/null 2>&1 || missing+=(tar)
# The export service's tests: a certificate for HTTPS, and a client that checks it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
# The tests run kill(1) itself, not the shell's builtin.
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
# PostgreSQL (Debian's package) for the job store's tests; only its binaries are used: the
# tests run their own throwaway cluster, never the system-wide service.
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# A C compiler for the bundled SQLite and OpenSSL bindings; C++ for libFuzzer (the fuzz targets
# are built too).
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# libyal's independent readers, for the system Python (the oracle tests call /usr/bin/python3).
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import pyqcow' >/dev/null 2>&1 || missing+=(python3 python3-libqcow)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import pyvmdk' >/dev/null 2>&1 || missing+=(python3 python3-libvmdk)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import pyvhdi' >/dev/null 2>&1 || missing+=(python3 python3-libvhdi)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# PostgreSQL (Debian's package) for the job store's tests; only its binaries are used. The
# package would create and start a system-wide cluster: postgresql-common goes in first and is
# told not to (its documented create_main_cluster setting); the tests run their own cluster.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: postgresql (without a system-wide cluster)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-common
  $sudo sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql
fi

# The providers' SDKs that the export service's tests are clients with, in a venv.
sdk_venv="$PWD/target/sdk-venv"
# COT (the Common OVF Tool) is the OVA tests' independent OVF reader.
sdk_pkgs=(boto3==1.44.8 oci==2.189.0 huaweicloudsdkcore==3.1.219 huaweicloudsdkims==3.1.219
  huaweicloudsdkevs==3.0.69 cot==2.2.1)
if ! "$sdk_venv/bin/python" -c 'import boto3, oci, huaweicloudsdkims, huaweicloudsdkevs, COT' >/dev/null 2>&1; then
  echo "installing: ${sdk_pkgs[*]} (PyPI, into target/sdk-venv)" >&2
  if ! python3 -m venv "$sdk_venv" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv
    rm -rf "$sdk_venv"
    python3 -m venv "$sdk_venv"
  fi
  "$sdk_venv/bin/pip" install -q --disable-pip-version-check "${sdk_pkgs[@]}"
fi
export IMGCONV_SDK_PYTHON="$sdk_venv/bin/python"

# The S3-compatible server the export tests upload to (checks SigV4 signatures).
export PATH="$PWD/target/tools/bin:$PATH"
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing: s3s-fs (crates.io)" >&2
  cargo install --locked --quiet s3s-fs@0.14.1 --features binary --root "$PWD/target/tools"
fi

# The throwaway PostgreSQL cluster (initdb into a temporary folder, a loopback port), stopped
# and removed when this script ends, however it ends.
pg_dir="$(mktemp -d -t imgconv-pg.XXXXXX)"
trap 'scripts/pg-cluster.sh stop "$pg_dir"' EXIT
# TLS only, with a throwaway CA: every PostgreSQL test connects with sslmode=verify-full.
IMGCONV_TEST_PG="$(scripts/pg-cluster.sh start-tls "$pg_dir")"
export IMGCONV_TEST_PG

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --doc --locked
# Every fuzz target builds against the locked dependencies (a plain build, early: a target
# that no longer compiles fails here, before the long tests).
cargo build --manifest-path fuzz/Cargo.toml --locked --bins --target-dir target/fuzz
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# Then every fuzz target runs, coverage-guided, for 10 s on its corpus and seeds (no
# sanitizer: building with one doubles the build, the slow part here). A crash, an input over
# 1 s or over 256 MiB fails the run. The runs work on a copy of each corpus under target/, so
# the work tree keeps the committed corpora. Longer campaigns: FUZZING.md.
FUZZ_SANITIZER=none FUZZ_STATS_DIR=target/fuzz-stats-ci FUZZ_CORPUS_DIR=target/fuzz-corpus-ci \
  scripts/fuzz.sh 10
