"""`t5scale infer`: a checkpoint decodes (or scores) a whole dataset into JSONL shards, resumably, on one machine
or every host of a pod (t5x's infer.py). `run.infer` is the entry point; see docs/inference.md."""
