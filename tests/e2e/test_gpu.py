"""The service on a CUDA GPU (marker `gpu`; skipped where none is present): bf16 and nf4 through the gateway,
and greedy parity with `model.generate` in fp32 on the GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_generation import PROMPTS
from tests.support import ServerThread, server_settings

pytestmark = pytest.mark.gpu


def _cuda_greedy(checkpoint: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to("cuda").eval()
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids], device="cuda"), do_sample=False, max_new_tokens=max_new_tokens
        )
    return output[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize(("dtype", "quantization"), [("float32", "none"), ("bfloat16", "none"), ("auto", "nf4")])
def test_served_on_cuda(glm_checkpoint: Path, dtype: str, quantization: str) -> None:
    # gRPC only, as the GPU check runs the service: its machine has no web stack (tools/gpu_check/wheels.py).
    settings = server_settings(
        glm_checkpoint, device="cuda", workers=1, dtype=dtype, quantization=quantization, http=False
    )
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            (model,) = client.list_models().models
            assert model.quantization == quantization
            for prompt in PROMPTS[:3]:
                result = client.generate(prompt, max_new_tokens=16, temperature=0.0, return_token_ids=True)
                ids = list(result.sequences[0].token_ids)
                assert 0 < len(ids) <= 16
                if dtype == "float32":
                    prompt_ids = list(client.tokenize(prompt).token_ids)
                    assert ids == _cuda_greedy(glm_checkpoint, prompt_ids, 16)
    finally:
        server.stop()
