"""The worker process: the `spawn` entry point the gateway starts (`entry`), the loop that serves the pipe
(`worker`), and how a worker loads its model, whole or as rank 0 of a tensor-parallel replica (`load`)."""
