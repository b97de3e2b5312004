"""The `autoglm-rpc` command: `serve`, `generate` (a streaming terminal client), `health`, `hash-key` and
`demo-model`.

Every `serve` flag can also come from an `AUTOGLM_<NAME>` variable or a TOML file (see `config.py`). Logs go to
stderr; `generate` writes only the generated text to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from autoglm_rpc.core.config_sections import OTLP_PROTOCOLS
from autoglm_rpc.startup.config import (
    DEVICES,
    DTYPES,
    KERNEL_CAPTURE,
    LOG_FORMATS,
    QUANTIZATIONS,
    Settings,
    given_values,
    setting_names,
)
from autoglm_rpc.startup.config_checks import source_warnings
from autoglm_rpc.telemetry.logs import setup_logging
from workers.protocol import DECODE_MODES

logger = logging.getLogger("autoglm_rpc")
API_KEY_VARIABLE = "AUTOGLM_API_KEY"  # the key `generate` sends, unless --api-key-file names a file


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a checkpoint over gRPC and OpenAI-compatible HTTP")
    serve.add_argument("--config", help="TOML file with settings (keys as the flags, with underscores)")
    serve.add_argument("--model", help="checkpoint directory, or a hub id already in the local cache")
    serve.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="names clients may use as `model`, the first shown as the model's id (default: the directory name)",
    )
    serve.add_argument("--model-id", help="the name clients use as `model`: a synonym for one --served-model-name")
    _listen_flags(serve)
    serve.add_argument("--workers", type=int, help="worker processes (default: one per GPU, or 1 on CPU)")
    serve.add_argument(
        "--tensor-parallel-size", type=int, help="split each replica of the model across N workers (default 1)"
    )
    serve.add_argument("--collective-timeout", type=float, help="seconds a rank waits in an all-reduce (60)")
    serve.add_argument(
        "--device", type=str.lower, choices=[*DEVICES, "gpu"], help="auto (default): cuda when a GPU is visible"
    )
    serve.add_argument("--dtype", choices=DTYPES, help="default auto: float32 on CPU, bfloat16 on GPU")
    serve.add_argument("--quantization", choices=QUANTIZATIONS, help="bitsandbytes quantization (GPU only)")
    serve.add_argument("--max-batch-size", type=int, help="running requests per worker (default 32)")
    serve.add_argument("--max-seq-len", type=int, help="context limit in tokens (default: the checkpoint's)")
    serve.add_argument("--max-num-batched-tokens", type=int, help="token budget per engine step (default 512)")
    serve.add_argument("--max-queue-depth", type=int, help="waiting requests before QUEUE_FULL (default 256)")
    serve.add_argument("--default-max-new-tokens", type=int, help="when a request sets none (default 256)")
    serve.add_argument("--worker-threads", type=int, help="torch threads per CPU worker")
    serve.add_argument("--restart-backoff-initial", type=float, help="seconds before a dead worker restarts (1)")
    serve.add_argument("--restart-backoff-max", type=float, help="the restart backoff doubles up to this (30)")
    serve.add_argument(
        "--max-restarts-per-window", type=int, help="deaths within the window before a crash loop (5; 0: never)"
    )
    serve.add_argument("--restart-window", type=float, help="seconds over which worker deaths count (300)")
    serve.add_argument(
        "--worker-hang-timeout",
        type=float,
        help="seconds without progress before a worker is declared hung and restarted (default: derived per "
        "worker, max(30, 10 x its longest engine step); 0: off)",
    )
    serve.add_argument(
        "--stream-buffer-messages", type=int, help="pending messages of an unread stream before merging (64)"
    )
    serve.add_argument(
        "--kv-cache-memory-fraction", type=float, help="share of free memory after the weights for the KV cache"
    )
    serve.add_argument(
        "--kv-cache-tokens", type=int, help="exact KV-cache size in tokens per worker (instead of the fraction)"
    )
    serve.add_argument("--kv-block-size", type=int, help="tokens per KV-cache block (default 16)")
    serve.add_argument(
        "--no-prefix-caching",
        dest="enable_prefix_caching",
        action="store_const",
        const=False,
        help="do not reuse the KV blocks of shared prompt prefixes",
    )
    serve.add_argument("--decode-mode", choices=DECODE_MODES, help="default auto: cuda_graphs on GPU, else eager")
    serve.add_argument(
        "--no-reflection", dest="reflection", action="store_const", const=False, help="turn server reflection off"
    )
    serve.add_argument("--trust-remote-code", action="store_const", const=True, help="run a checkpoint's own code")
    serve.add_argument("--allow-download", action="store_const", const=True, help="let a hub id be downloaded")
    serve.add_argument("--log-level", type=str.upper, help="DEBUG, INFO (default), WARNING or ERROR")
    _limit_flags(serve)
    security = serve.add_argument_group("security")
    security.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (with --tls-key)")
    security.add_argument("--tls-key", help="PEM private key of --tls-cert")
    security.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed (mutual TLS)")
    security.add_argument("--api-keys-file", help="file of `sha256:<hex>  <name>` lines: calls need a key")
    security.add_argument("--rate-limit-requests-per-minute", type=int, help="per key; 0 = off (default)")
    security.add_argument("--rate-limit-tokens-per-minute", type=int, help="per key; 0 = off (default)")
    security.add_argument(
        "--high-priority-owners", help="comma-separated key owners that may send PRIORITY_HIGH (with API keys)"
    )
    security.add_argument("--weights-manifest", help="sha256sum-format file the checkpoint's files must match")
    security.add_argument(
        "--allow-pickle-weights", action="store_const", const=True, help="load .bin weights (pickle can run code)"
    )
    _observability_flags(serve)
    _media_flags(serve)


def _limit_flags(serve: argparse.ArgumentParser) -> None:
    limits = serve.add_argument_group("request limits")
    limits.add_argument("--max-stop-sequences", type=int, help="stop sequences per request (default 16)")
    limits.add_argument("--max-stop-sequence-chars", type=int, help="characters per stop sequence (default 256)")
    limits.add_argument("--max-top-logprobs", type=int, help="output.top_logprobs at most (default 20)")
    limits.add_argument("--max-prompt-chars", type=int, help="prompt characters (default 16 per context token)")
    limits.add_argument("--max-health-watchers", type=int, help="open Health/Watch streams at most (default 100)")


def _media_flags(serve: argparse.ArgumentParser) -> None:
    media = serve.add_argument_group("images in chat prompts")
    media.add_argument("--max-images-per-prompt", type=int, help="images in one chat (default 10)")
    media.add_argument("--max-image-bytes", type=int, help="encoded bytes of one image (default 10 MiB)")
    media.add_argument("--max-image-pixels", type=int, help="width * height of one image (default 4096 * 4096)")
    media.add_argument(
        "--allowed-local-media-path", help="directory file:// image URLs may read from (default none)"
    )
    media.add_argument(
        "--allow-remote-media", action="store_const", const=True, help="fetch http(s) image URLs (default off)"
    )
    media.add_argument("--remote-media-timeout", type=float, help="seconds for one image fetch (default 10)")
    media.add_argument(
        "--chat-template-content-format",
        type=str.lower,
        help="auto (default), string (parts flattened, an image placeholder) or openai (a list of parts)",
    )


def _listen_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on, 0 for any free one (default 50051)")
    serve.add_argument("--http-port", type=int, help="OpenAI-compatible HTTP API port, 0 for any free one (8000)")
    serve.add_argument("--http-host", help="address of the HTTP API (default: --host)")
    serve.add_argument(
        "--no-http", dest="http", action="store_const", const=False, help="serve gRPC only (no HTTP API)"
    )
    http = serve.add_argument_group("HTTP connections")
    http.add_argument("--max-http-connections", type=int, help="open at once; more get 503 (default 1000)")
    http.add_argument("--http-header-timeout", type=float, help="seconds for a request's headers (default 10)")
    http.add_argument("--http-body-timeout", type=float, help="seconds for a body after its headers (default 60)")
    http.add_argument("--http-keep-alive-timeout", type=float, help="seconds a kept-alive connection idles (5)")
    http.add_argument("--max-http-header-bytes", type=int, help="request line and headers (default 65536)")
    http.add_argument("--max-http-headers", type=int, help="header lines per request (default 100)")


def _observability_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS, help="json lines (default) or text")
    serve.add_argument(
        "--log-prompts",
        action="store_const",
        const=True,
        help="put prompt text in the access log (off by default)",
    )
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at /metrics on this port")
    serve.add_argument("--metrics-host", help="address of the metrics endpoint (default 127.0.0.1)")
    serve.add_argument("--otlp-endpoint", help="OTLP collector, e.g. http://127.0.0.1:4317; turns tracing on")
    serve.add_argument(
        "--otlp-protocol", choices=OTLP_PROTOCOLS, help="default grpc (or OTEL_EXPORTER_OTLP_PROTOCOL)"
    )
    serve.add_argument("--trace-sample-ratio", type=float, help="fraction of requests traced (default 0.1)")
    serve.add_argument(
        "--trace-step-sample-ratio", type=float, help="fraction of engine steps traced (default 0.01)"
    )
    serve.add_argument("--kernel-capture", choices=KERNEL_CAPTURE, help="when to profile a step (default request)")
    serve.add_argument("--kernel-capture-interval", type=float, help="seconds between profiled steps (default 10)")
    serve.add_argument("--kernel-capture-top-k", type=int, help="spans for the K longest kernels (default 0)")


def _generate_parser(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="stream a completion to the terminal")
    generate.add_argument("prompt", help="the prompt text")
    generate.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    generate.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable)")
    generate.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server to be ready")
    generate.add_argument("--timeout", type=float, help="deadline of the call in seconds")
    generate.add_argument("--tls", action="store_true", help="use TLS (implied by the three options below)")
    generate.add_argument("--tls-ca", help="PEM roots to verify the server with (default: the system's)")
    generate.add_argument("--tls-cert", help="PEM client certificate chain (mutual TLS)")
    generate.add_argument("--tls-key", help="PEM private key of --tls-cert")
    generate.add_argument(
        "--api-key-file", help=f"file holding the API key (default: the {API_KEY_VARIABLE} variable)"
    )


def _health_parser(commands: argparse._SubParsersAction) -> None:
    health = commands.add_parser("health", help="check gRPC health; exit 0 when SERVING, 1 otherwise")
    health.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    health.add_argument(
        "--service", default="", help='"" (default): liveness; autoglm.v1.GenerationService: readiness'
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the docstring's first paragraph, whole
    parser = argparse.ArgumentParser(prog="autoglm-rpc", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands)
    _generate_parser(commands)
    hash_key = commands.add_parser("hash-key", help="print the keys-file line for an API key read from stdin")
    hash_key.add_argument("--name", required=True, help="who the key belongs to (owner of its requests)")
    _health_parser(commands)
    demo = commands.add_parser("demo-model", help="build the tiny random-weight demo checkpoint")
    demo.add_argument("--output", default=".demo-model", help="directory to write (default .demo-model)")
    demo.add_argument("--if-missing", action="store_true", help="do nothing if the directory holds a checkpoint")
    return parser


def _setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    setup_logging(level, log_format)


def _serve(args: argparse.Namespace) -> int:
    flags = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    try:
        given = given_values(flags, os.environ, args.config)
        settings = Settings.from_values(given)
    except ValueError as exc:
        _setup_logging()
        logger.error("invalid settings: %s", exc)
        return 2
    _setup_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    for warning in source_warnings(given, os.environ, setting_names()):
        logger.warning("%s", warning)
    from autoglm_rpc.startup.server import serve
    from autoglm_rpc.text.errors import CheckpointFileError

    try:
        return serve(settings)
    except (ValueError, OSError, CheckpointFileError) as exc:
        logger.error("cannot serve: %s", exc)
        return 1


def _generate(args: argparse.Namespace) -> int:
    from autoglm_rpc.client import FINISH_REASON_NAMES, AutoglmError, Client

    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop,
    }
    prompt = {"chat": [("user", args.prompt)]} if args.chat else {"prompt": args.prompt}
    try:
        api_key = Path(args.api_key_file).read_text().strip() if args.api_key_file else None
    except OSError as exc:
        sys.stderr.write(f"autoglm-rpc generate: --api-key-file: {exc}\n")
        return 2
    security = {
        "api_key": api_key or os.environ.get(API_KEY_VARIABLE) or None,
        "tls": args.tls,
        "root_certificates": args.tls_ca,
        "certificate_chain": args.tls_cert,
        "private_key": args.tls_key,
    }
    with Client(args.target, **security) as client:
        try:
            client.wait_until_ready(args.wait)
            for message in client.stream(timeout=args.timeout, **prompt, **options):
                sys.stdout.write(message.text)
                sys.stdout.flush()
                if message.finish_reason:
                    usage, timing = message.usage, message.timing
                    sys.stdout.write("\n")
                    sys.stderr.write(
                        f"[{FINISH_REASON_NAMES[message.finish_reason]}: {usage.completion_tokens} tokens, "
                        f"first token after {timing.time_to_first_token.ToMilliseconds()} ms, "
                        f"total {timing.total_time.ToMilliseconds()} ms]\n"
                    )
        except AutoglmError as exc:
            sys.stderr.write(f"autoglm-rpc generate: {exc}\n")
            return 1
        except KeyboardInterrupt:
            return 130
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from autoglm_rpc.security.keys import key_line

    key = sys.stdin.readline().rstrip("\r\n")
    try:
        sys.stdout.write(key_line(key, args.name) + "\n")
    except ValueError as exc:
        sys.stderr.write(f"autoglm-rpc hash-key: {exc}\n")
        return 2
    return 0


def _health(args: argparse.Namespace) -> int:
    from autoglm_rpc.startup.healthcheck import SERVING, check_health

    status = check_health(args.target, args.service, args.timeout)
    sys.stdout.write(f"{status}\n")
    return 0 if status == SERVING else 1


def _demo_model(args: argparse.Namespace) -> int:
    _setup_logging()
    output = Path(args.output)
    if args.if_missing and (output / "config.json").exists():
        logger.info("demo checkpoint already at %s", output)
        return 0
    from workers.model.checkpoints import build_demo_checkpoint

    logger.info("building the demo checkpoint (random weights: its text is noise) at %s", output)
    build_demo_checkpoint(output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "serve": _serve,
        "generate": _generate,
        "health": _health,
        "hash-key": _hash_key,
        "demo-model": _demo_model,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
