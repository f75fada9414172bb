#!/usr/bin/env bash
# Create .venv-peers: a virtualenv for the peer-library benchmark, separate from .venv.
#
#   bash benchmarks/peers/setup.sh && .venv-peers/bin/python benchmarks/peers/run.py
#
# Order matters: the CPU torch wheel goes in FIRST and is then pinned by a constraints
# file, so no peer can swap it for a CUDA build. After every peer the environment is
# checked (torch still 2.13.0+cpu, no nvidia-* packages); a peer that fails to install
# or to import is reported and left out -- run.py skips peers that are not importable.
# The peers are extras of this benchmark only, never dependencies of tdakit.
set -uo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-peers}
TORCH=${TORCH:-torch==2.13.0}
PY="$VENV/bin/python"
PIP="$PY -m pip"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV" || exit 1
fi
$PIP install -q --upgrade pip || exit 1
$PIP install -q "$TORCH" || { echo "setup: installing $TORCH failed" >&2; exit 1; }
CONSTRAINTS="$VENV/torch-constraint.txt"
$PY -c "import torch; print(f'torch=={torch.__version__}')" >"$CONSTRAINTS"
echo "setup: pinned $(cat "$CONSTRAINTS")"
$PIP install -q -c "$CONSTRAINTS" -e . psutil || exit 1

check_env() {  # torch unchanged and no CUDA wheels pulled in
    local listing
    listing=$($PIP list --format=freeze 2>/dev/null)
    if ! grep -qx "$(cat "$CONSTRAINTS")" <<<"$listing"; then
        echo "setup: torch changed after installing $1" >&2; return 1
    fi
    if grep -qi '^nvidia-' <<<"$listing"; then
        echo "setup: $1 pulled nvidia-* packages" >&2; return 1
    fi
}

install_peer() {  # install_peer NAME IMPORT [pip args...]
    local name=$1 module=$2; shift 2
    if $PIP install -q -c "$CONSTRAINTS" "$@" && check_env "$name" \
        && $PY -c "import $module" 2>/dev/null; then
        echo "setup: $name OK"
    else
        echo "setup: $name NOT available (install or import failed; see above)" >&2
    fi
}

install_peer captum captum captum
install_peer dattri dattri dattri
install_peer traker trak traker
# kronfluence declares a dependency on torchvision, which has no CPU-only wheel on PyPI
# (it would pull a CUDA torch): install it without dependencies, then the
# dependencies it actually imports. torchvision itself must stay absent.
install_peer kronfluence-deps accelerate accelerate einops einconv opt-einsum safetensors
install_peer kronfluence kronfluence --no-deps kronfluence
if $PY -c "import torchvision" 2>/dev/null; then
    echo "setup: torchvision is installed in $VENV; it must not be (CUDA wheels)" >&2
    exit 1
fi
# quanda is not installed: it requires torchvision (see docs/benchmarks.md).
check_env "the peers" || exit 1
$PIP list --format=freeze | grep -iE '^(torch|captum|dattri|traker|kronfluence|numpy|scipy)=='
