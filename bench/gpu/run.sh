#!/usr/bin/env bash
# The acceptance run on a GPU machine, from the repository root:
#     bash bench/gpu/run.sh [bench.gpu options, e.g. --parts step,step_vit_g --budget-s 200]
# Installs DALI from the carried .offline/ parts once they are all there (.offline/deps travels with
# the last one), runs `python -m bench.gpu` into $BENCH_GPU_DIR (default /tmp/bench-gpu, which keeps
# the rows of earlier calls on the same machine), and, when $OUT is set, packs the whole report
# folder into $OUT/bench-gpu.tar.gz with README.md and gpu_run.json beside it (3 files). A copy of the
# tree without .git names its commit through VMAE2_GIT_COMMIT and VMAE2_GIT_DIRTY (bench/gpu/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -f .offline/deps/install.sh ]; then
    bash .offline/deps/install.sh || { echo "DALI install from .offline/ failed (all dali-* parts carried?)"; exit 1; }
    export PYTHONPATH=$PWD/.offline/site:$PYTHONPATH
fi
if ! git rev-parse --git-dir >/dev/null 2>&1 && [ -z "${VMAE2_GIT_COMMIT:-}" ]; then
    echo "warning: no git checkout here and VMAE2_GIT_COMMIT is not set: the report names commit 'unknown'" \
         "(pass VMAE2_GIT_COMMIT=<hash> VMAE2_GIT_DIRTY=0|1, bench/gpu/README.md)"
fi
report=${BENCH_GPU_DIR:-/tmp/bench-gpu}
python3 -m bench.gpu --out "$report" --shards "${BENCH_GPU_SHARDS:-.offline/shards}" "$@"
rc=$?
if [ -n "${OUT:-}" ] && [ -d "$report" ]; then
    tar -czf "$OUT/bench-gpu.tar.gz" -C "$(dirname "$report")" "$(basename "$report")"
    cp "$report/README.md" "$report/gpu_run.json" "$OUT/" 2>/dev/null
fi
exit $rc
