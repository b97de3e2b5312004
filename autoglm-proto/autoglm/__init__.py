"""Generated Python stubs of the autoglm gRPC contract (`proto/autoglm/`); regenerate with `make proto`."""
