#!/usr/bin/env bash
# The commands behind benchmarks/RESULTS.md on a CPU.  Each step writes
# benchmarks/results/<name>.json (schema: ssmc/bench/report.py), .png where a plot helps, and
# .txt (the printed table).  Steps run one after another: two timings side by side on a
# 2-core machine would measure each other.  Usage: benchmarks/results.sh [STEP...]
# (steps: scan scan1t scanbwd ssd mamba mamba1t mambabwd mambaall zoo hf; default all;
# ZOO_BASELINES=eager skips torch.compile in the zoo step).
# --torch-threads 1 where it is given: on a loaded 2-core machine torch's two OpenMP threads
# spin-wait against other processes and the eager baselines get 5-20x slower (measured:
# the eager loop at L 1024 took 21.7 s with 2 threads, 0.94 s with 1), which would flatter ssmc.
set -u
cd "$(dirname "$0")/.."
SSMC=${SSMC:-.venv/bin/ssmc}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"

bench() {  # bench NAME ARGS...: run one `ssmc bench`, keep its table
  local name=$1; shift
  echo "== $name: ssmc bench $*" >&2
  "$SSMC" bench "$@" --no-progress --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}

step_scan()    { bench cpu_selective_scan selective_scan --target cpu --seqlens 256,1024,4096,16384 \
                   --baselines eager,compile --compile-timeout 600 --plot "$OUT/cpu_selective_scan.png"; }
step_scan1t()  { bench cpu_selective_scan_1thread selective_scan --target cpu --seqlens 1024 \
                   --baselines eager,compile,assoc --torch-threads 1 --compile-timeout 600; }
step_scanbwd() { bench cpu_selective_scan_backward selective_scan --target cpu --seqlens 1024 \
                   --baselines eager,compile --backward --compile-timeout 600 --torch-threads 1; }
step_ssd()     { bench cpu_ssd ssd --target cpu --seqlens 256,1024,4096 --baselines eager,compile,assoc \
                   --compile-timeout 600 --torch-threads 1 --plot "$OUT/cpu_ssd.png"; }
# eager only: torch.compile of the whole reference model did not finish within 300 s here
# (cpu_mamba.txt, 2026-11-25), and the issue-5 target is against eager
step_mamba()   { bench cpu_mamba_L2048 ir/mamba.yaml --target cpu --seqlens 2048 --baselines eager; }
step_mamba1t() { bench cpu_mamba_L2048_1thread ir/mamba.yaml --target cpu --seqlens 2048 \
                   --baselines eager --torch-threads 1; }
# L 512, not 2048: the eager reference's backward is quadratic in L (each step's slice of the
# (b, d, L, N) decay tensor back-propagates as a full-size zero-filled gradient), minutes per call.
step_mambabwd() { bench cpu_mamba_L512_backward ir/mamba.yaml --target cpu --seqlens 512 \
                   --baselines eager --backward --torch-threads 1; }
# issue 8's acceptance command as it stands (torch's default threads, every default):
step_mambaall() { bench cpu_mamba ir/mamba.yaml --target cpu --plot "$OUT/cpu_mamba.png"; }
step_zoo() {
  for spec in ir/*.yaml; do
    local name; name=$(basename "$spec" .yaml)
    local extra=()
    [ "$name" = chimera ] && extra=(--dim variates=8)
    bench "cpu_zoo_$name" "$spec" --target cpu --seqlens 256,1024 --baselines "$ZOO_BASELINES" \
      --compile-timeout 120 --torch-threads 1 "${extra[@]}"
  done
}
ZOO_BASELINES=${ZOO_BASELINES:-eager,compile}
# transformers Mamba / Mamba-2 accelerated vs transformers' eager path (issue 9)
step_hf() {
  .venv/bin/python benchmarks/bench_hf.py --sizes 2x128,4x256,4x512 \
    --json "$OUT/hf_cpu_mamba.json" | tee "$OUT/hf_cpu_mamba.txt"
  .venv/bin/python benchmarks/bench_hf.py --model mamba2 --sizes 4x256 \
    --json "$OUT/hf_cpu_mamba2.json" | tee "$OUT/hf_cpu_mamba2.txt"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(scan scan1t scanbwd ssd mamba mamba1t mambabwd mambaall zoo hf)
for s in "${steps[@]}"; do "step_$s"; done
