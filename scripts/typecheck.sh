#!/usr/bin/env bash
# mypy over the installed layout: the top-level folders are mapped into the `specdec.*` namespace by
# pyproject.toml, which mypy cannot follow through setuptools' editable finder, so check a link tree.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck"
rm -rf "$tree" && mkdir -p "$tree/specdec"
for f in "$root"/specdec/*; do ln -s "$f" "$tree/specdec/"; done
for d in kernels draft_service verifier_service orchestrator bench; do ln -s "$root/$d" "$tree/specdec/$d"; done
cd "$tree"
exec "${PYTHON:-python}" -m mypy --config-file "$root/pyproject.toml" -p specdec "$@"
