"""Continuous batching over one model: the engine's step (`engine`), the scheduler's policy (`scheduler`), a
request's state (`sequence`), block tables (`block_tables`), the forward and sampling (`runner`, `sampling`)
and the static-shape decode with its CUDA graph buckets (`static_decode`, `graph_buckets`)."""
