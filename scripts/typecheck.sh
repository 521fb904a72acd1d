#!/usr/bin/env bash
# mypy over the installed layout: the top-level folders are mapped into the `specdec.*` namespace by
# pyproject.toml, which mypy cannot follow through setuptools' editable finder, so check a link tree.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/build/typecheck"
bash "$root/scripts/link-namespace.sh" "$tree"
cd "$tree"
exec "${PYTHON:-python}" -m mypy --config-file "$root/pyproject.toml" -p specdec "$@"
