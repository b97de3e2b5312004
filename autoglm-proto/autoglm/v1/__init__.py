"""Stubs of `autoglm.v1`: generation_pb2(_grpc), model_pb2(_grpc) and types_pb2, produced by `make proto`."""
