#!/usr/bin/env bash
# Create or refresh .venv with mmrec installed (editable) plus its test, report, int8 and distributed extras.
# A no-op after the first run unless pyproject.toml changed, so CI re-runs and repeated demos stay fast.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.mmrec-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned explicitly first: this pair is served from the build machine's disk, and torchvision must match torch.
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.14.1}" "${TORCHVISION_SPEC:-torchvision==0.29.1}"
  .venv/bin/python -m pip install -q -e '.[test,report,int8,distributed]'
  echo "$want" > "$stamp"
fi
