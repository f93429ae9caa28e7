#!/usr/bin/env bash
# The whole suite on SQLite, then the database-sensitive tests again on PostgreSQL.
# Extra arguments go to the SQLite run (e.g. -m "not slow" for a quick local pass).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p test-output

check() {  # pytest's exit 5 means no test ran: a broken suite, never a pass
    [ "$1" -eq 5 ] && echo "error: pytest collected no tests" >&2
    [ "$1" -eq 0 ] || exit "$1"
}

echo "== pytest on SQLite"
env -u DATABASE_URL "$PY" -m pytest "$@"
check $?

pg_url=${FEDSILO_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}
echo "== pytest -m postgres on PostgreSQL ($pg_url)"
DATABASE_URL=$pg_url "$PY" -m pytest -m postgres -p no:cacheprovider
check $?
