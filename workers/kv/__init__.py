"""The paged KV cache: block accounting and prefix hashes (`blocks`), the cache tensors (`cache`), and the
attention function that reads and writes them (`attention`, with its masks and scores in
`attention_variants`)."""
