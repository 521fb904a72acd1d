"""specdec: lossless speculative decoding as gRPC microservices."""

from specdec._hub_kernels import preload_hub_kernels

__version__ = "0.1.0"

preload_hub_kernels()
