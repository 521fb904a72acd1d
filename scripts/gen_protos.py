"""Regenerate specdec/v1/*_pb2*.py(i) from protos/ with grpcio-tools.

Run: python scripts/gen_protos.py [OUT_DIR]   (default: the repository root)
The generated files are committed; tests/test_protos.py checks that regeneration reproduces them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.glob("specdec/v1/*.proto"))
    grpc_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_dir / "specdec" / "v1"
    (package / "__init__.py").write_text('"""Generated gRPC code for the specdec.v1 protos."""\n')
    return sorted(package.glob("*_pb2*.py*"))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path)
