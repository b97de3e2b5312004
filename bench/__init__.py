"""The benchmark harness: HF transformers baselines, the engine in process, the whole service (over gRPC and
over the OpenAI-compatible HTTP API) and `transformers serve`, side by side.

`python -m bench cpu` (`make bench`) runs on any machine with the tiny demo checkpoint; `python -m bench gpu`
(`make bench-gpu`) builds a random-init GLM-4-9B-shaped model on the GPU. Both measure every system on the same
random-prompt workload at each concurrency level and write a JSON file, a markdown table and (with matplotlib) a
PNG plot (`python -m bench plot` renders it later, `python -m bench merge` joins a run done in parts).
Modules, one job each:

    workload.py         prompts, levels, how many requests a level runs
    stats.py            per-request timings -> throughput, TTFT and inter-token-latency percentiles
    checkpoints.py      the benchmark checkpoints (tiny demo / GLM-4-9B shape), saved like any HF checkpoint
    hf_baselines.py     transformers `generate()` serial and on a static batch, `generate_batch` (continuous)
    cuda_graph.py       transformers + StaticCache with one decode step captured in a CUDA graph (GPU only)
    engine_runner.py    the engine in this process, as the worker drives it
    service.py          the whole service: server subprocess, client subprocesses (client_process.py), and the
                        gateway process's CPU time per output token
    service_process.py  the server subprocess's entry point
    client_process.py   a client subprocess's entry point (gRPC `AsyncClient` streams, or HTTP SSE streams)
    hf_serve.py         `transformers serve` in a subprocess, on a serving copy of the checkpoint, with text
                        prompts of the same length and exactly the same new tokens
    machine.py          what the run ran on
    report.py, plot.py  JSON + markdown (and merging a run done in parts), and the PNG
    harness.py          one run from options to files
"""
