#!/usr/bin/env bash
# GPU benchmark run in one go, for a CUDA machine with nvcc, ninja and a CUDA build of torch (the device machine's
# image has them; it has no nerfacc, so point NERFACC_PATH at a folder holding the `nerfacc` package sources).
#
#   NERFACC_PATH=.gpu_deps bash benchmarks/run_gpu_bench.sh            # results into $OUT (or benchmarks/results)
#
# 1. builds our CUDA extension and nerfacc's JIT extension in parallel (TORCH_CUDA_ARCH_LIST, default 9.0), so no
#    build is timed; 2. runs bench_backends.py --device cuda (131072 rays x ~128 samples: >= 1e7 samples, nerfacc
#    rows, targets, copy bandwidth); if that process dies (a CUDA error poisons the process) it reruns it one
#    group per process; 3. runs bench_ops.py --device cuda at the default sizes. Everything is also logged.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-benchmarks/results}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH="$PWD${NERFACC_PATH:+:$NERFACC_PATH}${PYTHONPATH:+:$PYTHONPATH}"
export NERFACCEL_EXT_DIR=${NERFACCEL_EXT_DIR:-/tmp/nerfaccel-ext}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch-ext}
LOG="$OUTDIR/gpu-bench.log"
: >"$LOG"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

say "torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())')"
say "building our CUDA extension and nerfacc's (in parallel)"
( $PY -c "from nerfaccel_plugin._ext.cli import main; raise SystemExit(main(['--cuda', '--quiet', '--import']))" \
    >/tmp/build-ours.log 2>&1; echo "ours build rc=$?" >>/tmp/build-ours.log ) &
pid_ours=$!
( $PY -c "from nerfacc.cuda._backend import _C; print('nerfacc _C:', _C); raise SystemExit(_C is None)" \
    >/tmp/build-nerfacc.log 2>&1; echo "nerfacc build rc=$?" >>/tmp/build-nerfacc.log ) &
pid_nf=$!
wait $pid_ours $pid_nf
cat /tmp/build-ours.log /tmp/build-nerfacc.log >"$OUTDIR/build.log"
tail -n 3 /tmp/build-ours.log /tmp/build-nerfacc.log | tee -a "$LOG"
$PY -c "import nerfaccel_plugin as n; print(n.backend_info())" 2>&1 | tee -a "$LOG"

say "bench_backends --device cuda"
if ! $PY benchmarks/bench_backends.py --device cuda --out "$OUTDIR/backends-cuda.md" 2>&1 | tee -a "$LOG"; then
    say "bench_backends died; rerunning one group per process"
    : >"$OUTDIR/backends-cuda.md"
    for g in traversal rendering sampling scan other; do
        $PY benchmarks/bench_backends.py --device cuda --only "$g" --out "/tmp/backends-cuda-$g.md" 2>&1 \
            | tee -a "$LOG" || say "group $g failed"
        [ -f "/tmp/backends-cuda-$g.md" ] && cat "/tmp/backends-cuda-$g.md" >>"$OUTDIR/backends-cuda.md"
    done
fi

say "bench_ops --device cuda"
$PY benchmarks/bench_ops.py --device cuda --repeat 10 --warmup 3 --out "$OUTDIR/ops-cuda.md" 2>&1 | tee -a "$LOG" \
    || say "bench_ops failed"
say "bench_traversal --device cuda (vs nerfacc: cone 0 / 1 level, cone 1/256 / 4 levels)"
$PY benchmarks/bench_traversal.py --device cuda --repeat 20 --out "$OUTDIR/traversal-cuda.md" 2>&1 | tee -a "$LOG" \
    || say "bench_traversal failed"
say "done"
