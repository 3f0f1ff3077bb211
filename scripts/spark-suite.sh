#!/usr/bin/env bash
# Run Spark's own test suite with every Graph.run routed through spark-ckpt
# (pytest -p spark_ckpt.testing.route_runs), against the spark installed in the venv.
#   bash scripts/spark-suite.sh                    # clones wensheng/spark at 1214164
#   bash scripts/spark-suite.sh ~/src/spark        # an existing Spark checkout
#   bash scripts/spark-suite.sh ~/src/spark -k graph_state   # more pytest options
#   SPARK_CKPT_ROUTE_RUNS=0 bash scripts/spark-suite.sh      # the same run, not routed
#   SPARK_GIT=/path/to/spark.git bash scripts/spark-suite.sh  # clone from a mirror
# Only the checkout's tests/ is copied out (its spark/ package would shadow the installed one).
# pytest-asyncio, which Spark's tests need, goes to a temporary folder if the venv lacks it: in the
# venv it would break spark-ckpt's own suite (its unset-loop-scope warning is an error there).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${SPARK_CKPT_VENV:-$ROOT/.venv}/bin/python
SPARK_COMMIT=1214164
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [[ $# -gt 0 && -d $1 ]]; then
    SRC=$1
    shift
else
    SRC=$WORK/spark
    git clone -q "${SPARK_GIT:-https://github.com/wensheng/spark}" "$SRC"
    git -C "$SRC" checkout -q "$SPARK_COMMIT"
fi
[[ -d $SRC/tests ]] || { echo "no tests/ in $SRC" >&2; exit 2; }

mkdir -p "$WORK/suite"
cp -r "$SRC/tests" "$WORK/suite/"

export PYTHONPATH=${PYTHONPATH:-}
if ! "$PY" -c 'import pytest_asyncio' 2>/dev/null; then
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$WORK/deps" 'pytest-asyncio>=1.2,<2'
    PYTHONPATH=$WORK/deps${PYTHONPATH:+:$PYTHONPATH}
fi
timeout=()
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    timeout=(--timeout 120)
fi

cd "$WORK/suite"
"$PY" -c 'import spark, sys; print("spark", spark.__file__, file=sys.stderr)'
"$PY" -m pytest tests -p spark_ckpt.testing.route_runs -p no:cacheprovider -p no:randomly \
    "${timeout[@]}" -rfE "$@"
