"""The committed generated code is exactly what grpcio-tools produces from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.generate(tmp_path)
    committed_dir = ROOT / "specdec" / "v1"
    assert {p.name for p in generated} == {p.name for p in committed_dir.glob("*_pb2*.py*")}
    for path in generated:
        assert path.read_bytes() == (committed_dir / path.name).read_bytes(), f"{path.name} is stale: regenerate"


def test_every_rpc_and_field_is_commented() -> None:
    for proto in (ROOT / "protos" / "specdec" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("option", "//"))
            is_rpc = stripped.startswith("rpc ")
            if (is_field or is_rpc) and not stripped.startswith(("syntax", "package", "import")):
                above = lines[i - 1].strip()
                enum_value = stripped.split("=")[0].strip().isupper() and stripped.split("=")[0].strip() != ""
                assert above.startswith("//") or enum_value, f"{proto.name}:{i + 1} has no comment: {stripped}"
