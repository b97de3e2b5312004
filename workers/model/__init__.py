"""The checkpoint side: loading a model with its KV cache (`loader`), what the engine can run (`support`),
weight manifests (`manifest`) and the tiny checkpoints tests and demos build (`checkpoints`)."""
