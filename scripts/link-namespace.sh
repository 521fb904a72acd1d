#!/usr/bin/env bash
# Build the installed `specdec.*` namespace as a tree of links into a source checkout (pyproject.toml maps the
# top-level folders into it): scripts/link-namespace.sh DEST makes DEST/specdec, importable with DEST on sys.path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$1
rm -rf "$dest/specdec" && mkdir -p "$dest/specdec"
for f in "$root"/specdec/*; do ln -s "$f" "$dest/specdec/"; done
for d in kernels draft_service verifier_service orchestrator bench; do ln -s "$root/$d" "$dest/specdec/$d"; done
