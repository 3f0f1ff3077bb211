#!/usr/bin/env bash
# The main job, on a fresh machine: find Python >= 3.12, make a venv (.venv unless SPARK_CKPT_VENV
# says otherwise), install spark-ckpt, then run the crash-and-recover demo on the embedded SQLite store.
#   bash scripts/demo.sh                  # ./demo-checkpoints.db
#   bash scripts/demo.sh --crash-after 5  # any `spark-ckpt demo` option
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SPARK_CKPT_VENV:-$ROOT/.venv}
log() { printf '== %s\n' "$*" >&2; }

# shellcheck source=scripts/find-python.sh
source "$ROOT/scripts/find-python.sh"
if [[ ! -x $VENV/bin/python ]]; then
    log "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
log "installing spark-ckpt"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -v "is ignored" >&2 || true
"$VENV/bin/python" -c "import spark_ckpt" || { echo "error: spark-ckpt did not install" >&2; exit 2; }
exec "$VENV/bin/spark-ckpt" demo "$@"
