"""specdec: lossless speculative decoding as gRPC microservices."""

__version__ = "0.1.0"
