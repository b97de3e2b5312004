"""Assembles the service: settings in, started gRPC and HTTP servers with their worker pool out.

`build_app(settings)` binds the ports (0 picks a free one) and wires servicers, health and reflection, and the
OpenAI-compatible HTTP API on the same event loop (`openai_api`, unless `http` is off); `App.start()` starts both
servers and spawns the workers; `serve(settings)` runs it until SIGINT/SIGTERM. Health: service "" is
liveness (SERVING while the process runs); `autoglm.v1.GenerationService` is readiness (SERVING while at least one
worker is ready and the server is not draining).

Shutdown is a drain (`App.stop`): readiness turns NOT_SERVING first, new generation calls get UNAVAILABLE /
SERVER_DRAINING (HTTP: 503), the requests in flight get `grace_period` seconds to finish (those still running then
end with SERVER_DRAINING, saying so), then the gRPC and HTTP servers stop and the workers shut down. A second
SIGINT/SIGTERM cuts the grace short; its requests end SERVER_DRAINING saying the server was stopped by a second
signal. The workers ignore both signals, so one sent to the whole process group drains the same way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from autoglm.v1 import generation_pb2, model_pb2, model_pb2_grpc
from autoglm_rpc.core.config_sections import CheckpointSettings, ServerSettings
from autoglm_rpc.core.errors import ServerDraining
from autoglm_rpc.core.frontend import Frontend, ServedModel
from autoglm_rpc.core.requests import RequestLimits
from autoglm_rpc.grpc_api import wire
from autoglm_rpc.grpc_api.auth import AuthInterceptor
from autoglm_rpc.grpc_api.generation import Checked, GenerationServicer
from autoglm_rpc.grpc_api.health_watch import HealthWatchLimit
from autoglm_rpc.grpc_api.malformed import MalformedRequestInterceptor
from autoglm_rpc.grpc_api.model import ModelServicer
from autoglm_rpc.media.vision import read_vision_spec
from autoglm_rpc.pool.pool import WorkerPool
from autoglm_rpc.security import open_files
from autoglm_rpc.security.policy import Security
from autoglm_rpc.startup import binding
from autoglm_rpc.startup.config import Settings
from autoglm_rpc.startup.devices import plan_workers
from autoglm_rpc.startup.model_source import resolve_model_source, served_model_names
from autoglm_rpc.startup.stop_signals import StopSignals
from autoglm_rpc.telemetry import Telemetry
from autoglm_rpc.text.checkpoint import read_checkpoint_facts
from autoglm_rpc.text.tokenizer import TextTokenizer
from workers.protocol import RANDOM_WEIGHTS_MARKER

if TYPE_CHECKING:
    from autoglm_rpc.openai_api.server import HttpServer

logger = logging.getLogger(__name__)

GENERATION_SERVICE = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
MODEL_SERVICE = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


def server_options(server: ServerSettings) -> list[tuple[str, int]]:
    """Channel options: message limits for long prompts, and keepalive that tolerates long silent prefills."""
    return [
        ("grpc.max_receive_message_length", server.max_message_bytes),
        ("grpc.max_send_message_length", server.max_message_bytes),
        # Ping idle clients every 60 s and drop them after 20 s without an answer, so dead peers free their work.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Let clients keep a connection alive by pinging every 10 s or more, also while no data flows (a long
        # prefill sends nothing for a while).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Close each connection gracefully (GOAWAY) after about 5 minutes, so that clients balancing over a
        # headless Service re-resolve DNS and start using pods added since they connected; calls in flight
        # finish on the old connection (no max_connection_age_grace: it is unbounded).
        ("grpc.max_connection_age_ms", 300_000),
        binding.NO_PORT_SHARING,
    ]


@dataclass
class App:
    """The running service: the server, the port it bound, the pool and the health servicer."""

    settings: Settings
    server: grpc.aio.Server
    port: int
    pool: WorkerPool
    frontend: Frontend
    health: health.aio.HealthServicer
    telemetry: Telemetry
    http: HttpServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _cut_drain: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Start serving and spawn the workers; readiness turns SERVING when the first worker is ready."""
        self.telemetry.start()  # first: it binds the metrics port, which may fail
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(GENERATION_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.pool.add_listener(self._on_pool_change)
        # What start-up built (modules, tokenizer, apps) lives as long as the process: frozen, it is left out of
        # every later collection. Otherwise a burst of allocations (a flood of connections, a large body) set off
        # a full collection of some 450,000 objects that held the event loop, and every gRPC stream on it, for
        # 1 to 2 s on a loaded 2-core VM.
        gc.collect()
        gc.freeze()
        await self.server.start()
        if self.http is not None:
            self.http.start()
        self.pool.start()

    async def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait for the workers to load; raise RuntimeError if none could."""
        await self.pool.wait_until_settled(timeout or self.settings.pool.worker_start_timeout)
        if self.pool.fatal_error:
            raise RuntimeError(f"{self.pool.fatal_error}; fix the checkpoint or the settings")
        if not self.pool.num_ready:
            raise RuntimeError("no worker could load the model; the log above says why")

    async def stop(self, grace: float | None = None) -> None:
        """Drain (see `drain`), then stop the gRPC and HTTP servers and shut the workers down."""
        grace = self.settings.pool.grace_period if grace is None else grace
        await self.drain(grace)
        await self.health.enter_graceful_shutdown()
        # What is left are calls writing their last message, and health watchers: a second is plenty.
        await self.server.stop(min(1.0, grace))
        if self.http is not None:
            await self.http.stop()
        await self.pool.stop()
        self.frontend.images.close()
        self.telemetry.shutdown()

    async def drain(self, grace: float) -> None:
        """Readiness NOT_SERVING, new generations refused; wait up to `grace` s for those in flight to end."""
        self.pool.start_draining()
        await self.health.set(GENERATION_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.frontend.num_active:
            logger.info("draining: %d call(s) in flight, grace %.1fs", self.frontend.num_active, grace)
        idle = asyncio.ensure_future(self.frontend.wait_until_idle())
        cut = asyncio.ensure_future(self._cut_drain.wait())
        try:
            await asyncio.wait({idle, cut}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            cut.cancel()
        if self.frontend.num_active:
            by_signal = self._cut_drain.is_set()
            error = ServerDraining.stopped_by_second_signal() if by_signal else ServerDraining.grace_over(grace)
            why = "a second signal ended the drain" if by_signal else f"drain grace over ({grace:g}s)"
            num_failed = self.pool.fail_all(error)
            logger.warning(
                "%s: %d call(s) still open; %d request(s) in the workers end with SERVER_DRAINING",
                why, self.frontend.num_active, num_failed,
            )  # fmt: skip

    def cut_drain(self) -> None:
        """End a drain in progress now (a second SIGTERM): what is still running is cut, saying so."""
        self._cut_drain.set()

    def _on_pool_change(self) -> None:
        status = health_pb2.HealthCheckResponse
        if self.pool.is_draining:
            return  # readiness stays NOT_SERVING; drain() set it
        serving = status.SERVING if self.pool.is_serving else status.NOT_SERVING
        task = asyncio.get_running_loop().create_task(self.health.set(GENERATION_SERVICE, serving))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def load_served_model(checkpoint: CheckpointSettings) -> ServedModel:
    """Resolve the checkpoint and read what the gateway needs of it (tokenizer, limits, defaults)."""
    if not checkpoint.model:
        raise ValueError("model: no model configured (pass --model PATH or set AUTOGLM_MODEL)")
    source = resolve_model_source(checkpoint.model, checkpoint.allow_download)
    if (source / RANDOM_WEIGHTS_MARKER).exists():
        logger.warning("%s holds random weights (a demo or test checkpoint): its text is noise", source)
    facts = read_checkpoint_facts(source)
    max_seq_len = checkpoint.max_seq_len
    max_context = facts.max_position_embeddings or max_seq_len
    if max_context is None:
        raise ValueError(f"model: {source} does not state its context length; set max_seq_len")
    if max_seq_len is not None:
        if max_seq_len > max_context:
            logger.warning(
                "max_seq_len %d is over the checkpoint's %d positions; using %d",
                max_seq_len, max_context, max_context,
            )  # fmt: skip
        max_context = min(max_seq_len, max_context)
    names = served_model_names(checkpoint.served_model_name, checkpoint.model_id, checkpoint.model, source)
    tokenizer = TextTokenizer.from_dir(source)
    vision = read_vision_spec(source, tokenizer)
    if vision is not None:
        logger.info("the checkpoint takes images (image token %s)", vision.image_token)
    return ServedModel(
        model_id=names[0],
        aliases=names[1:],
        source=str(source),
        tokenizer=tokenizer,
        facts=facts,
        max_context_tokens=max_context,
        default_max_new_tokens=checkpoint.default_max_new_tokens,
        max_prompt_chars=checkpoint.max_prompt_chars or 0,
        vision=vision,
    )


def build_app(settings: Settings) -> App:
    """Build the server bound to settings.server's host:port (port 0: any free port); nothing runs yet.

    Each part takes its section of `settings` as it is (see `config.py`).
    """
    open_files.raise_open_file_limit()  # before anything holds descriptors, and before the HTTP cap is sized
    served = load_served_model(settings.checkpoint)
    telemetry = Telemetry.from_settings(settings.telemetry, served.model_id)
    configs = plan_workers(settings, served, telemetry=telemetry.worker_config())
    pool = WorkerPool(configs, settings.pool)
    pool.observer = telemetry.pool_observer(pool)
    security = Security.from_settings(settings.security)
    frontend = Frontend(served, pool, security.limiter, security.priority, settings.media)
    server, health_servicer = _grpc_server(settings.server, frontend, telemetry, security, settings.limits)
    credentials = security.grpc_credentials()
    if credentials is not None:
        required = "required" if settings.security.tls_client_ca else "not required"
        logger.info("TLS on; client certificates %s", required)
    port = binding.bind(server, settings.server.host, settings.server.port, credentials)
    http = None
    if settings.server.http:  # imported only then: a gRPC-only server needs no web stack (the GPU check runs so)
        from autoglm_rpc.openai_api import build_http_server

        http = build_http_server(settings.server, frontend, telemetry, security, settings.limits)
    return App(settings, server, port, pool, frontend, health_servicer, telemetry, http)


def _grpc_server(
    settings: ServerSettings, frontend: Frontend, telemetry: Telemetry, security: Security, limits: RequestLimits
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The gRPC server with its interceptors and servicers (generation, model, health, reflection); not bound."""
    # Order: telemetry sees every call (also refused ones), then authentication, then malformed bytes.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        telemetry.interceptor(frozenset({GENERATION_SERVICE, MODEL_SERVICE})),
        MalformedRequestInterceptor(),
        HealthWatchLimit(settings.max_health_watchers),
    ]
    keys = security.keys
    if keys is not None:
        logger.info("API keys required (%d key(s) of %d owner(s)); health stays open", len(keys.entries),
                    len(keys.names))  # fmt: skip
        interceptors.insert(1, AuthInterceptor(keys))
    server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
    servicer = GenerationServicer(frontend, telemetry.generation(), limits)
    server.add_generic_rpc_handlers((_generation_handlers(servicer),))
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(frontend, settings.reflection), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        names = (GENERATION_SERVICE, MODEL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    return server, health_servicer


def _generation_handlers(servicer: GenerationServicer) -> grpc.GenericRpcHandler:
    """GenerationService's handlers; Generate/GenerateStream see the wire bytes to reject two `input`s."""

    def checked(message_class: type) -> object:
        def deserialize(data: bytes) -> Checked:
            return Checked(message_class.FromString(data), wire.count_oneof_members(data))

        return deserialize

    pb = generation_pb2
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate, checked(pb.GenerateRequest), pb.GenerateResponse.SerializeToString
        ),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream, checked(pb.GenerateStreamRequest), pb.GenerateStreamResponse.SerializeToString
        ),
        "CancelGeneration": grpc.unary_unary_rpc_method_handler(
            servicer.CancelGeneration,
            pb.CancelGenerationRequest.FromString,
            pb.CancelGenerationResponse.SerializeToString,
        ),
        "Tokenize": grpc.unary_unary_rpc_method_handler(
            servicer.Tokenize, pb.TokenizeRequest.FromString, pb.TokenizeResponse.SerializeToString
        ),
    }
    return grpc.method_handlers_generic_handler(GENERATION_SERVICE, handlers)


async def run(settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM (see `stop_signals`); return the process exit code."""
    app = build_app(settings)
    signals = StopSignals(app.cut_drain)
    signals.install(asyncio.get_running_loop())
    try:
        await app.start()
        _log_listening(app)
        ready = asyncio.create_task(app.wait_until_ready())
        stopped = asyncio.create_task(signals.stopped.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.exception() is None:
            logger.info("ready: %d of %d worker(s) serving", app.pool.num_ready, app.pool.num_workers)
            await stopped
        elif ready.done():
            logger.error("%s", ready.exception())
            return 1
        ready.cancel()
        logger.info("shutting down: draining in-flight requests (grace %.0fs)", settings.pool.grace_period)
        return 0
    finally:
        await app.stop()


def _log_listening(app: App) -> None:
    server = app.settings.server
    logger.info(
        "autoglm-rpc listening on %s:%d, serving %s from %s (%d worker(s))",
        server.host, app.port, app.frontend.model.model_id, app.frontend.model.source, app.pool.num_workers,
    )  # fmt: skip
    if app.http is not None:
        scheme = "https" if app.http.is_tls else "http"
        logger.info(
            "OpenAI-compatible HTTP API on %s://%s:%d/v1 (docs at /docs)",
            scheme, server.http_host or server.host, app.http.port,
        )  # fmt: skip


def serve(settings: Settings) -> int:
    return asyncio.run(run(settings))
