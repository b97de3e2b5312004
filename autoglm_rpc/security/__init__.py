"""Who may call and how much: API keys, per-key rate limits and priority, TLS credentials (the gRPC interceptors
that apply them are in `grpc_api/`, the HTTP edge in `openai_api/`)."""
