"""Who may call and how much: API keys, the authentication interceptor, per-key rate limits, TLS credentials."""
