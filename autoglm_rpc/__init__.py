"""autoglm-rpc: a gRPC text-generation service for Hugging Face causal-LM checkpoints.

This package is the gateway (grpc.aio, tokenization, routing) and the Python client; the model side lives in the
`workers` package and the generated stubs in `autoglm.v1`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autoglm-rpc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
