"""`make gpu-check`: one prepared run on a CUDA GPU machine that checks and measures what the CPU cannot.

In one command on a GPU machine it installs the wheels it brought (`make gpu-wheels` downloads them), runs the
`gpu`-marked tests, benchmarks the engine and the service in bf16 and nf4 at 1 and 256 streams beside the HF
CUDA-graph baseline, runs the tracing A/B, and writes JSON, markdown and one log into a results folder. Each
stage has its own time budget and the whole run stays inside 8 minutes. `make gpu-check REHEARSE=1` runs the same
stages on the CPU with the demo model and tiny settings. Modules, one job each:

    __main__.py    the command line: budgets, scratch folder, the run
    plan.py        the stages, their commands and budgets (GPU and rehearsal)
    runner.py      one stage at a time in its own process group, under its budget and the run's deadline
    wheels.py      the wheels to bring, which a machine needs, `make gpu-wheels`
    preflight.py   the preflight stage: imports, versions, the GPU, nf4 on it
    checkpoint.py  the checkpoint stage: the model the benchmark stages serve
    targets.py     the targets, the anchors, and this run's figures beside them
    report.py      gpu-check.json, gpu-check.md, gpu-check.log
"""
