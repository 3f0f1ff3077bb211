#!/usr/bin/env bash
# Set up everything and run the test matrix: bash scripts/test.sh [tox env list]
#
# Finds Python >= 3.12 (python3.13 / python3.12 on PATH, then pyenv), makes a venv (.venv unless
# SPARK_CKPT_VENV says otherwise), installs the project with its test extras and both plugins,
# starts a throwaway PostgreSQL cluster and a moto S3 server on loopback (unless
# SPARK_CKPT_TEST_PG_DSN / SPARK_CKPT_TEST_S3_ENDPOINT already name servers), runs tox, and stops
# every server it started.
#   bash scripts/test.sh                          # py312 + py313 x core, postgres, s3
#   bash scripts/test.sh py312-core               # one env
#   SPARK_CKPT_FAST=1 bash scripts/test.sh        # pytest in the venv only, no tox
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SPARK_CKPT_VENV:-$ROOT/.venv}
log() { printf '\n== %s\n' "$*" >&2; }

# -- Python (>= 3.12, found on PATH or through pyenv) ---------------------------------------------
# shellcheck source=scripts/find-python.sh
source "$ROOT/scripts/find-python.sh"

# -- venv and packages ---------------------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
    log "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
log "installing spark-ckpt, its plugins and test tools"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[test]" -e plugins/spark-ckpt-postgres -e "plugins/spark-ckpt-s3[test]" \
    -e "plugins/spark-ckpt-otel[test]" \
    "moto[s3]" flask flask-cors tox-uv
BIN=$VENV/bin

# -- servers --------------------------------------------------------------------------------------------
PG_ROOT="" PG_BIN="" MOTO_PID=""
cleanup() {
    local status=$?
    if [[ -n $MOTO_PID ]]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
    if [[ -n $PG_ROOT ]]; then
        runas_pg "$PG_BIN/pg_ctl" -D "$PG_ROOT/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_ROOT"
    fi
    exit $status
}
trap cleanup EXIT INT TERM

runas_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -z ${SPARK_CKPT_TEST_PG_DSN:-} ]]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z $PG_BIN && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing PostgreSQL (Debian package)"
        apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    if [[ -n $PG_BIN ]]; then
        PG_PORT=$(free_port)
        PG_ROOT=$(mktemp -d /tmp/spark-ckpt-pg.XXXXXX)
        chmod 755 "$PG_ROOT"
        [[ $(id -u) == 0 ]] && chown postgres:postgres "$PG_ROOT"
        runas_pg "$PG_BIN/initdb" -D "$PG_ROOT/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
        runas_pg "$PG_BIN/pg_ctl" -D "$PG_ROOT/data" -l "$PG_ROOT/log" -w \
            -o "-p $PG_PORT -k $PG_ROOT -c listen_addresses=127.0.0.1" start >/dev/null
        export SPARK_CKPT_TEST_PG_DSN="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
        log "PostgreSQL on 127.0.0.1:$PG_PORT"
    else
        log "no PostgreSQL server binaries: the postgres tests will be skipped"
    fi
fi

export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
if [[ -z ${SPARK_CKPT_TEST_S3_ENDPOINT:-} ]]; then
    S3_PORT=$(free_port)
    "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >/dev/null 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
        sleep 0.1
    done
    export SPARK_CKPT_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
    log "moto S3 server on 127.0.0.1:$S3_PORT (pid $MOTO_PID)"
fi

# -- tests ----------------------------------------------------------------------------------------------
if [[ -n ${SPARK_CKPT_FAST:-} ]]; then
    log "pytest in $VENV"
    "$BIN/python" -m pytest tests -q
    "$BIN/python" -m pytest plugins/spark-ckpt-postgres/tests -q
    "$BIN/python" -m pytest plugins/spark-ckpt-s3/tests -q
    "$BIN/python" -m pytest plugins/spark-ckpt-otel/tests -q
    exit 0
fi

if [[ $# -gt 0 ]]; then
    ENVS=$1
else
    ENVS=""
    for minor in 312 313; do
        if [[ -n ${FOUND[${minor:0:1}.${minor:1}]:-} ]]; then
            ENVS+="${ENVS:+,}py$minor-core,py$minor-postgres,py$minor-s3"
            if [[ $minor == 312 ]]; then ENVS+=",py312-otel"; fi
        else
            log "Python ${minor:0:1}.${minor:1} not found: its tox envs are left out"
        fi
    done
fi
log "tox -e $ENVS"
"$BIN/tox" run -e "$ENVS"
