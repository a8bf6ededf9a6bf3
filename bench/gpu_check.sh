#!/usr/bin/env bash
# GPU check for gpucell on a machine with an NVIDIA GPU: builds a venv, then runs bench/gpu_check.py.
#
#   bench/gpu_check.sh [ARGS]           on the GPU machine; JSON lines on stdout (also $OUT/gpu_check.jsonl);
#                                       ARGS go to gpu_check.py (--reps N, --array-bytes B, --big-gib G, ...)
#   bench/gpu_check.sh --cpu-dry-run    anywhere: cpu pool, CUDA steps skipped
#   bench/gpu_check.sh --fetch-wheels   here, before: adds cp312 x86-64 wheels of gpucell's dependencies
#                                       (and its build backend) to .whl/, for a GPU machine with no index
#
# Offline install: when .whl/ holds wheels, every one of them is installed into the venv with
# --no-index (keep one version of each package there), then gpucell itself, editable. The device
# call must carry the folder (carry: [".whl"]; /.whl/ is git-ignored). With no .whl/ the ordinary
# index is used. Under 8 minutes in all: setup (~30-70 s), tests/test_hardware.py (<45 s), then
# gpu_check.py (<360 s, its phases are bounded inside that).
# Environment: PYTHON (the interpreter that holds torch; default python3), GPUCELL_CHECK_VENV
# (default /tmp/gpucell-gpu-check-venv), GPUCELL_WHEELS (default .whl/), GPU_CHECK_TIMEOUT
# (seconds for gpu_check.py, default 360), WHEEL_PYTHON_VERSION (for --fetch-wheels, default 3.12).
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="${GPUCELL_WHEELS:-$REPO/.whl}"
VENV="${GPUCELL_CHECK_VENV:-/tmp/gpucell-gpu-check-venv}"
BASE_PY="${PYTHON:-python3}"
START=$SECONDS

say() { echo "gpu_check: $*" >&2; }
# One JSON line in the same shape as gpu_check.py's, for failures before Python takes over.
json_error() { printf '{"system": "gpucell", "metric": "%s", "error": "%s"}\n' "$1" "${2//\"/\'}"; }

fetch_wheels() {
    # Runs where an index is reachable. Wheels for the GPU machine's Python (3.12, x86-64 manylinux):
    # the runtime dependencies from pyproject.toml plus the build backend, for an offline `pip install -e`.
    local pyver="${WHEEL_PYTHON_VERSION:-3.12}"
    local reqs
    reqs="$("$BASE_PY" - "$REPO/pyproject.toml" <<'EOF'
import sys
try:
    import tomllib
except ImportError:
    import tomli as tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
# editables: what hatchling imports for an editable install.
for req in doc["project"]["dependencies"] + doc["build-system"]["requires"] + ["editables"]:
    print(req)
EOF
)" || { say "cannot read pyproject.toml"; return 1; }
    mkdir -p "$WHEELS"
    local platforms=()
    for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
             manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
             manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    mapfile -t req_array <<<"$reqs"
    "$BASE_PY" -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
        "${platforms[@]}" -d "$WHEELS" "${req_array[@]}" || return 1
    # numpy is on the GPU image already (2.x) and is the one big wheel: leave it behind (64 MiB limit).
    rm -f "$WHEELS"/numpy-*.whl
    say "wheels in $WHEELS: $(ls "$WHEELS" | wc -l) files, $(du -sh "$WHEELS" | cut -f1)"
}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    fetch_wheels
    exit $?
fi

make_venv() {
    # --system-site-packages so the machine's torch is used. When BASE_PY is itself a venv (the GPU
    # image's python3 is /opt/torch/.venv), "system" means the base interpreter's site-packages,
    # not the venv's where torch lives, so a .pth file adds the parent's site-packages after ours.
    rm -rf "$VENV"
    if ! "$BASE_PY" -m venv --system-site-packages "$VENV" 2>/dev/null; then
        "$BASE_PY" -m venv --system-site-packages --without-pip "$VENV" || return 1
    fi
    local parent_sites venv_site
    parent_sites="$("$BASE_PY" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p))')"
    venv_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$parent_sites" >"$venv_site/_gpucell_parent_site.pth"
}

vpip() {
    # The venv's pip when it has one, else the base interpreter's pip aimed at the venv.
    if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip "$@"
    else
        "$BASE_PY" -m pip --python "$VENV/bin/python" "$@"
    fi
}

install_gpucell() {
    # The labextension's npm build hook (if pyproject has one) needs a network and is not needed here.
    export HATCH_BUILD_NO_HOOKS=true
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        # Every carried wheel goes into the venv, ahead of the machine's packages: the image may hold
        # an older protobuf or grpcio that satisfies pyproject's ranges but not the generated code.
        say "installing gpucell offline from $WHEELS"
        vpip install -q --no-index --no-deps --ignore-installed "$WHEELS"/*.whl >&2 || return 1
        vpip install -q --no-index --no-deps --no-build-isolation -e "$REPO" >&2 && return 0
        # The editable build failed (a build hook, say): import gpucell from the checkout instead.
        # Workers inherit PYTHONPATH (the local provisioner starts them with `python -m gpucell...`).
        say "editable install failed; using PYTHONPATH=$REPO"
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        return 2
    fi
    say "installing gpucell from the package index"
    vpip install -q -e "$REPO" >&2
}

say "repo $REPO, venv $VENV, base python $("$BASE_PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

if ! make_venv; then
    json_error setup_venv "could not create a venv with $BASE_PY"
    exit 1
fi
install_gpucell
rc=$?
if [[ $rc -ne 0 && $rc -ne 2 ]]; then
    json_error install "pip could not install gpucell or its dependencies (see stderr)"
    exit 1
elif [[ $rc -eq 2 ]]; then
    json_error install "editable install failed; ran from PYTHONPATH with the carried wheels"
fi
printf '{"system": "gpucell", "metric": "setup_s", "value": %d, "unit": "s", "n": 1}\n' $((SECONDS - START))

export PYTHONUNBUFFERED=1
results=/dev/null
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    results="$OUT/gpu_check.jsonl"
fi

# The NVML inventory and allocator tests, on real devices here (they skip the NVML-present test on
# a machine without a GPU). A few seconds; --noconftest keeps the suite's heavier fixtures out.
t0=$SECONDS
if timeout -k 5 45 "$VENV/bin/python" -m pytest -q -p no:cacheprovider --noconftest -rs \
        "$REPO/tests/test_hardware.py" >&2; then
    printf '{"system": "gpucell", "metric": "hardware_tests", "value": "passed", "unit": "", "n": 1, "s": %d}\n' \
        $((SECONDS - t0)) | tee "$results"
else
    json_error hardware_tests "tests/test_hardware.py failed (see stderr)" | tee "$results"
fi
# The whole check stays under 8 minutes: setup above, then this bounded run (killed with its children).
timeout -k 10 "${GPU_CHECK_TIMEOUT:-360}" "$VENV/bin/python" -u "$REPO/bench/gpu_check.py" "$@" | tee -a "$results"
status=${PIPESTATUS[0]}
if [[ $status -eq 124 || $status -eq 137 ]]; then
    json_error gpu_check "timed out after ${GPU_CHECK_TIMEOUT:-360} s" | tee -a "$results"
fi
say "done in $((SECONDS - START)) s (status $status)"
exit "$status"
