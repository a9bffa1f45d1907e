#!/usr/bin/env bash
# The main job in one go: set up, run the tiny default curriculum (ES on add, then reverse) as a sweep with
# AWD off (awd.lambda=0) and on (the default lambda), then the drift report over the sweep.
# About 3-4 minutes on 2 CPU cores (the one-time warm-up of the tiny model included). Extra arguments are
# passed to `esft train`, e.g. `bash scripts/demo.sh seed=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
sweep="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/esft train -m awd.lambda=0,1 "hydra.sweep.dir=$sweep" "$@"
.venv/bin/esft drift-report "$sweep" --out "$sweep/report"
echo "drift report: $sweep/report/report.html (and report.md, summary.json, summary.csv, *.png)"
