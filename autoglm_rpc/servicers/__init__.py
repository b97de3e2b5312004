"""The gRPC servicers: thin adapters between protobuf messages and the front end."""
