"""The `specdec` command line: serve each service, or generate text (embedded or against a server)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from specdec import __version__, tracing
from specdec.bench.cli import add_bench_parser, apply_config, run_bench
from specdec.draftspec import SYNTAX as DRAFT_SYNTAX
from specdec.errors import SpecdecError
from specdec.limits import (
    DEFAULT_BATCH_WINDOW_S,
    DEFAULT_DRAFT_TIMEOUT_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_S,
    ServiceLimits,
)
from specdec.orchestrator.k_control import CONTROLLERS
from specdec.profiling import profiling
from specdec.security import Security, SecurityConfigError, read_token_file
from specdec.tracing import TracingConfigError
from specdec.v1 import orchestrator_pb2
from specdec.wire import message_dict

log = logging.getLogger("specdec")


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"SPECDEC_{name}", default)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=_env("DEVICE", "auto"), help="auto|cpu|cuda|mps (env SPECDEC_DEVICE)")
    p.add_argument(
        "--dtype",
        default=_env("DTYPE", "auto"),
        help="auto (float32 on CPU, bfloat16 on accelerators)|float32|bfloat16|float16 (env SPECDEC_DTYPE)",
    )


DEFAULT_SHUTDOWN_GRACE_S = 30.0  # as Kubernetes' default termination grace period


def _add_listen_flags(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", default_port)),
        help="0 binds a free port (env SPECDEC_PORT)",
    )
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to bind (env SPECDEC_HOST)")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(_env("SHUTDOWN_GRACE", str(DEFAULT_SHUTDOWN_GRACE_S))),
        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish before they are cancelled "
        f"(default {DEFAULT_SHUTDOWN_GRACE_S:g}; env SPECDEC_SHUTDOWN_GRACE)",
    )


def _add_metrics_flag(p: argparse.ArgumentParser, what: str) -> None:
    port = _env("METRICS_PORT")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(port) if port else None,
        help=f"serve Prometheus metrics on this port{what} (0: a free one; env SPECDEC_METRICS_PORT)",
    )


def _add_http_flag(p: argparse.ArgumentParser) -> None:
    http = _env("HTTP_PORT")
    p.add_argument(
        "--http-port",
        type=int,
        default=int(http) if http else None,
        help="also serve the OpenAI-compatible HTTP API on this port (0: a free one; env SPECDEC_HTTP_PORT)",
    )


def _add_profile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=_env("PROFILE"),
        help="write a torch profiler Chrome trace of the model forwards into DIR on exit (env SPECDEC_PROFILE)",
    )


def _add_session_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-sessions",
        type=int,
        default=int(_env("MAX_SESSIONS", DEFAULT_MAX_SESSIONS)),
        help="open sessions per verifier / draft service; beyond it RESOURCE_EXHAUSTED (env SPECDEC_MAX_SESSIONS)",
    )
    p.add_argument(
        "--session-ttl",
        type=float,
        default=float(_env("SESSION_TTL", DEFAULT_SESSION_TTL_S)),
        help="seconds a session may sit idle before it expires; 0: never (env SPECDEC_SESSION_TTL)",
    )


def _add_batching_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=float(_env("BATCH_WINDOW_MS", str(DEFAULT_BATCH_WINDOW_S * 1e3))),
        help="verifier: how long a verify batch waits for other live sessions' blocks; 0: only what is queued "
        "(env SPECDEC_BATCH_WINDOW_MS)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=int(_env("MAX_BATCH", str(DEFAULT_MAX_BATCH))),
        help="verifier: most sessions' blocks in one forward pass; 1: no batching (env SPECDEC_MAX_BATCH)",
    )


def _add_graph_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--static-kv",
        choices=("auto", "on", "off"),
        default=_env("STATIC_KV", "auto"),
        help="verifier: keep sessions' KV caches in a pre-allocated pool of slots (no per-step cache growth; CUDA "
        "graphs need it); auto: for Llama-family targets, on any device (env SPECDEC_STATIC_KV)",
    )
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "on", "off"),
        default=_env("CUDA_GRAPHS", "auto"),
        help="verifier: run verify passes as captured CUDA graphs over a static KV cache; auto: when the target is "
        "a Llama-family model on CUDA (env SPECDEC_CUDA_GRAPHS)",
    )
    p.add_argument(
        "--graph-slots",
        type=int,
        default=_env("GRAPH_SLOTS"),
        help="verifier: sessions on the static KV cache at once (default 8); others use a dynamic one "
        "(env SPECDEC_GRAPH_SLOTS)",
    )
    p.add_argument(
        "--graph-max-len",
        type=int,
        default=_env("GRAPH_MAX_LEN"),
        help="verifier: tokens per static KV-cache slot (default 2048); a longer session moves to a dynamic cache "
        "(env SPECDEC_GRAPH_MAX_LEN)",
    )


def _graph_options(args: argparse.Namespace) -> Any:
    from specdec.static_cache import DEFAULT_GRAPH_MAX_LEN, DEFAULT_GRAPH_SLOTS, GraphOptions  # loads transformers

    slots = DEFAULT_GRAPH_SLOTS if args.graph_slots is None else int(args.graph_slots)
    max_len = DEFAULT_GRAPH_MAX_LEN if args.graph_max_len is None else int(args.graph_max_len)
    return GraphOptions(args.cuda_graphs, slots, max_len, args.static_kv)


def _service_limits(args: argparse.Namespace) -> ServiceLimits:
    window_ms = getattr(args, "batch_window_ms", DEFAULT_BATCH_WINDOW_S * 1e3)
    max_batch = getattr(args, "max_batch", DEFAULT_MAX_BATCH)
    return ServiceLimits(args.max_sessions, args.session_ttl or None, window_ms / 1e3, max_batch)


def _add_request_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=int(_env("MAX_CONCURRENT_REQUESTS", DEFAULT_MAX_CONCURRENT_REQUESTS)),
        help="requests generating at once (env SPECDEC_MAX_CONCURRENT_REQUESTS)",
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=int(_env("MAX_QUEUED_REQUESTS", DEFAULT_MAX_QUEUED_REQUESTS)),
        help="requests waiting for a slot; beyond it RESOURCE_EXHAUSTED / HTTP 429 (env SPECDEC_MAX_QUEUED_REQUESTS)",
    )
    p.add_argument(
        "--draft-timeout",
        type=float,
        default=float(_env("DRAFT_TIMEOUT", DEFAULT_DRAFT_TIMEOUT_S)),
        help="seconds a draft proposal may take before the request goes on target-only (env SPECDEC_DRAFT_TIMEOUT)",
    )


def _limits(args: argparse.Namespace, **defaults: Any) -> Any:
    from specdec.orchestrator.core import Limits

    return Limits(
        max_concurrent_requests=args.max_concurrent_requests,
        max_queued_requests=args.max_queued_requests,
        draft_timeout_s=args.draft_timeout,
        **defaults,
    )


def _add_security_flags(p: argparse.ArgumentParser, server: bool, client: bool) -> None:
    """Token and TLS flags (each with a SPECDEC_* env); `server`: what this process requires of its callers,
    `client`: what it presents to the servers it calls (the orchestrator is both)."""
    does = "require (and send)" if server and client else "require" if server else "send"
    p.add_argument(
        "--auth-token",
        default=_env("AUTH_TOKEN", ""),
        help=f"{does} this bearer token on every gRPC call but health checks (env SPECDEC_AUTH_TOKEN)",
    )
    p.add_argument(
        "--auth-token-file",
        default=_env("AUTH_TOKEN_FILE", ""),
        help="read the token from this file, which keeps it out of `ps` (env SPECDEC_AUTH_TOKEN_FILE)",
    )
    if server:
        p.add_argument(
            "--tls-cert", default=_env("TLS_CERT", ""), help="serve TLS: certificate chain, PEM (env SPECDEC_TLS_CERT)"
        )
        p.add_argument(
            "--tls-key", default=_env("TLS_KEY", ""), help="the certificate's private key, PEM (env SPECDEC_TLS_KEY)"
        )
    verify = {
        (True, False): "require client certificates signed by this CA (mutual TLS)",
        (False, True): "verify the server's certificate against this CA (default: the system's roots)",
        (True, True): "require client certificates signed by this CA (mutual TLS) and verify the verifier's and "
        "draft service's certificates against it",
    }[(server, client)]
    p.add_argument("--tls-ca", default=_env("TLS_CA", ""), help=f"{verify}, PEM (env SPECDEC_TLS_CA)")
    if client:
        p.add_argument(
            "--tls-client-cert",
            default=_env("TLS_CLIENT_CERT", ""),
            help="for mutual TLS: the certificate to present"
            + (" (default: --tls-cert)" if server else "")
            + ", PEM (env SPECDEC_TLS_CLIENT_CERT)",
        )
        p.add_argument(
            "--tls-client-key", default=_env("TLS_CLIENT_KEY", ""), help="its private key (env SPECDEC_TLS_CLIENT_KEY)"
        )
        p.add_argument(
            "--tls-server-name",
            default=_env("TLS_SERVER_NAME", ""),
            help="verify server certificates against this name, not the address's host (env SPECDEC_TLS_SERVER_NAME)",
        )
        p.add_argument(
            "--tls",
            action="store_true",
            default=_env("TLS", "").lower() in ("1", "true", "yes"),
            help="connect with TLS even without certificate flags (env SPECDEC_TLS=1)",
        )


def _security(args: argparse.Namespace) -> Security:
    """The security flags as one config; its files are read now so that a bad path fails at start-up."""
    token = args.auth_token
    if args.auth_token_file:
        if token:
            raise SecurityConfigError("give --auth-token or --auth-token-file (or their env variables), not both")
        token = read_token_file(args.auth_token_file)
    security = Security(
        auth_token=token,
        tls_cert=getattr(args, "tls_cert", ""),
        tls_key=getattr(args, "tls_key", ""),
        tls_ca=args.tls_ca,
        tls_client_cert=getattr(args, "tls_client_cert", ""),
        tls_client_key=getattr(args, "tls_client_key", ""),
        tls_server_name=getattr(args, "tls_server_name", ""),
        tls=getattr(args, "tls", False),
    )
    security.check_files()
    return security


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description="Lossless speculative decoding over gRPC.")
    parser.add_argument("--version", action="version", version=f"specdec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service").add_subparsers(dest="service", required=True)
    verifier = serve.add_parser("verifier", help="the target model with per-session KV caches")
    _add_listen_flags(verifier, 50051)
    verifier.add_argument(
        "--target",
        default=_env("TARGET", ""),
        help="HF id or path; default SmolLM2-135M-Instruct (env SPECDEC_TARGET)",
    )
    _add_model_flags(verifier)
    _add_metrics_flag(verifier, "")
    _add_session_limit_flags(verifier)
    _add_batching_flags(verifier)
    _add_graph_flags(verifier)
    _add_security_flags(verifier, server=True, client=False)
    _add_profile_flag(verifier)

    draft = serve.add_parser("draft", help="draft models and n-gram lookup")
    _add_listen_flags(draft, 50052)
    draft.add_argument(
        "--preload",
        action="append",
        default=[s for s in _env("PRELOAD", "").split(",") if s],
        help="model:ID_OR_PATH, eagle[:DIR] or medusa[:DIR] to load at start-up; repeatable "
        "(env SPECDEC_PRELOAD, comma-separated)",
    )
    _add_model_flags(draft)
    _add_metrics_flag(draft, "")
    _add_session_limit_flags(draft)
    _add_security_flags(draft, server=True, client=False)
    _add_profile_flag(draft)

    orch = serve.add_parser("orchestrator", help="the public API")
    _add_listen_flags(orch, 50050)
    orch.add_argument("--verifier-addr", default=_env("VERIFIER_ADDR"), help="HOST:PORT (env SPECDEC_VERIFIER_ADDR)")
    orch.add_argument("--draft-addr", default=_env("DRAFT_ADDR"), help="HOST:PORT (env SPECDEC_DRAFT_ADDR)")
    orch.add_argument("--default-draft", default=_env("DEFAULT_DRAFT", "ngram"), help=DRAFT_SYNTAX)
    orch.add_argument("--default-k", type=int, default=int(_env("DEFAULT_K", 4)))
    orch.add_argument("--default-k-controller", default=_env("DEFAULT_K_CONTROLLER", "cost"), choices=CONTROLLERS)
    _add_http_flag(orch)
    _add_metrics_flag(orch, "")
    _add_request_limit_flags(orch)
    _add_security_flags(orch, server=True, client=True)

    everything = serve.add_parser("all", help="verifier, draft and orchestrator in one process")
    _add_listen_flags(everything, 50050)
    _add_http_flag(everything)
    _add_metrics_flag(everything, " (the orchestrator's; the verifier's on the next, the draft's on the one after)")
    everything.add_argument("--target", default=_env("TARGET", ""), help="HF id or path (env SPECDEC_TARGET)")
    _add_model_flags(everything)
    _add_request_limit_flags(everything)
    _add_session_limit_flags(everything)
    _add_batching_flags(everything)
    _add_security_flags(everything, server=True, client=True)
    _add_profile_flag(everything)

    gen = commands.add_parser("generate", help="generate text with speculative decoding")
    gen.add_argument("--prompt", required=True, help="raw prompt text (like OpenAI completions)")
    gen.add_argument("--chat", action="store_true", help="send the prompt as one user message via the chat template")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=0.0, help="0 = off")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--num-samples", type=int, default=1)
    gen.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    gen.add_argument("--draft", default="ngram", help=f"{DRAFT_SYNTAX} (none = target-only baseline)")
    gen.add_argument("--k", type=int, default=4, help="draft tokens per step (the starting K when adaptive)")
    gen.add_argument(
        "--k-controller",
        default="",
        choices=["", *CONTROLLERS],
        help="how K adapts: cost (the server's default: K per step from measured acceptance and step times, "
        "0 when drafting does not pay) | fixed | heuristic (HF's rule) | confidence (llama.cpp's rule)",
    )
    gen.add_argument("--k-max", type=int, default=8, help="the most draft tokens per step when adaptive")
    gen.add_argument(
        "--draft-ahead",
        choices=["on", "off"],
        default=None,
        help="draft the next block while one is verified (default: the server's, on)",
    )
    gen.add_argument(
        "--tree-nodes",
        type=int,
        default=0,
        help="token trees of up to N tokens per step, K deep, instead of chains of K (lossless policies; eagle builds "
        "them, other drafts answer with chains); 0 = chains",
    )
    gen.add_argument(
        "--draft-min-confidence", type=float, default=0.0, help="confidence controller: p_min (default 0.5)"
    )
    gen.add_argument(
        "--policy",
        default="",
        help="lossless: exact | rejection (default: by temperature); "
        "LOSSY (output may differ from the target's): typical | topk-agree | threshold",
    )
    gen.add_argument("--typical-epsilon", type=float, default=0.0, help="LOSSY typical: epsilon (default 0.09)")
    gen.add_argument("--typical-delta", type=float, default=0.0, help="LOSSY typical: delta (default 0.3)")
    gen.add_argument("--agree-top-m", type=int, default=0, help="LOSSY topk-agree: m (default 2)")
    gen.add_argument("--accept-threshold", type=float, default=0.0, help="LOSSY threshold: tau (default 0.1)")
    gen.add_argument("--logprobs", action="store_true", help="return the target's log-probabilities")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.add_argument(
        "--orchestrator",
        default=_env("ORCHESTRATOR"),
        help="HOST:PORT of a running orchestrator (else embedded)",
    )
    gen.add_argument("--target", default=_env("TARGET", ""), help="embedded mode: HF id or path of the target")
    _add_model_flags(gen)
    _add_security_flags(gen, server=False, client=True)  # with --orchestrator
    _add_profile_flag(gen)  # embedded mode only

    report = commands.add_parser(
        "trace", help="per-request waterfall and time split from a jsonl trace file (OTEL_TRACES_EXPORTER=jsonl)"
    )
    report.add_argument("file", help="the spans file (SPECDEC_TRACE_FILE of the services)")
    report.add_argument("--trace-id", default="", help="only this trace (a prefix of its id is enough)")
    report.add_argument("--width", type=int, default=40, help="characters of the waterfall's bars")
    receiver = commands.add_parser(
        "trace-receiver", help="an OTLP/gRPC trace receiver that writes the spans it gets as jsonl (`specdec trace`)"
    )
    receiver.add_argument("--out", required=True, help="the jsonl file to append spans to")
    receiver.add_argument("--port", type=int, default=int(_env("PORT", "4317")), help="0: any free (env SPECDEC_PORT)")
    receiver.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to bind (env SPECDEC_HOST)")
    add_bench_parser(commands, _add_model_flags, lambda p: _add_security_flags(p, server=False, client=True), _security)
    _add_train_draft_parser(commands)
    return parser


def _add_train_draft_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train-draft",
        help="train an EAGLE or Medusa draft head for a target on this machine (then --draft eagle:DIR / medusa:DIR)",
    )
    train.add_argument("--target", default=_env("TARGET", ""), help="HF id or path of the target (default model)")
    train.add_argument("--method", choices=["eagle", "medusa"], required=True)
    train.add_argument("--out", required=True, help="folder for model.safetensors and config.json")
    train.add_argument("--minutes", type=float, default=5.0, help="training time (data generation not included)")
    train.add_argument(
        "--prompts", action="append", default=[], help="jsonl prompt file(s) for the training data (default: shipped)"
    )
    train.add_argument("--max-new-tokens", type=int, default=160, help="answer length when generating data")
    train.add_argument("--gen-batch", type=int, default=96, help="prompts per batched generation call")
    train.add_argument("--draft-vocab", type=int, default=8192, help="draft vocabulary size (0: the whole vocabulary)")
    train.add_argument("--depth", type=int, default=3, help="eagle: unrolled drafting steps in training")
    train.add_argument(
        "--labels",
        choices=["target", "tokens"],
        default="target",
        help="distil the target's next-token distribution (target) or fit the data's next tokens (tokens)",
    )
    train.add_argument(
        "--freeze-lm-head", action="store_true", help="keep the draft vocabulary's rows of the target's LM head"
    )
    train.add_argument("--init", default="", help="continue from this trained head's folder (same target, vocabulary)")
    train.add_argument("--noise", type=float, default=0.05, help="eagle: input-feature noise, relative to their std")
    train.add_argument("--medusa-heads", type=int, default=4, help="medusa: number of heads")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine schedule over --minutes)")
    train.add_argument("--data-dir", default="", help="where generated training data is cached (default: the cache)")
    train.add_argument("--seed", type=int, default=0)
    _add_model_flags(train)


def _train_draft(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import shlex
    from pathlib import Path

    from specdec.draft_service.heads.train import TrainConfig, train
    from specdec.modeling import load_model

    lm = load_model(args.target, args.device, args.dtype)
    cfg = TrainConfig(
        method=args.method,
        minutes=args.minutes,
        draft_vocab=args.draft_vocab,
        max_new_tokens=args.max_new_tokens,
        gen_batch=args.gen_batch,
        depth=args.depth,
        noise=args.noise,
        labels=args.labels,
        freeze_lm_head=args.freeze_lm_head,
        init_from=args.init,
        medusa_heads=args.medusa_heads,
        lr=args.lr,
        seed=args.seed,
        prompt_files=list(args.prompts),
        data_dir=args.data_dir,
    )
    command = "specdec " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    train(lm, cfg, Path(args.out), command)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if args.command == "trace":
        return _trace_report(args)
    if args.command == "trace-receiver":
        from specdec.otlp_receiver import run as run_receiver

        run_receiver(args.out, args.port, args.host)
        return 0
    try:
        tracing.exporter_names()  # an unknown OTEL_TRACES_EXPORTER fails here, before anything starts
        if args.command == "serve":
            asyncio.run(_serve(args))
            return 0
        if args.command == "train-draft":
            return _train_draft(args, argv)
        if args.command == "bench":
            try:
                args = apply_config(parser, argv, args)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            return asyncio.run(run_bench(args))
        return asyncio.run(_generate(args))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except SpecdecError as exc:  # e.g. a target that cannot be loaded in embedded mode
        print(f"error: {exc.code.name}: {exc}", file=sys.stderr)
        return 1
    except (SecurityConfigError, TracingConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        tracing.shutdown()  # export the spans still buffered


def _trace_report(args: argparse.Namespace) -> int:
    from specdec.orchestrator.trace_report import report

    try:
        print(report(args.file, args.trace_id, args.width))
    except (OSError, ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from specdec.draft_service.core import DraftCore
    from specdec.draft_service.server import serve as serve_draft
    from specdec.modeling import load_model
    from specdec.orchestrator.server import serve as serve_orchestrator
    from specdec.verifier_service.server import serve_loading as serve_verifier_loading

    security = _security(args)
    if args.service == "all":
        from specdec.orchestrator.embedded import EmbeddedStack

        stack = EmbeddedStack(
            args.target,
            args.device,
            args.dtype,
            http_port=args.http_port,
            port=args.port,
            host=args.host,
            metrics_port=args.metrics_port,
            security=security,
            limits=_limits(args),
            service_limits=_service_limits(args),
            grace_s=args.shutdown_grace,
        )
        async with stack:
            _announce(args, stack.servers[-1])
            for name, server in zip(("verifier", "draft"), stack.servers, strict=False):
                if server.metrics is not None:
                    print(f"specdec {name} metrics on http://127.0.0.1:{server.metrics_port}/metrics", flush=True)
            with profiling(args.profile, "all"):
                await _wait_for_signal()
        return
    if args.service == "verifier":
        running = await serve_verifier_loading(
            lambda: load_model(args.target, args.device, args.dtype),
            args.port,
            args.host,
            args.metrics_port,
            security=security,
            limits=_service_limits(args),
            graphs=_graph_options(args),
        )  # listening (NOT_SERVING) while the model loads and warms up; SERVING when this returns
    elif args.service == "draft":
        preload = [p.removeprefix("model:") for p in args.preload]
        running = await serve_draft(
            DraftCore(args.device, args.dtype),
            args.port,
            args.host,
            preload,
            metrics_port=args.metrics_port,
            security=security,
            limits=_service_limits(args),
        )
    else:
        if not args.verifier_addr:
            raise SystemExit("serve orchestrator needs --verifier-addr (or SPECDEC_VERIFIER_ADDR)")
        limits = _limits(
            args,
            default_draft=args.default_draft,
            default_k=args.default_k,
            default_k_controller=args.default_k_controller,
        )
        running = await serve_orchestrator(
            args.verifier_addr,
            args.draft_addr,
            args.port,
            args.host,
            limits,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            security=security,
        )
    _announce(args, running)
    with profiling(getattr(args, "profile", None), args.service):
        await _wait_for_signal()
        await running.stop(grace=args.shutdown_grace)


def _announce(args: argparse.Namespace, running: Any) -> None:
    """The first stdout line names the bound port (scripts and tests read it when --port is 0)."""
    print(f"specdec {args.service} listening on {args.host}:{running.port}", flush=True)
    http = getattr(running.servicer, "http", None)
    if http is not None:
        print(f"specdec {args.service} OpenAI-compatible HTTP on http://{args.host}:{http.port}/v1", flush=True)
    if running.metrics is not None:
        name = "orchestrator" if args.service == "all" else args.service
        print(f"specdec {name} metrics on http://{args.host}:{running.metrics_port}/metrics", flush=True)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _generate(args: argparse.Namespace) -> int:
    from specdec.orchestrator.client import SpecdecClient

    request: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        num_samples=args.num_samples,
        stop=args.stop,
        return_logprobs=args.logprobs,
        draft=args.draft,
        k=args.k,
        k_controller=args.k_controller,
        k_max=args.k_max,
        draft_min_confidence=args.draft_min_confidence,
        draft_ahead=None if args.draft_ahead is None else args.draft_ahead == "on",
        tree_nodes=args.tree_nodes,
        policy=args.policy,
        policy_params={
            "typical_epsilon": args.typical_epsilon,
            "typical_delta": args.typical_delta,
            "agree_top_m": args.agree_top_m,
            "accept_threshold": args.accept_threshold,
        },
    )
    if args.chat:
        request["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        request["prompt"] = args.prompt

    if args.orchestrator:
        async with SpecdecClient(args.orchestrator, _security(args)) as client:
            response = await client.generate(**request)
    else:
        from specdec.orchestrator.embedded import EmbeddedStack

        stack = EmbeddedStack(target=args.target, device=args.device, dtype=args.dtype)
        async with stack, SpecdecClient(stack.address) as client:
            with profiling(args.profile, "generate"):
                response = await client.generate(**request)
    _print_response(response, args.json)
    return 0


def _print_response(response: orchestrator_pb2.GenerateResponse, as_json: bool) -> None:
    completions = list(response.completions)
    if as_json:
        many = len(completions) > 1
        out: dict[str, Any] = {
            "prompt_token_ids": list(response.prompt_token_ids),
            "token_ids": [list(c.token_ids) for c in completions] if many else list(completions[0].token_ids),
            "text": [c.text for c in completions] if many else completions[0].text,
            "finish_reason": [c.finish_reason for c in completions] if many else completions[0].finish_reason,
            "stats": message_dict(response.stats),
            "model": response.model,
            "draft": response.draft,
            "k": response.k,
            "policy": response.policy,
            "k_controller": response.k_controller,
            "seed": response.seed,
        }
        if any(c.logprobs for c in completions):
            out["logprobs"] = [list(c.logprobs) for c in completions] if many else list(completions[0].logprobs)
        print(json.dumps(out, ensure_ascii=False))
        return
    for c in completions:
        if len(completions) > 1:
            print(f"--- sample {c.index} ({c.finish_reason}) ---")
        print(c.text)
    s = response.stats
    print(
        f"[{response.model} | draft {response.draft}, k={response.k} ({response.k_controller}), {response.policy}] "
        f"{s.generated_tokens} tokens in {s.wall_ms / 1e3:.2f} s = {s.tokens_per_second:.1f} tok/s; "
        f"{s.steps} steps, acceptance {s.acceptance_rate:.0%}, mean accepted length {s.mean_accepted_length:.2f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    raise SystemExit(main())
