"""`transformers serve` (transformers' own OpenAI-compatible HTTP server, with continuous batching) on the
benchmark's checkpoint and workload: system `hf_serve`.

Its `/v1/completions` differs from ours in three ways, each made equivalent here rather than assumed:
- **Text prompts only.** `text_prompts` builds prompts of `prompt_len` words, each word one token of the
  checkpoint's own tokenizer (its vocabulary's " word" tokens that encode back to themselves), and checks that the
  text re-encodes to exactly `prompt_len` ids; the client also checks the server's `usage.prompt_tokens`.
- **No `ignore_eos` / `min_tokens`.** Each request carries transformers serve's own `generation_config` field
  (a JSON string it turns into the request's `GenerationConfig`) with `eos_token_id: -1`, transformers' value for
  "no EOS", so greedy generation runs to `max_tokens`; the client checks `usage.completion_tokens` and
  `finish_reason == "length"`.
- **Usage only when asked, since transformers 5.25.** Up to 5.24 its last chunk always carried `usage` (and it
  ignored `stream_options`); from 5.25 it follows OpenAI: a separate last chunk with `usage` and no choices, only
  with `stream_options.include_usage`. Every request asks for it, which both versions answer with the usage.
- **No token counts per chunk.** Its chunks carry text only, decoded token by token with the Rust `DecodeStream`,
  which holds a token back while its text is an incomplete UTF-8 sequence (byte-level BPE) and skips special
  tokens, so a chunk could stand for several tokens. The server is therefore given a copy of the checkpoint
  (`serving_copy`: every file a symlink but the tokenizer's two) whose tokenizer decodes each token to its own
  vocabulary string (no byte-level decoder, no special tokens), joined by single spaces; a vocabulary string
  never holds a space (byte-level BPE writes it as `Ġ`). Encoding (prompts) is unchanged, and so are the weights
  and the work per step. Most chunks are then one token, but `DecodeStream` may still hold one back and send it
  with the next (seen with transformers 5.25 on a few token pairs), so the client counts the space-separated
  tokens of each chunk (`chunk_tokens`) and fails the request unless the total equals `usage.completion_tokens`.

Its continuous batching gets the engine's budgets rather than its defaults (which size the KV cache from the
device's free memory, the host's RAM on a CPU): `--cb-max-batch-tokens` the engine's tokens per step, and
`--cb-num-blocks` room for a full context of every request in flight at its page granularity
(`cache_blocks`), so neither system ever preempts on this workload.

`HfServeProcess` runs `transformers serve <copy> --continuous-batching` on 127.0.0.1 at a free port, offline
(`HF_HUB_OFFLINE=1`, `TRANSFORMERS_OFFLINE=1`: nothing is ever downloaded), in its own process group, which is
killed however the run ends.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from bench.workload import Workload

logger = logging.getLogger(__name__)

# The tokenizer files the serving copy rewrites; every other file of the checkpoint is a symlink.
_TOKENIZER_FILE, _TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
_SPECIAL_TOKEN_SETTINGS = ("eos_token", "pad_token", "bos_token", "unk_token", "extra_special_tokens")
# How its workload was made the same (the report's workload line for `hf_serve`).
HF_SERVE_NOTE = (
    "text prompts of one-token words, re-encoded to exactly the prompt length and checked against the server's "
    "usage; exactly the new tokens through its per-request generation_config with eos_token_id -1 (checked: "
    "usage and finish_reason length); each SSE chunk's tokens counted (the served copy's tokenizer decodes every "
    "token alone, space-separated) and checked against usage"
)


def missing() -> str | None:
    """Why `transformers serve` cannot run here (a missing optional dependency), or None when it can."""
    import transformers
    from transformers.utils.import_utils import is_serve_available

    try:
        from transformers.cli import serve  # noqa: F401
    except ImportError:
        return f"transformers {transformers.__version__} has no `transformers serve`"
    if not is_serve_available():
        return "transformers serve needs fastapi, uvicorn, pydantic, openai: pip install 'transformers[serving]'"
    return None


def serving_copy(checkpoint: Path, dest: Path) -> Path:
    """`dest`: `checkpoint` as symlinks, but a tokenizer that decodes every token to one non-empty string."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in checkpoint.iterdir():
        if source.name not in (_TOKENIZER_FILE, _TOKENIZER_CONFIG):
            (dest / source.name).symlink_to(source.resolve())
    tokenizer = json.loads((checkpoint / _TOKENIZER_FILE).read_text())
    tokenizer["decoder"] = None  # the Rust tokenizer then joins the tokens' vocabulary strings with spaces
    for added in tokenizer.get("added_tokens", []):
        added["special"] = False  # never skipped by the server's skip_special_tokens decoding
    (dest / _TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    config_path = checkpoint / _TOKENIZER_CONFIG
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    # transformers marks the tokens these settings name as special again when it loads the tokenizer.
    config = {key: value for key, value in config.items() if key not in _SPECIAL_TOKEN_SETTINGS}
    config.pop("added_tokens_decoder", None)
    (dest / _TOKENIZER_CONFIG).write_text(json.dumps(config))
    return dest


def chunk_tokens(text: str) -> int:
    """How many generated tokens a streamed chunk of the serving copy carries: its space-separated tokens (the
    copy's decoding joins vocabulary strings, which hold no space, with one space)."""
    return sum(1 for piece in text.split(" ") if piece)


def text_prompts(tokenizer_path: Path, workload: Workload, num_requests: int) -> list[str]:
    """The first `num_requests` text prompts, each `prompt_len` random one-token words of the tokenizer at
    `tokenizer_path` (a tokenizer.json); the same seed gives the same prompts in every process. ValueError when
    the vocabulary has no such words, or a prompt does not re-encode to exactly `prompt_len` ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    words = _one_token_words(tokenizer)
    if not words:
        raise ValueError(f"{tokenizer_path} has no ' word' tokens to build text prompts from")
    rng = random.Random(workload.seed)
    prompts = []
    for _ in range(num_requests):
        ids = [rng.choice(words) for _ in range(workload.prompt_len)]
        text = tokenizer.decode(ids)
        encoded = tokenizer.encode(text, add_special_tokens=False).ids
        if encoded != ids:
            raise ValueError(f"a text prompt re-encodes to {len(encoded)} ids, not its {len(ids)}: {text!r}")
        prompts.append(text)
    return prompts


def _one_token_words(tokenizer: Any) -> list[int]:
    """Ids of the tokens that decode to a space and ASCII letters and encode back to that one id, sorted."""
    found = []
    for token_id in sorted(tokenizer.get_vocab(with_added_tokens=False).values()):
        text = tokenizer.decode([token_id])
        word = len(text) > 1 and text[0] == " " and text[1:].isascii() and text[1:].isalpha()
        if word and tokenizer.encode(text, add_special_tokens=False).ids == [token_id]:
            found.append(token_id)
    return found


def cache_blocks(workload: Workload) -> int:
    """`--cb-num-blocks` for the workload: one page-aligned full context (prompt + output + margin) for each of
    `max_concurrency` requests (a block holds `page_size` tokens of every layer)."""
    from transformers import ContinuousBatchingConfig

    page_size = ContinuousBatchingConfig().page_size
    return workload.max_concurrency * math.ceil(workload.max_seq_len / page_size)


def request_body(prompt: str, new_tokens: int, model: str) -> dict[str, Any]:
    """A streamed, greedy `/v1/completions` request for exactly `new_tokens` tokens (see the module's notes)."""
    generation = {"do_sample": False, "max_new_tokens": new_tokens, "eos_token_id": -1}
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "generation_config": json.dumps(generation),
    }


def _free_port() -> int:
    """A port free now on 127.0.0.1 (the server cannot take port 0: it would not say which port it got)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HfServeProcess:
    """`transformers serve` in a subprocess (its own process group), as a context manager; `url`, `model` (the
    name requests must carry) and `pid` are known once it answers `/health`."""

    def __init__(
        self,
        checkpoint: Path,
        log_path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        cb_num_blocks: int | None = None,
        cb_max_batch_tokens: int | None = None,
        start_timeout: float = 900.0,
    ) -> None:
        """`cb_num_blocks` / `cb_max_batch_tokens`: its continuous batching budgets (None: its defaults)."""
        self.checkpoint = checkpoint
        self.cb_args = [
            f"--cb-{name}={value}"
            for name, value in (("num-blocks", cb_num_blocks), ("max-batch-tokens", cb_max_batch_tokens))
            if value is not None
        ]
        self.log_path = log_path
        self.device, self.dtype, self.threads = device, dtype, threads
        self.start_timeout = start_timeout
        self.model = str(checkpoint)
        self.url = ""
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None

    def __enter__(self) -> HfServeProcess:
        port = _free_port()
        command = [
            sys.executable, "-m", "transformers.cli.transformers", "serve", self.model,
            "--continuous-batching", "--device", self.device, "--dtype", self.dtype,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *self.cb_args,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        self._log = self.log_path.open("a")
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        self.pid = self._process.pid
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"transformers serve exited with code {code} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"transformers serve did not answer /health in {self.start_timeout:.0f}s")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            _kill_group(self._process)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers; reaped either way."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()
