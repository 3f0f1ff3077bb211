# Sourced by scripts/*.sh: find Python >= 3.12 interpreters.
# Sets FOUND (["3.12"]=path, ["3.13"]=path), PYTHON (the one to build the venv with) and puts each
# interpreter's folder first on PATH (tox finds interpreters by name). Needs a log() function.
is_312_plus() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

declare -A FOUND=()   # "3.12" -> interpreter path
consider() {
    local py=$1 minor
    is_312_plus "$py" || return 0
    minor=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    [[ -n ${FOUND[$minor]:-} ]] || FOUND[$minor]=$py
}
for name in python3.13 python3.12 python3; do
    path=$(command -v "$name" 2>/dev/null) || continue
    consider "$path"
done
PYENV_BIN=$(command -v pyenv 2>/dev/null || true)
[[ -z $PYENV_BIN && -x ${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv ]] && PYENV_BIN=${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv
if [[ -n $PYENV_BIN ]]; then
    # pyenv shims may not work here: ask for each version's own folder
    while read -r version; do
        prefix=$("$PYENV_BIN" prefix "$version" 2>/dev/null) || continue
        [[ -x $prefix/bin/python ]] && consider "$prefix/bin/python"
    done < <("$PYENV_BIN" versions --bare 2>/dev/null | sort -rV)
fi
if [[ -z ${FOUND[3.12]:-} && -z ${FOUND[3.13]:-} ]]; then
    echo "error: no Python >= 3.12 found (tried python3.13, python3.12, python3 and pyenv versions);" \
         "install one (e.g. pyenv install 3.12) and run again" >&2
    exit 2
fi
PYTHON=${FOUND[3.12]:-${FOUND[3.13]}}
for minor in 3.12 3.13; do
    # tox finds each interpreter by name on PATH; put their real folders first
    [[ -n ${FOUND[$minor]:-} ]] && PATH="$(dirname "${FOUND[$minor]}"):$PATH"
done
export PATH UV_PYTHON_DOWNLOADS=never
log "Python: ${FOUND[3.12]:-none} (3.12), ${FOUND[3.13]:-none} (3.13)"

