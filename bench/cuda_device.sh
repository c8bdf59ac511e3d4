#!/usr/bin/env bash
# The CUDA check of issue 21 (item 4) on a borrowed GPU machine without internet, from the repository root:
#
#     bash bench/cuda_device.sh        # with the folder .whl/ carried along and $OUT set; under 9 minutes
#
# 1. installs the carried wheels (.whl/*.whl: the project's dependencies the machine lacks) into /tmp/site, and the
#    project itself (editable; the repository on PYTHONPATH if that fails);
# 2. builds mamba-ssm from its carried sdist for this GPU's architecture only (its setup.py names eight; one builds in a
#    few minutes), logging to $OUT/mamba_build.log;
# 3. runs bench/bench_cuda.py in the time left, whether or not the build worked (without mamba-ssm the scan parity
#    fails and the distillation and search parts still run);
# 4. leaves in $OUT: device.log (everything printed), mamba_build.log, cuda.json (bench/results/cuda.json) and
#    benchmarks.md (docs/benchmarks.md with the new section).
# Exit status: 0 when mamba-ssm built and every check of the benchmark passed.
set -uo pipefail

: "${OUT:?set OUT to the folder whose files come back}"
BUDGET_SECONDS=540 # the whole script; each step gets at most what is left of it
BUILD_TIMEOUT=420
MAMBA_SDIST=.whl/mamba_ssm-2.3.2.post1.tar.gz

step() { printf '\n=== [%d s] %s\n' "$SECONDS" "$*"; }
seconds_left() { echo $((BUDGET_SECONDS - SECONDS)); }
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; } # timeout's status, after TERM or after KILL

install_dependencies() {
    step "carried wheels -> /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site
    # Nothing can be reached from here: transformers and datasets read local folders only, not the Hub first.
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python3 -m pip list 2>/dev/null | grep -i -E \
        '^(accelerate|datasets|fsspec|huggingface.hub|jsonargparse|nevergrad|pandas|pyarrow|setuptools|transformers|triton|wheel) '

    step "the project (editable, offline)"
    if ! timeout 120 python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
        echo "the editable install failed: the repository goes on PYTHONPATH instead"
        export PYTHONPATH="$PWD:$PYTHONPATH"
    fi
}

# Builds mamba-ssm for this GPU into python3's site-packages; sets MAMBA_NOTE (one sentence for the benchmark's
# markdown) and returns non-zero when mamba-ssm does not import afterwards.
build_mamba() {
    step "mamba-ssm from its sdist, for this GPU only"
    local arch source_dir limit start status why
    arch=$(python3 -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())') || return 1
    rm -rf /tmp/mamba && mkdir -p /tmp/mamba && tar -xzf "$MAMBA_SDIST" -C /tmp/mamba || return 1
    source_dir=$(echo /tmp/mamba/mamba_ssm-*)
    python3 - "$source_dir/setup.py" "$arch" <<'PATCH' || return 1
import sys
from pathlib import Path

# setup.py appends a -gencode pair per architecture its nvcc supports (sm_75 ... sm_121: eight with CUDA 13); naming
# only this GPU's keeps the build to minutes. torch's extension builder adds none of its own when -gencode is given.
path, arch = Path(sys.argv[1]), sys.argv[2]
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
text = path.read_text()
if text.count(anchor) != 1:
    sys.exit(f"{path} changed: no single line starting {anchor.strip()!r} to name the architecture before")
only_this_gpu = f'    cc_flag = ["-gencode", "arch=compute_{arch},code=sm_{arch}"]  # EvoNets: this GPU only\n\n'
path.write_text(text.replace(anchor, only_this_gpu + anchor))
print(f"setup.py: building for sm_{arch} only")
PATCH
    limit=$(($(seconds_left) - 60)) # leave the benchmark a minute at least
    [ "$limit" -gt "$BUILD_TIMEOUT" ] && limit=$BUILD_TIMEOUT
    [ "$limit" -lt 1 ] && limit=1 # `timeout 0` would never stop it
    start=$SECONDS
    # MAMBA_FORCE_BUILD: setup.py would otherwise try to download a prebuilt wheel first, and fail without internet.
    MAMBA_FORCE_BUILD=TRUE MAX_JOBS=$(nproc) timeout -k 10 "$limit" \
        python3 -m pip install -v --no-build-isolation --no-deps --no-index "$source_dir" >"$OUT/mamba_build.log" 2>&1
    status=$?
    tail -n 5 "$OUT/mamba_build.log"
    if [ "$status" -ne 0 ]; then
        timed_out "$status" && why="stopped at its $limit s limit" || why="exit status $status, see mamba_build.log"
    elif ! python3 -c 'from mamba_ssm.ops.selective_scan_interface import selective_scan_fn'; then
        why="built, but it does not import: see device.log"
    else
        MAMBA_NOTE="mamba-ssm $(python3 -c 'import mamba_ssm; print(mamba_ssm.__version__)') was built from its sdist \
for sm_$arch in $((SECONDS - start)) s ($(nproc) cores)."
        echo "$MAMBA_NOTE"
        return 0
    fi
    MAMBA_NOTE="mamba-ssm's build from its sdist for sm_$arch failed after $((SECONDS - start)) s ($why)."
    echo "$MAMBA_NOTE"
    return 1
}

run_check() {
    step "machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
    nvcc --version | tail -n 2
    python3 -c 'import sys, torch; print("Python", sys.version.split()[0], "torch", torch.__version__, torch.version.cuda)'
    echo "$(nproc) cores"

    install_dependencies || { echo "FAILED: the carried wheels did not install"; return 1; }
    MAMBA_NOTE="mamba-ssm could not be built (see device.log)."
    build_mamba
    local build_status=$? limit bench_status

    limit=$(($(seconds_left) - 15)) # 15 s to copy the results
    [ "$limit" -lt 60 ] && limit=60  # overrun the budget a little rather than give the benchmark no time at all
    step "bench/bench_cuda.py, $limit s at most"
    PYTHONUNBUFFERED=1 timeout -k 10 "$limit" python3 bench/bench_cuda.py --note "$MAMBA_NOTE"
    bench_status=$?
    timed_out "$bench_status" && echo "FAILED: bench_cuda.py ran out of time; cuda.json holds the parts it finished"

    step "results -> \$OUT"
    cp bench/results/cuda.json "$OUT/cuda.json"
    cp docs/benchmarks.md "$OUT/benchmarks.md"
    ls -l "$OUT"
    echo "mamba-ssm build: exit $build_status; bench_cuda.py: exit $bench_status; $SECONDS s in all"
    [ "$build_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
}

run_check 2>&1 | tee "$OUT/device.log"
exit "${PIPESTATUS[0]}"
