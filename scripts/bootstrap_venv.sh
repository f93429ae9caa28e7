#!/usr/bin/env bash
# Create .venv from Python 3.12 (PATH or pyenv) and install fedsilo with its dev extras.
# Usage: bootstrap_venv.sh VENV STAMP. Skips work when STAMP (pyproject hash) exists.
set -euo pipefail
venv=$1 stamp=$2

find_python() {
    for cand in python3.12 python3; do
        if command -v "$cand" >/dev/null 2>&1 \
            && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            command -v "$cand"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local v
        v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n 1)
        if [ -n "$v" ]; then echo "$(pyenv root)/versions/$v/bin/python3.12"; return 0; fi
    fi
    return 1
}

if [ ! -x "$venv/bin/python" ]; then
    if ! py=$(find_python); then
        echo "error: Python 3.12 not found on PATH or through pyenv." >&2
        echo "       Install it (e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv') and re-run." >&2
        exit 1
    fi
    echo "creating $venv with $py"
    "$py" -m venv "$venv"
fi
rm -f "$venv"/.installed-*
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --progress-bar off -e '.[dev]'
touch "$stamp"
echo "environment ready: $venv"
