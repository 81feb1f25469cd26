#!/usr/bin/env bash
# Run checkov on terraform/ and dataflow/Dockerfile offline, from its own venv (.venv-checkov at the repo root) so its pins
# never touch the project venv (apache-beam). Exits non-zero when a check fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-checkov"
if [ ! -x "$venv/bin/checkov" ]; then
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet checkov
fi
cd "$root"
"$venv/bin/checkov" -d terraform --framework terraform --skip-download --quiet --compact "$@"
exec "$venv/bin/checkov" -f dataflow/Dockerfile --framework dockerfile --skip-download --quiet \
  --compact "$@"
