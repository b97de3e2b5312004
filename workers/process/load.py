"""How a worker process loads its model and builds its engine, before it reports Ready.

One whole model (`model.loader.load_model`), or rank 0 of a tensor-parallel replica, which starts and loads
the other ranks with it (`parallel.ranks.load_replica`). Either way the engine is built from the loaded model
and warmed up here: the engine itself never loads.
"""

from __future__ import annotations

from workers.engine.engine import Engine
from workers.model.loader import LoadedModel, ProgressCallback, check_declared_model, load_model
from workers.parallel.ranks import load_replica
from workers.protocol import ModelInfo, WorkerConfig


def load(config: WorkerConfig, on_progress: ProgressCallback) -> LoadedModel:
    """The model this worker serves: whole, or its replica's rank 0 shard when `tensor_parallel_size` > 1.
    A checkpoint the engine cannot serve is refused from its config.json first, before any file is read."""
    check_declared_model(config)
    if config.tensor_parallel_size > 1:
        return load_replica(config, on_progress)
    return load_model(config, on_progress)


def start_engine(config: WorkerConfig, on_progress: ProgressCallback) -> tuple[Engine, ModelInfo]:
    """Load the model, build the engine and warm it up: what a worker does before it reports Ready."""
    loaded = load(config, on_progress)
    engine = Engine.from_loaded(loaded, config)
    on_progress("warming up", 0.95)
    engine.warm_up()
    return engine, loaded.info
