#!/usr/bin/env bash
# Install biomedgpt and its pinned stack into .venv/ at the repo root.
# Safe to re-run: every finished step is skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIOMEDGPT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s\n' "$*"; }
have() { "$VENV/bin/python" - "$@" <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    got = md.version(name)
    if want and got != want:
        sys.exit(1)
PYEOF
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)

if ! have torch==2.14.1 torchvision==0.29.1; then
  step "installing torch 2.14.1 / torchvision 0.29.1"
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
fi
if ! have cython numpy setuptools wheel; then
  step "installing build tools (cython numpy setuptools wheel)"
  "${PIP[@]}" cython numpy setuptools wheel
fi
if ! have fairseq-fixed==0.12.3.1; then
  step "building fairseq-fixed 0.12.3.1 (compiles, ~3 min)"
  "${PIP[@]}" --no-build-isolation fairseq-fixed==0.12.3.1
fi
if ! have biomedgpt || [ "$ROOT/pyproject.toml" -nt "$VENV/.biomedgpt-installed" ]; then
  step "installing biomedgpt (editable)"
  "${PIP[@]}" --no-build-isolation -e "$ROOT[test]"
  touch "$VENV/.biomedgpt-installed"
fi
step "environment ready: $VENV"
