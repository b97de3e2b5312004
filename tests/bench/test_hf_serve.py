"""`hf_serve`: transformers' own `transformers serve` on the session's tiny GLM checkpoint, driven by the bench's
client processes. Real components: the server subprocess (offline, continuous batching), httpx clients in
subprocesses, the checkpoint's tokenizer. Counts are asserted, never speed; no process may outlive a test.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer

from bench import hf_serve
from bench.harness import PEER_UNAVAILABLE, BenchOptions, failure_reason, own_failures, run_bench
from bench.workload import Workload

NEW_TOKENS = 5
PROMPT_LEN = 8

needs_serve = pytest.mark.skipif(hf_serve.missing() is not None, reason=str(hf_serve.missing()))


def _serve_children() -> list[int]:
    """This process's children that run `transformers serve` (none once a server is stopped and reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"transformers.cli.transformers" in command:
            found.append(int(entry.name))
    return found


def test_text_prompts_encode_to_exactly_the_prompt_length(glm_checkpoint: Path) -> None:
    workload = Workload(prompt_len=PROMPT_LEN, new_tokens=1, concurrency=(1,), token_low=4, token_high=600, seed=3)
    prompts = hf_serve.text_prompts(glm_checkpoint / "tokenizer.json", workload, 6)
    assert prompts == hf_serve.text_prompts(
        glm_checkpoint / "tokenizer.json", workload, 6
    )  # same in every process
    assert len(set(prompts)) == 6
    tokenizer = AutoTokenizer.from_pretrained(glm_checkpoint)  # as the server encodes them
    assert [len(tokenizer(p)["input_ids"]) for p in prompts] == [PROMPT_LEN] * 6


def test_serving_copy_decodes_every_token_to_its_own_text(glm_checkpoint: Path, tmp_path: Path) -> None:
    """The server streams what its DecodeStream returns per token: with the copy, never nothing (a byte-level
    token of an incomplete UTF-8 sequence, or a skipped special token, would merge into a later chunk)."""
    copy = hf_serve.serving_copy(glm_checkpoint, tmp_path / "copy")
    assert (copy / "model.safetensors").is_symlink()
    tokenizer = AutoTokenizer.from_pretrained(copy)  # loaded as transformers serve loads it
    vocab_size = Tokenizer.from_file(str(glm_checkpoint / "tokenizer.json")).get_vocab_size()
    stream = DecodeStream([], skip_special_tokens=True)
    texts = [stream.step(tokenizer._tokenizer, token_id) for token_id in range(vocab_size)]
    assert all(texts), [i for i, text in enumerate(texts) if not text][:10]
    original = AutoTokenizer.from_pretrained(glm_checkpoint)
    assert tokenizer("hello world, the cat")["input_ids"] == original("hello world, the cat")["input_ids"]


@needs_serve
@pytest.mark.timeout(600)
def test_hf_serve_levels_count_every_token(glm_checkpoint: Path, tmp_path: Path) -> None:
    options = BenchOptions(
        kind="cpu",
        out_dir=tmp_path / "run",
        prompt_len=PROMPT_LEN,
        new_tokens=NEW_TOKENS,
        concurrency=(1, 3),
        min_requests=3,
        systems=("hf_serve",),
        max_num_batched_tokens=64,
        model_path=glm_checkpoint,
        threads=1,
    )
    report = run_bench(options)
    assert _serve_children() == []
    peer_unavailable = [s["reason"] for s in report["skipped"] if s["reason"].startswith(PEER_UNAVAILABLE)]
    if peer_unavailable:  # transformers serve changed under us: the bench reports it, and so does this test
        pytest.skip(f"transformers serve is unavailable here: {peer_unavailable[0]}")
    assert report["skipped"] == []
    measured = {r["concurrency"]: r for r in report["results"]}
    assert set(measured) == {1, 3} and {r["system"] for r in report["results"]} == {"hf_serve"}
    for result in measured.values():
        assert result["num_requests"] == 3
        assert result["output_tokens"] == 3 * NEW_TOKENS  # chunks counted, each request checked against usage
        assert result["ttft_s"]["p50"] > 0 and result["throughput_tok_s"] > 0
        assert result["itl_s"]["p99"] >= result["itl_s"]["p50"] > 0
        assert result["gateway_cpu_us_per_token"] is None  # its model runs in the server process: no gateway
    markdown = (tmp_path / "run" / "bench.md").read_text()
    assert "| hf_serve | 1 | 3 | 15 |" in markdown
    assert "- hf_serve: transformers serve --continuous-batching" in markdown
    assert "Uvicorn running on http://127.0.0.1:" in (tmp_path / "run" / "hf_serve.log").read_text()


@needs_serve
@pytest.mark.timeout(300)
def test_a_server_that_cannot_start_is_reported_and_leaves_no_process(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no model type, no weights: it exits at start
    with pytest.raises(RuntimeError, match="exited with code"), hf_serve.HfServeProcess(broken, tmp_path / "log"):
        pass
    assert _serve_children() == []


class _ReshapedServe:
    """A stand-in for a `transformers serve` whose stream changed shape: one text chunk per token and a finish
    chunk, but no usage anywhere (what 5.25 sends when `stream_options.include_usage` is not asked for). A real
    HTTP server on 127.0.0.1:0, used as `HfServeProcess` is (a context manager with `url` and `model`)."""

    def __init__(self, checkpoint: Path, *args: object, **kwargs: object) -> None:
        self.model = str(checkpoint)

    def __enter__(self) -> _ReshapedServe:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = [f" t{i}" for i in range(body["max_tokens"])]
                chunks = [{"choices": [{"text": text, "finish_reason": None}]} for text in texts]
                chunks.append({"choices": [{"text": "", "finish_reason": "length"}]})
                payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@needs_serve
@pytest.mark.timeout(300)
def test_a_peer_whose_stream_changed_shape_is_reported_unavailable_and_the_run_succeeds(
    glm_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strict counting stays: a stream without usage fails the level, with the client's reason in the report,
    as `peer unavailable` (not `failed`), so a run that measured the project's own systems exits 0."""
    monkeypatch.setattr(hf_serve, "HfServeProcess", _ReshapedServe)
    options = BenchOptions(
        kind="cpu", out_dir=tmp_path / "run", prompt_len=PROMPT_LEN, new_tokens=2, concurrency=(1,),
        min_requests=1, systems=("hf_serve",), max_num_batched_tokens=64, model_path=glm_checkpoint, threads=1,
    )  # fmt: skip
    report = run_bench(options)
    assert report["results"] == []
    [entry] = report["skipped"]
    assert entry["system"] == "hf_serve" and entry["concurrency"] == 1
    assert entry["reason"].startswith(PEER_UNAVAILABLE), entry
    assert "usage says {}" in entry["reason"]  # the client's own words reach the report
    assert own_failures(report) == []
    assert f"hf_serve (C=1): {entry['reason']}" in (tmp_path / "run" / "bench.md").read_text()


def test_a_failure_of_the_projects_own_system_fails_the_run() -> None:
    own = {"system": "service", "reason": failure_reason("service", RuntimeError("worker died"))}
    peer = {"system": "hf_serve", "reason": failure_reason("hf_serve", RuntimeError("no usage"))}
    assert own["reason"] == "failed: RuntimeError: worker died"
    assert peer["reason"] == "peer unavailable: RuntimeError: no usage"
    assert own_failures({"skipped": [own, peer]}) == [own]
    assert own_failures({"skipped": [peer]}) == []


def test_a_chunk_counts_its_space_separated_tokens(glm_checkpoint: Path, tmp_path: Path) -> None:
    """What the serving copy's decoding gives for any run of tokens: each token's text, one space between."""
    copy = hf_serve.serving_copy(glm_checkpoint, tmp_path / "copy")
    tokenizer = AutoTokenizer.from_pretrained(copy)
    ids = list(range(3, 300, 7))
    stream = DecodeStream([], skip_special_tokens=True)
    texts = [stream.step(tokenizer._tokenizer, token_id) for token_id in ids]
    assert sum(hf_serve.chunk_tokens(text) for text in texts if text) == len(ids)
    assert hf_serve.chunk_tokens(tokenizer.decode(ids[:5])) == 5  # several tokens held back, sent as one chunk
    assert [hf_serve.chunk_tokens(t) for t in ("erat", " Ġva", " »lÃ© ãģĵãĤ", "")] == [1, 1, 2, 0]
