"""Tensor parallelism: one model split across N worker processes (ranks), each holding a (quantized) shard.

`split` checks that a checkpoint can be split N ways (standard library only, so the gateway can refuse a bad
split before any process starts); `group` sets up the process groups with timeouts; `sharding` says which
weights are split how; `layers` holds the row-parallel layer (the all-reduce) and the per-rank quantization;
`loading` reads each rank's slices from safetensors and builds its model; `replica` is what every rank builds;
`ranks` is rank 0's handle on the other ranks (start, send each forward, watch, stop) and how rank 0 loads a
replica with them (`load_replica`); `follower` is the other ranks' process.
"""
