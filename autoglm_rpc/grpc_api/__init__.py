"""The gRPC face: thin servicers between protobuf messages and the request core (`generation`, `model`), the
one error boundary and the taxonomy's map to gRPC status (`errors`, `status`), protobuf conversion and field
checks (`convert`, `wire`), and the server's interceptors (`auth`, `health_watch`, `malformed`, `handlers`)."""
