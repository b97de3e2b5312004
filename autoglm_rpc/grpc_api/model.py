"""`autoglm.v1.ModelService`: what is served, its limits and the workers' state."""

from __future__ import annotations

import grpc

from autoglm.v1 import model_pb2, types_pb2
from autoglm_rpc import __version__
from autoglm_rpc.core.frontend import Frontend
from autoglm_rpc.grpc_api import errors
from autoglm_rpc.pool.handle import WorkerHandle, WorkerState
from autoglm_rpc.pool.watchdog import Watchdog

API_VERSION = "autoglm.v1"


class ModelServicer:
    def __init__(self, frontend: Frontend, reflection_enabled: bool) -> None:
        self._frontend = frontend
        self._reflection_enabled = reflection_enabled

    @errors.unary
    async def ListModels(
        self, request: model_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ListModelsResponse:
        served, pool = self._frontend.model, self._frontend.pool
        defaults = served.facts.defaults
        loaded = pool.model  # None until a worker is ready: dtype and quantization are then unknown
        model = model_pb2.Model(
            id=served.model_id,
            source=served.source,
            architecture=served.facts.architecture,
            dtype=loaded.dtype if loaded else "",
            quantization=loaded.quantization if loaded else "",
            max_context_tokens=self._frontend.max_context_tokens,
            has_chat_template=served.tokenizer.has_chat_template,
            defaults=types_pb2.SamplingOptions(
                temperature=defaults.temperature,
                top_p=defaults.top_p,
                top_k=defaults.top_k,
                repetition_penalty=defaults.repetition_penalty,
                frequency_penalty=0.0,
                presence_penalty=0.0,
            ),
            ready_workers=pool.num_ready,
            total_workers=pool.num_workers,
            aliases=served.aliases,
        )
        return model_pb2.ListModelsResponse(models=[model])

    @errors.unary
    async def GetServerInfo(
        self, request: model_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.GetServerInfoResponse:
        pool = self._frontend.pool
        return model_pb2.GetServerInfoResponse(
            server_version=__version__,
            api_version=API_VERSION,
            default_model=self._frontend.model.model_id,
            ready_workers=pool.num_ready,
            total_workers=pool.num_workers,
            max_queue_depth=pool.max_queue_depth,
            reflection_enabled=self._reflection_enabled,
            workers=[_worker_info(worker, pool.watchdog) for worker in pool.workers],
            draining=pool.is_draining,
            worker_hang_timeout_seconds=pool.watchdog.timeout if pool.watchdog else 0.0,
            prefix_caching_enabled=any(worker.config.enable_prefix_caching for worker in pool.workers),
            cached_prompt_tokens=sum(w.last_step.cached_prompt_tokens for w in pool.workers if w.last_step),
            tensor_parallel_size=pool.workers[0].config.tensor_parallel_size if pool.workers else 1,
        )


_STATES = {
    WorkerState.STARTING: model_pb2.WORKER_STATE_STARTING,
    WorkerState.READY: model_pb2.WORKER_STATE_READY,
    WorkerState.RESTARTING: model_pb2.WORKER_STATE_RESTARTING,
    WorkerState.CRASH_LOOP: model_pb2.WORKER_STATE_CRASH_LOOP,
    WorkerState.STOPPED: model_pb2.WORKER_STATE_STOPPED,
    WorkerState.HUNG: model_pb2.WORKER_STATE_HUNG,
}


def _worker_info(worker: WorkerHandle, watchdog: Watchdog | None) -> model_pb2.WorkerInfo:
    config, step = worker.config, worker.last_step
    gpus = config.cuda_visible_devices.split(",") if config.cuda_visible_devices is not None else None
    gpu = gpus[0] if gpus else None
    return model_pb2.WorkerInfo(
        worker_id=worker.worker_id,
        state=_STATES[worker.state],
        pid=worker.pid or 0,
        restarts=worker.num_restarts,
        in_flight_requests=worker.num_in_flight,
        last_exit=worker.last_exit,
        device=f"{config.device}:{gpu}" if gpu is not None else config.device,
        hangs=worker.num_hangs,
        seconds_since_heard=(watchdog.silent_for(worker) or 0.0) if watchdog and worker.pid else 0.0,
        kv_cache_blocks_total=worker.model.kv_cache_blocks if worker.model else 0,
        kv_cache_blocks_used=step.kv_blocks_used if step else 0,
        kv_cache_block_size=worker.model.kv_block_size if worker.model else 0,
        prefix_cache_hit_rate=step.cached_prompt_tokens / max(1, step.prompt_tokens) if step else 0.0,
        tensor_parallel_size=config.tensor_parallel_size,
        ranks=_rank_infos(worker, gpus),
    )


def _rank_infos(worker: WorkerHandle, gpus: list[str] | None) -> list[model_pb2.RankInfo]:
    """Every rank of a tensor-parallel replica: what rank 0 reported at Ready, or the plan while not loaded."""
    size = worker.config.tensor_parallel_size
    if size == 1:
        return []
    reported = {rank.rank: rank for rank in worker.model.ranks} if worker.model is not None else {}
    infos = []
    for index in range(size):
        rank = reported.get(index)
        device = f"cuda:{gpus[index]}" if gpus else worker.config.device
        infos.append(
            model_pb2.RankInfo(
                rank=index,
                pid=rank.pid if rank else 0,
                device=device,
                weight_bytes=rank.weight_bytes if rank else 0,
                sharded_weight_bytes=rank.sharded_weight_bytes if rank else 0,
                state=_STATES[worker.state],
            )
        )
    return infos
