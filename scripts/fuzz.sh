#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain (libFuzzer through cargo-fuzz, with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags).
#
#   scripts/fuzz.sh SECONDS [TARGET...]   run each target (all by default) for SECONDS on its
#                                         corpus (fuzz/corpus/T, kept in the repository) and
#                                         its seeds (fuzz/seeds/T); new inputs go to the corpus
#   scripts/fuzz.sh --cmin [TARGET...]    minimize each corpus (cargo fuzz cmin) and drop
#                                         files over 64 KiB
#
# Limits on every run: no input may take over 1 s (-timeout=1) or allocate over 256 MiB
# (-rss_limit_mb / -malloc_limit_mb); either is a failure, like a crash. Each run's counts
# (executions, coverage, features, corpus size) go to $FUZZ_STATS_DIR/T.txt (default
# target/fuzz-stats) and to a table on standard output. FUZZ_CORPUS_DIR=DIR runs each target
# on a copy of its corpus in DIR/T, so that the run leaves fuzz/corpus as it was (the test
# command's short runs use this). FUZZ_SANITIZER=none builds without AddressSanitizer (faster
# to build; the default is address). FUZZ_JOBS=N runs N targets at once (default 1).
# FUZZ_RUNS=N stops each target after N executions (SECONDS is then the cap).
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
# One worker thread in the conversion pipeline: each fuzzing process is one core's work
# (FUZZ_JOBS runs several), and thread hand-offs would otherwise cost more than the work.
export RAYON_NUM_THREADS=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

all_targets() {
  sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^imgconv-fuzz$'
}

sanitizer="${FUZZ_SANITIZER:-address}"
build_flags=(--sanitizer "$sanitizer" --release --debug-assertions)
max_len=65536

if [[ "${1:-}" == "--cmin" ]]; then
  shift
  targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(all_targets)
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    (cd fuzz && cargo fuzz cmin "${build_flags[@]}" "$t" "corpus/$t" -- -rss_limit_mb=256 \
      -timeout=1 >/dev/null 2>&1)
    find "fuzz/corpus/$t" -type f -size +64k -delete
    echo "$t: $(find "fuzz/corpus/$t" -type f | wc -l) files, $(du -sh "fuzz/corpus/$t" | cut -f1)"
  done
  exit 0
fi

seconds="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...] | --cmin [TARGET...]}"
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(all_targets)

(cd fuzz && cargo fuzz build "${build_flags[@]}")
stats="${FUZZ_STATS_DIR:-target/fuzz-stats}"
mkdir -p "$stats"

run_one() {
  local t="$1" log="$stats/$1.txt" corpus="corpus/$1"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if [[ -n "${FUZZ_CORPUS_DIR:-}" ]]; then
    # A copy of the corpus takes the run's new and reduced inputs; the repository's stays.
    corpus="$PWD/$FUZZ_CORPUS_DIR/$t"
    rm -rf "$corpus"
    mkdir -p "$corpus"
    cp -R "fuzz/corpus/$t/." "$corpus/"
  fi
  if (cd fuzz && cargo fuzz run "${build_flags[@]}" "$t" "$corpus" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=1 -rss_limit_mb=256 -malloc_limit_mb=256 \
      -max_len="$max_len" -print_final_stats=1 -close_fd_mask=1 ${FUZZ_RUNS:+-runs=$FUZZ_RUNS}) \
      >"$log" 2>&1; then
    echo "$t ok"
  else
    echo "$t FAILED: see $log and fuzz/artifacts/$t"
    return 1
  fi
}

status=0
jobs="${FUZZ_JOBS:-1}"
running=0
# The next target starts as soon as any running one ends (wait -n), not the oldest.
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || status=1
    running=$((running - 1))
  fi
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done

printf '\n| target | seconds | executions | exec/s | coverage | features | corpus files |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for t in "${targets[@]}"; do
  log="$stats/$t.txt"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: ' | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "${took:-$seconds}" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "$files"
done
exit $status
