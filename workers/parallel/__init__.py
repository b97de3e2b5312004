"""Tensor parallelism: one model split across N worker processes (ranks), each holding a (quantized) shard.

`split` checks that a checkpoint can be split N ways (standard library only, so the gateway can refuse a bad
split before any process starts); `group` sets up the process group with timeouts; `sharding` says which
weights are split how; `layers` holds the parallel linear layers and the per-rank quantization; `loading`
reads each rank's slices from safetensors and builds its model; `mirror` carries each forward's inputs from
rank 0 to the other ranks; `ranks` starts, watches and stops those ranks from rank 0.
"""
