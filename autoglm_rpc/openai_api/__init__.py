"""The OpenAI-compatible HTTP API: routes over the same front end, keys, limits and telemetry as gRPC.

`build_http_server(...)` assembles it (outermost first): telemetry (span, metrics, access log), API keys, body
size and content type, then the FastAPI routes; and binds its listener. See docs/openai-api.md.
"""

from __future__ import annotations

from autoglm_rpc.core.config_sections import ServerSettings
from autoglm_rpc.core.frontend import Frontend
from autoglm_rpc.core.requests import RequestLimits
from autoglm_rpc.openai_api.body import max_json_values
from autoglm_rpc.openai_api.connections import HttpLimits
from autoglm_rpc.openai_api.edge import ApiKeyMiddleware, BodyLimitMiddleware
from autoglm_rpc.openai_api.routes import OpenAIRoutes, build_api
from autoglm_rpc.openai_api.server import HttpServer, HttpTls
from autoglm_rpc.security.policy import Security
from autoglm_rpc.telemetry import Telemetry


def build_http_server(
    settings: ServerSettings, frontend: Frontend, telemetry: Telemetry, security: Security, limits: RequestLimits
) -> HttpServer | None:
    """The HTTP listener bound to http_host:http_port (default host: the gRPC host), or None with `--no-http`.

    It shares the gRPC server's section (`server`), keys, rate limits, TLS files, request limits and telemetry.
    """
    if not settings.http:
        return None
    routes = OpenAIRoutes(frontend, telemetry.generation(), limits)
    pool = frontend.pool
    api = build_api(routes, lambda: pool.is_serving and not pool.is_draining)
    body_limit = BodyLimitMiddleware(api, settings.max_message_bytes, max_json_values(frontend.max_context_tokens))
    app = telemetry.http_middleware(ApiKeyMiddleware(body_limit, security.keys))
    tls = None
    files = security.settings
    if files.tls_cert is not None and files.tls_key is not None:
        tls = HttpTls(files.tls_cert, files.tls_key, files.tls_client_ca)
    limits = HttpLimits.from_settings(settings)
    return HttpServer.bind(app, settings.http_host or settings.host, settings.http_port, tls, limits)
