#!/usr/bin/env bash
# The main job: install (if needed), then embed the bundled catalogue, train, evaluate and print recommendations.
# Arguments go to `mmrec demo` (e.g. --images-root ../shared/data/ml-latest-small/images for posters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/mmrec demo "$@"
