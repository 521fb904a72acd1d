"""`python -m specdec.healthcheck [HOST:PORT] [--service NAME]`: exit 0 when the gRPC health v1 status is
SERVING, 1 otherwise. For container health checks: it imports only grpc (no torch), so a check costs ~0.2 s.

TLS: set SPECDEC_TLS_CA (and SPECDEC_TLS_SERVER_NAME) as for the services' clients. Health checks need no token.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The service's health status name (SERVING, NOT_SERVING, ...) or the RPC error's code name."""
    ca = os.environ.get("SPECDEC_TLS_CA", "")
    if ca:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        server_name = os.environ.get("SPECDEC_TLS_SERVER_NAME", "")
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[no-any-return]  # grpc.Call has code()
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.healthcheck", description=__doc__.split("\n")[0])
    default = f"127.0.0.1:{os.environ.get('SPECDEC_PORT', '50051')}"
    parser.add_argument("address", nargs="?", default=default, help="HOST:PORT (default 127.0.0.1:$SPECDEC_PORT)")
    parser.add_argument("--service", default="", help="a service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    status = check(args.address, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
