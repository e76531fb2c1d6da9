#!/usr/bin/env bash
# The GPU quick check (issue 14): correctness, sanitizer, sync audit, benchmarks and training, in at most 10 minutes
# on one H100, every stage with its own timeout, all output under $OUT (docs/gpu.md has the exact device-tool call).
#
#   bash benchmarks/gpu_check.sh --prepare [--data DIR]   # here, no GPU: gather into .gpu_carry/ (nerfacc patched)
#   bash benchmarks/gpu_check.sh [--data DIR]             # on the GPU machine (carry .gpu_carry)
#   bash benchmarks/gpu_check.sh --dry-run                # anywhere: every stage's setup + flag checks, each skipped
#
# Stages, most valuable first (summary in $OUT/summary.md, one log per stage in $OUT/<stage>.log):
#   build      only if the carried binaries do not match this machine's Python/torch: ours (CPU + CUDA sm_90, two
#              parallel builds); nerfacc 0.5.3's patched CUDA extension builds in the background meanwhile
#   a-info     backend_info() must show the CUDA kernels (not a fallback) and a passed self-test
#   b-tests    pytest -k cuda: CUDA-parametrised op parity (tests/ops, tests/test_ext.py), self-test, Triton
#   c-sanitize compute-sanitizer memcheck + initcheck on benchmarks/gpu/parity_small.py
#   d-sync     one training step per sampler under torch.cuda.set_sync_debug_mode (benchmarks/gpu/sync_audit.py)
#   nerfacc    waits for nerfacc's background build
#   b-nerfacc  pytest tests/test_nerfacc_parity.py -k cuda (needs nerfacc)
#   e-bench    bench_backends.py (default backend and --backend triton) vs nerfacc with copy bandwidth on geo30,
#              4096x48, 4096x96, 131072x128, traversal cone 0:1 level and 1/256:4 levels; bench_traversal.py
#              --device cuda if present; bench_hash.py --device cuda --half if Nerfstudio imports
#   f-train    2-minute runs of nerfaccel-lego and ns-train instant-ngp-bounded on lego-400 (needs Nerfstudio)
# Environment: OUT (default benchmarks/results/gpu-check), GPU_CHECK_BUDGET_S (default 560: a stage runs with
# min(its timeout, what is left), and is skipped under 20 s), PYTHON (default python3), GPU_CHECK_STAGES
# (e.g. "a-info b-tests"), GPU_CHECK_PACK (a .tgz refreshed after every stage with everything under OUT, for
# transports that return few files), GPU_CHECK_ARCH (default 9.0).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
CARRY=${GPU_CHECK_CARRY:-$REPO/.gpu_carry}
OUTDIR=${OUT:-$REPO/benchmarks/results/gpu-check}
BUDGET=${GPU_CHECK_BUDGET_S:-560}
ARCH=${GPU_CHECK_ARCH:-9.0}
PACK=${GPU_CHECK_PACK:-}
MODE=run
DATA=""
PREP_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry ;;
    --data) DATA=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    --python) PY=$2; PREP_ARGS+=(--python "$2"); shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) PREP_ARGS+=("$1") ;;
  esac
  shift
done

if [ "$MODE" = prepare ]; then
  [ -z "$DATA" ] && [ -d "$REPO/../shared/data/blender/lego-400" ] && DATA="$REPO/../shared/data/blender/lego-400"
  exec "$PY" benchmarks/gpu/prepare.py --carry "$CARRY" --arch "$ARCH" ${DATA:+--data "$DATA"} "${PREP_ARGS[@]}"
fi

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY="$OUTDIR/summary.md"
START=$(date +%s)
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
# Packages from the carry: nerfacc 0.5.3 (patched source, its csrc built in the background) in $CARRY/site;
# Nerfstudio and the dependencies the GPU image lacks as wheels, installed --no-deps into $SITE. After the repo.
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
export PYTHONPATH="$REPO:$CARRY/site:$SITE${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$CARRY/bin" ] && export PATH="$PATH:$CARRY/bin"

{
  echo "# GPU check ($MODE)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- device: $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' 2>&1 | tail -1)"
  echo "- python/torch: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)' 2>&1 | tail -1); nproc $(nproc)"
  echo
  echo "| stage | status | seconds | note |"
  echo "|---|---|---:|---|"
} >"$SUMMARY"

HAVE_GPU=0
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_GPU=1
[ "$MODE" = dry ] && HAVE_GPU=0
FAILED=0

pack() { [ -n "$PACK" ] && tar czf "$PACK.tmp" -C "$OUTDIR" . 2>/dev/null && mv -f "$PACK.tmp" "$PACK"; return 0; }
row() { echo "| $1 | $2 | $3 | ${4//|//} |" >>"$SUMMARY"; echo "[gpu_check +$(( $(date +%s) - START ))s] $1: $2 ($3 s) $4"; pack; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
wanted() { [ -z "${GPU_CHECK_STAGES:-}" ] || [[ " $GPU_CHECK_STAGES " == *" $1 "* ]]; }

# stage NAME TIMEOUT SETUP_CMD RUN_CMD: SETUP_CMD always runs (also in --dry-run; failing it fails the stage, exit 2
# skips the stage with its last output line as the reason); RUN_CMD runs with a GPU under `timeout`, for
# min(TIMEOUT, what is left of the budget), unless less than 20 s are left.
stage() {
  local name=$1 limit=$2 setup=$3 cmd=$4 log="$OUTDIR/$1.log" t0 rc note cut=""
  wanted "$name" || return 0
  t0=$(date +%s)
  bash -c "$setup" >"$log" 2>&1
  rc=$?
  if [ $rc = 2 ]; then  # the setup says why the stage cannot run here (not an error of the code under test)
    row "$name" skipped 0 "$(tail -n 1 "$log")"; return 0
  elif [ $rc != 0 ]; then
    row "$name" FAILED $(( $(date +%s) - t0 )) "setup failed: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)"; FAILED=1; return 0
  fi
  if [ "$HAVE_GPU" != 1 ]; then
    row "$name" skipped 0 "no GPU ($([ "$MODE" = dry ] && echo '--dry-run' || echo 'torch.cuda.is_available() is False')); setup ok"
    return 0
  fi
  if [ "$(left)" -lt 20 ]; then
    row "$name" skipped 0 "budget: $(left) s left"; return 0
  fi
  [ "$(left)" -lt "$limit" ] && cut=" (timeout cut from $limit s by the budget)" && limit=$(left)
  timeout -k 10 "$limit" bash -c "$cmd" >>"$log" 2>&1
  rc=$?
  note=$(grep -E '^(NOTE|RESULT):' "$log" | tail -n 4 | sed 's/^[A-Z]*: //' | paste -sd ';' -)
  if [ $rc = 0 ]; then row "$name" ok $(( $(date +%s) - t0 )) "$note"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then row "$name" TIMEOUT $(( $(date +%s) - t0 )) "over ${limit} s$cut; $note"; FAILED=1
  else row "$name" FAILED $(( $(date +%s) - t0 )) "rc=$rc: $note; $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160)"; FAILED=1
  fi
}

# ---------------------------------------------------------------------------------------------------------------
# Setup: carried binaries, packages and data
# ---------------------------------------------------------------------------------------------------------------
NEED_BUILD=0
MATCH_NOTE="no carried binaries ($CARRY/manifest.json missing)"
if [ -f "$CARRY/manifest.json" ]; then
  MATCH_NOTE=$("$PY" - "$CARRY/manifest.json" <<'PY'
import json, sys, torch
m = json.load(open(sys.argv[1]))
here = {"python": "%d.%d" % sys.version_info[:2], "torch": torch.__version__}
bad = [f"{k} {m.get(k)} (carried) vs {v} (here)" for k, v in here.items() if m.get(k) != v]
ok = not bad and m.get("prebuilt")
print("carried binaries match" if ok else "carried binaries do not match: " + (", ".join(bad) or "none prebuilt"))
PY
)
fi
case "$MATCH_NOTE" in
  "carried binaries match")  # (not in --dry-run: the copies would become this checkout's prebuilt modules)
    [ "$MODE" = run ] && cp -f "$CARRY"/prebuilt/nerfaccel_plugin/_ext/_C_*.so nerfaccel_plugin/_ext/ 2>/dev/null ;;
  *) NEED_BUILD=1 ;;
esac
WHEEL_NOTE="no wheels carried"
if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
  if [ "$MODE" = run ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$CARRY"/wheels/*.whl >"$OUTDIR/wheels.log" 2>&1 \
      && WHEEL_NOTE="$(ls "$CARRY"/wheels/*.whl | wc -l) wheels installed into $SITE" \
      || WHEEL_NOTE="wheel install FAILED ($OUTDIR/wheels.log)"
  else WHEEL_NOTE="$(ls "$CARRY"/wheels/*.whl | wc -l) wheels carried (installed only in a real run)"; fi
fi
HAVE_NS=0
"$PY" -c 'import nerfstudio.field_components.encodings' >/dev/null 2>&1 && HAVE_NS=1
if [ -z "$DATA" ]; then
  for d in "$CARRY/data/lego-400" "$REPO/../shared/data/blender/lego-400"; do [ -d "$d" ] && DATA=$d && break; done
fi
echo "setup: $MATCH_NOTE; $WHEEL_NOTE; nerfstudio importable: $HAVE_NS; data: ${DATA:-none}; GPU: $HAVE_GPU; budget ${BUDGET}s"

# nerfacc's CUDA extension: built in the background (own timeout) while ours builds and the first stages run.
NERFACC_PID=""
NERFACC_SO=$(ls "$CARRY"/site/nerfacc/csrc*.so 2>/dev/null | head -1)
if [ "$MODE" = run ] && [ "$HAVE_GPU" = 1 ] && [ -d "$CARRY/site/nerfacc/cuda/csrc" ] && { [ "$NEED_BUILD" = 1 ] || [ -z "$NERFACC_SO" ]; } && wanted nerfacc; then
  rm -f "$CARRY"/site/nerfacc/csrc*.so
  ( MAX_JOBS=6 timeout -k 10 "${GPU_CHECK_NERFACC_TIMEOUT:-330}" "$PY" benchmarks/gpu/build_nerfacc.py \
      --site "$CARRY/site" --arch "$ARCH" ) >"$OUTDIR/nerfacc.log" 2>&1 &
  NERFACC_PID=$!
fi

# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------
if [ "$NEED_BUILD" = 1 ]; then
  stage build 300 "echo '$MATCH_NOTE'; $PY -c 'import nerfaccel_plugin._ext.build, nerfaccel_plugin._ext.cli'" "
    ( $PY -m nerfaccel_plugin._ext.cli --cuda --arch '$ARCH' --import --quiet >'$OUTDIR/build-cuda.log' 2>&1
      echo \$? >'$OUTDIR/.build-cuda.rc' ) &
    $PY -m nerfaccel_plugin._ext.cli --cpu --import --quiet; cpu=\$?
    wait; cuda=\$(cat '$OUTDIR/.build-cuda.rc'); cat '$OUTDIR/build-cuda.log'
    echo \"RESULT: built here ($MATCH_NOTE): cpu rc=\$cpu, cuda rc=\$cuda\"
    exit \$(( cpu || cuda ))"
fi

stage a-info 90 "$PY -c 'import nerfaccel_plugin, nerfaccel_plugin._backend as b; b.kernel_for'" "
  $PY - <<'PY'
import json
import nerfaccel_plugin as n
from nerfaccel_plugin import _backend, _ops
info = n.backend_info()
print(json.dumps(info, indent=1))
cuda = info.get('cuda', {})
where = {}
for name in sorted(_ops.KERNEL_CALLS):
    k = _backend.kernel_for(name, 'cuda')
    where[name] = 'reference' if k is None else 'kernel'
print(json.dumps(where, indent=1))
ok = cuda.get('backend') == 'cuda' and str(cuda.get('selftest', '')).startswith('passed')
print('RESULT: cuda backend', cuda.get('backend'), '|', cuda.get('ops'), '| selftest', cuda.get('selftest'),
      '| hash_encode kernel', where.get('hash_encode'))
raise SystemExit(0 if ok else 1)
PY"

# -k cuda: the CUDA-parametrised cases (the cpp / interpreter cases run in CI); tests/triton/test_hash.py needs
# Nerfstudio's HashEncoding.
TESTS="tests/ops tests/test_ext.py tests/test_selftest.py tests/triton/test_register_cuda.py"
[ "$HAVE_NS" = 1 ] && TESTS="$TESTS tests/triton/test_hash.py"
stage b-tests 150 "for f in $TESTS; do test -e \$f || { echo missing \$f; exit 1; }; done
  $PY -m pytest -q -p no:cacheprovider --collect-only -k cuda $TESTS | tail -n 1" "
  $PY -m pytest -q -p no:cacheprovider --maxfail=25 -k cuda $TESTS -rfEs --junitxml='$OUTDIR/b-tests.xml' 2>&1 | tail -n 60
  rc=\${PIPESTATUS[0]}
  echo \"RESULT: \$(grep -Eo '[0-9]+ (passed|failed|skipped|errors?|deselected)' '$OUTDIR/b-tests.log' | tail -n 5 | paste -sd ' ' -)\"
  exit \$rc"

stage c-sanitize 120 "test -f benchmarks/gpu/parity_small.py && $PY benchmarks/gpu/parity_small.py --dry-run" "
  SAN=\$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
  [ -n \"\$SAN\" ] || { echo 'NOTE: compute-sanitizer not found (PATH, /usr/local/cuda/bin)'; exit 1; }
  rc=0
  for tool in memcheck initcheck; do
    \"\$SAN\" --tool \$tool --error-exitcode 3 --print-limit 20 $PY benchmarks/gpu/parity_small.py; r=\$?
    echo \"RESULT: \$tool rc=\$r\"; [ \$r = 0 ] || rc=\$r
  done
  exit \$rc"

stage d-sync 90 "$PY benchmarks/gpu/sync_audit.py --dry-run" "
  $PY benchmarks/gpu/sync_audit.py --out '$OUTDIR/sync-audit.json' | tee /dev/stderr | sed -n 's/^\([a-z ]*\): \([0-9]* syncs.*\)/RESULT: \1: \2/p'"

# nerfacc: wait for the background build (or check a carried build imports).
HAVE_NERFACC=0
if wanted nerfacc; then
  t0=$(date +%s)
  if [ -n "$NERFACC_PID" ]; then
    wait "$NERFACC_PID"; rc=$?
    if [ $rc = 0 ]; then row nerfacc ok "$(( $(date +%s) - t0 )) (waited)" "$(grep RESULT: "$OUTDIR/nerfacc.log" | sed 's/^RESULT: //')"; HAVE_NERFACC=1
    else row nerfacc FAILED "$(( $(date +%s) - t0 )) (waited)" "build rc=$rc: $(grep -v '^\s*$' "$OUTDIR/nerfacc.log" | tail -n 1 | cut -c1-160)"; FAILED=1; fi
  elif "$PY" benchmarks/gpu/build_nerfacc.py --site "$CARRY/site" --dry-run >"$OUTDIR/nerfacc.log" 2>&1; then
    if [ "$MODE" = run ] && [ "$HAVE_GPU" = 1 ]; then
      "$PY" -c 'from nerfacc import csrc' >>"$OUTDIR/nerfacc.log" 2>&1 && HAVE_NERFACC=1
      row nerfacc "$([ $HAVE_NERFACC = 1 ] && echo ok || echo FAILED)" 0 "carried nerfacc csrc imports: $HAVE_NERFACC"
    else row nerfacc skipped 0 "no GPU ($MODE); patched nerfacc source present"; fi
  else
    row nerfacc skipped 0 "$(tail -n 1 "$OUTDIR/nerfacc.log")"
  fi
fi

stage b-nerfacc 90 "test -f tests/test_nerfacc_parity.py
  [ $HAVE_NERFACC = 1 ] || [ $HAVE_GPU = 0 ] || { echo 'nerfacc CUDA extension unavailable (see nerfacc row)'; exit 2; }" "
  $PY -m pytest -q -p no:cacheprovider --maxfail=25 -k cuda tests/test_nerfacc_parity.py -rfEs 2>&1 | tail -n 40
  rc=\${PIPESTATUS[0]}
  echo \"RESULT: \$(grep -Eo '[0-9]+ (passed|failed|skipped|errors?|deselected)' '$OUTDIR/b-nerfacc.log' | tail -n 5 | paste -sd ' ' -)\"
  exit \$rc"

# The issue's layouts and traversal configurations (bench_backends.py --help); --no-nerfacc when it did not build.
BB_ARGS="--layout geo30 4096x48 4096x96 131072x128 --traversal 0:1 0.00390625:4 --repeat 10 --warmup 2"
NO_NERFACC=$([ "$HAVE_NERFACC" = 1 ] || echo --no-nerfacc)
BT_SETUP="$PY benchmarks/bench_traversal.py --help >/dev/null || exit 1"
stage e-bench 200 "set -e
  $PY benchmarks/gpu/check_flags.py benchmarks/bench_backends.py --device cuda $BB_ARGS --backend triton $NO_NERFACC
  $PY benchmarks/bench_backends.py --device cpu --rays 64 --spp 8 --res 16 --traversal 0:1 0.00390625:4 --repeat 1 \
    --warmup 0 --no-nerfacc --no-torch --only traversal >/dev/null  # (the traversal specs parse after argparse)
  if [ -f benchmarks/bench_traversal.py ]; then $BT_SETUP; else echo 'bench_traversal.py: not in this checkout'; fi
  if [ $HAVE_NS = 1 ]; then $PY benchmarks/gpu/check_flags.py benchmarks/bench_hash.py --device cuda --half --points 1048576
  else echo 'bench_hash.py: Nerfstudio does not import, no hash rows'; fi" "
  rc=0
  $PY benchmarks/bench_backends.py --device cuda $BB_ARGS $NO_NERFACC --note 'gpu_check.sh' \
    --out '$OUTDIR/backends-cuda.md' || { rc=1; echo 'NOTE: bench_backends (default backend) failed'; }
  echo 'NOTE: bench_backends default backend done'
  $PY benchmarks/bench_backends.py --device cuda $BB_ARGS --backend triton $NO_NERFACC --only rendering scan sampling \
    --note 'gpu_check.sh --backend triton' --out '$OUTDIR/backends-triton.md' || { rc=1; echo 'NOTE: bench_backends --backend triton failed'; }
  if [ -f benchmarks/bench_traversal.py ]; then
    $PY benchmarks/bench_traversal.py --device cuda --out '$OUTDIR/traversal-cuda.md' || { rc=1; echo 'NOTE: bench_traversal failed'; }
  fi
  if [ $HAVE_NS = 1 ]; then
    $PY benchmarks/bench_hash.py --device cuda --half --points 1048576 --out '$OUTDIR/hash-cuda.md' || { rc=1; echo 'NOTE: bench_hash failed'; }
  fi
  echo \"RESULT: tables in \$(cd '$OUTDIR' && ls *.md | grep -v summary | paste -sd ' ' -)\"
  exit \$rc"

stage f-train 330 "test -n '$DATA' && test -f '$DATA/transforms_train.json' \
    || { echo 'no lego-400 data: pass --data DIR (or run --prepare with the data beside the repo)'; exit 2; }
  $PY benchmarks/gpu/check_flags.py --require nerfstudio.scripts.train benchmarks/bench_train.py \
    --method nerfaccel-lego --data '$DATA' --times 120 --psnr-target 30 --eval-views 5 --test-views 5 --out '$OUTDIR' \
    --tag train-lego-gpu-check" "
  $PY benchmarks/bench_train.py --method nerfaccel-lego --data '$DATA' --times 120 --psnr-target 30 --eval-views 5 \
    --test-views 5 --out '$OUTDIR' --tag train-lego-gpu-check 2>&1 | tail -n 30
  rc=\${PIPESTATUS[0]}
  echo \"RESULT: bench_train rc=\$rc (table in $OUTDIR/train-lego-gpu-check.md)\"
  exit \$rc"

TOTAL=$(( $(date +%s) - START ))
echo >>"$SUMMARY"
echo "Total: ${TOTAL} s (budget ${BUDGET} s). Setup: $MATCH_NOTE; $WHEEL_NOTE; nerfstudio importable: $HAVE_NS; data: ${DATA:-none}." >>"$SUMMARY"
pack
cat "$SUMMARY"
# --dry-run succeeds when every stage's setup succeeded (each stage then reports "skipped").
exit $FAILED
