#!/usr/bin/env bash
# Fresh machine to report: set up .venv, then run the whole chain on EfficientNet-Lite0 (reports/demo/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-venv.sh"
cd "$root"
exec "$root/.venv/bin/calibkit" demo "$@"
