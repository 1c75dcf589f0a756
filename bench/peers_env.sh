#!/usr/bin/env bash
# Builds the interpreter that `ringload bench --peer-python` runs the peer contenders in
# (torchcodec, decord, SPDL), on a fresh machine, from the package registries.
#
#   bash bench/peers_env.sh [VENV]     # default: $RINGLOAD_PEERS_VENV or ~/.cache/ringload/peers-venv
#   ringload bench --peer-python VENV/bin/python
#
# The peers live in their own venv because PyPI's torchcodec 0.17 links libtorch_cuda and does
# not load beside the CPU torch that ringload pins. Nothing here is needed by ringload itself:
# Debian's ffmpeg (the shared libraries torchcodec and SPDL load) is installed only for this venv's use.
set -euo pipefail

VENV=${1:-${RINGLOAD_PEERS_VENV:-$HOME/.cache/ringload/peers-venv}}
PYTHON=${PYTHON:-python3}

# torchcodec and SPDL load the system's libavcodec/libavformat/... (FFmpeg 4 to 7); decord ships FFmpeg 4.1.
if ! ldconfig -p | grep -q 'libavcodec\.so\.'; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
# torch 2.14.1 is what torchcodec 0.17 is built against (a CUDA build; it runs on the CPU here).
# One install per peer: a peer that cannot be had is named, and the others still install.
failed=()
for reqs in "torch==2.14.1 torchcodec==0.17.0" "decord==0.6.0" "spdl"; do
    # shellcheck disable=SC2086  # one word per requirement
    "$VENV/bin/python" -m pip install -q $reqs || failed+=("$reqs")
done

# One line per peer: its version, or why it does not import.
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "torchcodec", "decord", "spdl.io"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:12s} {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:  # report and go on: one missing peer must not hide the others
        print(f"{name:12s} FAILED: {type(exc).__name__}: {exc}")
PY
echo "peer interpreter: $VENV/bin/python"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'could not install: pip install %s\n' "${failed[@]}" >&2
    exit 1
fi
