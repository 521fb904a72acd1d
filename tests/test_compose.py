"""The docker compose deployment, for real: a private Docker engine (scripts/docker-engine.sh: no firewall
changes, stopped afterwards), a base image built locally without a registry, the project image, then
`docker compose up --wait` of compose.yaml with the collector swapped for our OTLP receiver
(docker/compose.test.yaml). A request through the published orchestrator port must reproduce the target's own
greedy decode, its spans must reach the receiver from all three services in one trace, and `down` must stop
every container gracefully.

Needs root, apt (Debian) and the PyPI index. In CI (CI set) a missing prerequisite fails the test; on a
developer laptop it skips. Takes ~4-5 minutes from a bare machine, ~1 minute with the images cached
(SPECDEC_DOCKER_DIR, default $SPECDEC_CACHE_DIR/docker).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from specdec.modeling import default_model_dir
from tests.helpers import assert_greedy_identical, hf_greedy, load, prerequisite

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "scripts" / "docker-engine.sh"
BASE_IMAGE = "specdec-base:bookworm"
PROJECT = "specdec-test"  # never the user's own `specdec` project
SERVICES = ["verifier", "draft", "orchestrator", "otel-collector"]
PROMPT = (
    "Add type hints to this function and keep everything else the same:\n\n"
    "def mean(values):\n    total = 0\n    for value in values:\n        total += value\n"
    "    return total / len(values)\n"
)
MAX_NEW = 48
timings: dict[str, float] = {}


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900, step: str = "") -> str:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if step:
        timings[step] = time.perf_counter() - start
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


def host_network_state() -> dict[str, str]:
    """What a careless engine would change: IP forwarding and the firewall's rules."""
    state = {"ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()}
    if shutil.which("iptables"):
        rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, timeout=30)
        state["iptables"] = rules.stdout if rules.returncode == 0 else f"unavailable: {rules.stderr.strip()}"
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, str]]:
    """A private dockerd for this module; the host's network state is the same before and after."""
    prerequisite(os.geteuid() == 0, "the compose test needs root (it installs and starts a Docker engine)")
    prerequisite(bool(shutil.which("apt-get") or shutil.which("dockerd")), "no apt-get to install a Docker engine")
    env = dict(os.environ)
    before = host_network_state()
    run(["bash", str(ENGINE), "install"], env, step="install engine + compose plugin")
    after_install = host_network_state()  # installing docker.io may add iptables itself: compare from here
    run(["bash", str(ENGINE), "start"], env, step="start dockerd")
    for line in run(["bash", str(ENGINE), "env"], env).split():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    try:
        yield env
    finally:
        run(["bash", str(ENGINE), "stop"], env)
        assert host_network_state() == after_install, "the Docker engine changed the host's network state"
        assert before["ip_forward"] == after_install["ip_forward"]


@pytest.fixture(scope="module")
def deployment(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The image built, the stack up and healthy; yields the orchestrator's host port and the spans file."""
    work = tmp_path_factory.mktemp("compose")
    extras = ROOT / "docker" / "build-extras"
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():  # pip in the build reaches PyPI through the same proxy as this machine
        shutil.copy(ca, extras / "ca-certificates.crt")
    if not list(extras.glob("torch-*.whl")):  # the CPU wheel this machine has; the image installs it
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "torch==2.13.0", "-d", str(extras)])
    # The converted default model, linked (not copied) into a cache folder the containers' user may write.
    cache, spans = work / "cache", work / "spans"
    (cache / "models").mkdir(parents=True)
    spans.mkdir()
    model = Path(default_model_dir())
    if subprocess.run(["cp", "-al", str(model), str(cache / "models")], capture_output=True).returncode != 0:
        shutil.copytree(model, cache / "models" / model.name)
    for path in (work, cache, spans, *cache.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    port = free_port()
    env = {
        **engine,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "SPECDEC_BASE_IMAGE": BASE_IMAGE,
        "SPECDEC_TORCH_INDEX_URL": "",  # the wheel comes from build-extras
        "SPECDEC_MODEL_CACHE": str(cache),
        "SPECDEC_SPANS_DIR": str(spans),
        "SPECDEC_ORCHESTRATOR_PORT": str(port),
    }
    compose = ["docker", "compose", "-f", "compose.yaml", "-f", "docker/compose.test.yaml"]
    run(["bash", str(ENGINE), "base-image", BASE_IMAGE], env, step="base image (debootstrap)")
    run([*compose, "build", "verifier"], env, step="build project image")  # one image serves every service
    try:
        run([*compose, "up", "-d", "--wait", "--no-build", "--pull", "never", *SERVICES], env, step="up --wait")
        yield {"port": port, "spans": spans / "spans.jsonl", "compose": compose, "env": env}
        run([*compose, "stop"], env, step="stop")
        states = run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
                      "--format", "{{.Names}} {{.Status}}"], env)  # fmt: skip
        assert "Exited (137)" not in states, f"a container had to be killed:\n{states}"
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color"], env=env, capture_output=True, text=True, cwd=ROOT)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        run([*compose, "down", "-v", "--timeout", "10"], env, step="down")
        print("compose test timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def read_spans(path: Path, wanted_services: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The receiver's spans once every service's batch exporter has flushed (they export every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if len({s["service"] for s in spans}) >= wanted_services or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def test_compose_stack_decodes_losslessly_and_traces_across_the_three_services(deployment: dict[str, Any]) -> None:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "specdec.orchestrator.cli", "generate",
         "--orchestrator", f"127.0.0.1:{deployment['port']}", "--chat", "--prompt", PROMPT,
         "--max-new-tokens", str(MAX_NEW), "--draft", "ngram", "--k", "4", "--k-controller", "fixed", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    timings["generate"] = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    # Greedy identity with the target alone, decoded here by HF generate on the same weights.
    target = load("")
    reference = hf_greedy(target, result["prompt_token_ids"], MAX_NEW)
    assert_greedy_identical(target, result["prompt_token_ids"], result["token_ids"], reference)
    assert result["stats"]["accepted_tokens"] > 0, result["stats"]  # the draft really ran in its container

    # One trace across the three containers, with the loop's spans where they belong.
    spans = read_spans(deployment["spans"], wanted_services=3)
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    requests = [t for t in by_trace.values() if any(s["name"].startswith("chat ") for s in t)]
    assert len(requests) == 1, f"expected one request trace, got {len(requests)}"
    names = Counter((s["service"], s["name"]) for s in requests[0])
    steps = result["stats"]["steps"]
    assert names[("specdec-orchestrator", "specdec.step")] == steps, names
    assert names[("specdec-verifier", "verify")] == steps, names
    assert names[("specdec-draft", "propose")] >= 1, names
    assert {s["service"] for s in requests[0]} == {"specdec-orchestrator", "specdec-verifier", "specdec-draft"}

    # `specdec trace` reads what the receiver wrote.
    report = subprocess.run(
        [sys.executable, "-m", "specdec.orchestrator.cli", "trace", str(deployment["spans"])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "where the time went" in report.stdout
