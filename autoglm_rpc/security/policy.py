"""The security section, turned once at start into what both edges enforce: who may call, how much, and TLS.

`Security.from_settings` reads the API keys (file and inline), checks the high-priority owners against them and
sets up the per-key rate limiter; a bad file or owner stops the server with a ValueError naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from autoglm_rpc.core.config_sections import SecuritySettings
from autoglm_rpc.security import tls
from autoglm_rpc.security.keys import ApiKeys
from autoglm_rpc.security.priority import PriorityPolicy
from autoglm_rpc.security.rate_limit import RateLimiter


@dataclass(frozen=True)
class Security:
    """`keys` None: no authentication. The limiter and the priority policy are shared by gRPC and HTTP."""

    settings: SecuritySettings
    keys: ApiKeys | None
    limiter: RateLimiter
    priority: PriorityPolicy

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> Security:
        keys = ApiKeys.from_settings(settings.api_keys_file, settings.api_keys)
        limiter = RateLimiter(settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute)
        priority = PriorityPolicy.from_setting(settings.high_priority_owners, keys.names if keys else None)
        return cls(settings, keys, limiter, priority)

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """The gRPC port's TLS credentials (mutual with tls_client_ca), or None for plaintext."""
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        return tls.server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
