"""Domain errors. Each carries the gRPC status it maps to; servicers map them in one place."""

from __future__ import annotations

import grpc


class SpecdecError(Exception):
    """Base class: a client-visible failure with a precise gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(SpecdecError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRange(SpecdecError):
    code = grpc.StatusCode.OUT_OF_RANGE


class NotFound(SpecdecError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(SpecdecError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(SpecdecError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(SpecdecError):
    """A configured capacity (sessions, queued requests) is full: refused at once, never queued beyond it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(SpecdecError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
