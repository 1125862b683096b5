"""Input-pipeline throughput: packed span-corruption examples per second at 512/114 on the embedded corpus.

    .venv/bin/python benchmarks/data_pipeline.py [--seconds 20] [--threads 1]

TensorFlow is limited to --threads CPU threads (default 1: "one core"), so the number says how many cores the
input pipeline needs to keep up with a trainer. `pipeline_vs_trainer.py` uses `make_batches` and `measure` to put
the rate next to the trainer's.
"""

import argparse
import sys
import time


def make_batches(batch_size: int, threads: int, lengths: tuple[int, int] = (512, 114)):
    """(DataConfig, BatchIterator) of the embedded span-corruption task, TensorFlow limited to `threads` threads.

    Call before anything else runs TensorFlow ops: thread limits cannot change once TensorFlow has started.
    """
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)

    from t5scale.data.pipeline import BatchIterator, DataConfig, make_dataset

    # embedded_span_corruption, packed
    cfg = DataConfig(batch_size=batch_size, task_feature_lengths={"inputs": lengths[0], "targets": lengths[1]})
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.autotune.cpu_budget = threads
    return cfg, BatchIterator(make_dataset(cfg).with_options(options))


def measure(cfg, batches, seconds: float) -> dict[str, float]:
    """Rates of `batches` over `seconds`, after a first batch that builds the pipeline (vocabulary, shuffle buffer)."""
    start = time.perf_counter()
    next(batches)
    warmup = time.perf_counter() - start
    examples = tokens = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        batch = next(batches)
        examples += cfg.batch_size
        tokens += int((batch["encoder_input_tokens"] > 0).sum() + (batch["decoder_target_tokens"] > 0).sum())
    return {"examples_per_s": examples / elapsed, "batches_per_s": examples / elapsed / cfg.batch_size,
            "non_pad_tokens_per_s": tokens / elapsed, "warmup_s": warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="time to measure, after warm-up")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow CPU threads")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    cfg, batches = make_batches(args.batch_size, args.threads)
    rates = measure(cfg, batches, args.seconds)
    print(f"data pipeline ({cfg.mixture_or_task_name}, {cfg.task_feature_lengths['inputs']}/"
          f"{cfg.task_feature_lengths['targets']}, packed, {args.threads} TF thread(s)):")
    print(f"  {rates['examples_per_s']:,.0f} examples/s = {rates['batches_per_s']:,.1f} batches/s of "
          f"{cfg.batch_size}; {rates['non_pad_tokens_per_s']:,.0f} non-pad tokens/s; warm-up {rates['warmup_s']:.1f}s")
    print(f"  reproduce: {sys.executable} {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
