"""specdec: lossless speculative decoding as gRPC microservices."""

from specdec._hub_kernels import install_hub_kernels_finder

__version__ = "0.1.0"

install_hub_kernels_finder()
