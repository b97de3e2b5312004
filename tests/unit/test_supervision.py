"""Supervision policy without processes: backoff doubles up to a cap, a crash loop stops the restarts, old
crashes age out; and the test-only fault switch parses strictly."""

from __future__ import annotations

import asyncio

from autoglm_rpc.pool.handle import WorkerHandle, WorkerState, describe_exit
from autoglm_rpc.pool.supervisor import RestartPolicy, Supervisor
from workers.protocol import WorkerConfig


def test_backoff_doubles_up_to_the_cap_then_a_crash_loop() -> None:
    policy = RestartPolicy(backoff_initial=1.0, backoff_max=5.0, max_restarts=4, window=60.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]
    assert RestartPolicy(max_restarts=0).delay(1) is None  # 0: restarts off


def test_supervisor_restarts_until_a_crash_loop_and_forgets_old_crashes() -> None:
    async def scenario() -> None:
        now = [100.0]
        restarted: list[WorkerHandle] = []
        policy = RestartPolicy(backoff_initial=0.01, backoff_max=0.02, max_restarts=2, window=10.0)
        supervisor = Supervisor(policy, restarted.append, clock=lambda: now[0])
        loop = asyncio.get_running_loop()
        worker = WorkerHandle(WorkerConfig(0, "/m", "m"), loop, lambda *_: None, lambda *_: None)
        worker.last_exit = "killed by signal SIGKILL"

        for expected in (1, 2):  # two deaths within the window: each restarted after its backoff
            worker.state = WorkerState.READY
            supervisor.worker_died(worker)
            assert worker.state is WorkerState.RESTARTING
            await asyncio.sleep(0.1)
            assert (len(restarted), worker.num_restarts) == (expected, expected)

        worker.state = WorkerState.READY
        supervisor.worker_died(worker)  # the third within 10 s: a crash loop, and no restart is scheduled
        assert worker.state is WorkerState.CRASH_LOOP
        await asyncio.sleep(0.1)
        assert len(restarted) == 2

        now[0] += 11.0  # the earlier deaths leave the window: a later death is restarted again
        supervisor.worker_died(worker)
        assert worker.state is WorkerState.RESTARTING
        supervisor.cancel()  # the pool stops: the scheduled restart never happens
        await asyncio.sleep(0.1)
        assert len(restarted) == 2

    asyncio.run(scenario())


def test_exit_codes_in_words() -> None:
    assert describe_exit(-9) == "killed by signal SIGKILL"
    assert describe_exit(-11) == "killed by signal SIGSEGV"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(0) == "exited normally"
