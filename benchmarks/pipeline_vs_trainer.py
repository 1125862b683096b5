"""Input pipeline vs trainer: span-corruption batches/s over the trainer's steps/s, at the same batch and lengths.

    .venv/bin/python benchmarks/pipeline_vs_trainer.py             # small, batch 8, 512/114; pipeline on 1 thread
    .venv/bin/python benchmarks/pipeline_vs_trainer.py --tiny      # smoke test

The pipeline is the trainer's (embedded_span_corruption, packed; see data_pipeline.py) with TensorFlow limited to
--threads threads; the trainer step is t5scale's own, timed on a real packed batch from that pipeline (segment
ids and all, as in training). The two run one after the other, not interleaved: a tf.data iterator keeps
prefetching in the background, so it is measured first and closed before the trainer is timed. With a goal of
10x, the machine's 10-15% drift does not matter. The goal (issue 6): pipeline batches/s >= 10x trainer steps/s.
"""

import argparse
import gc

import data_pipeline
import harness
import numpy as np

import t5scale

GOAL = (">=", 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)
    parser.add_argument("--seconds", type=float, help="time to measure the pipeline, after its first batch")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow CPU threads for the pipeline")
    parser.add_argument("--steps", type=int, help="timed trainer steps")
    parser.add_argument("--warmup", type=int, default=2, help="trainer warm-up steps (the first compiles)")
    args = harness.fill_defaults(parser.parse_args(),
                                 full=dict(batch_size=8, input_len=512, target_len=114, seconds=20.0, steps=3,
                                           scan=False),  # the faster trainer: the harder goal
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, seconds=2.0, steps=2,
                                           scan=False))
    harness.warn_if_busy()
    cfg = harness.model_config(args)

    data_cfg, batches = data_pipeline.make_batches(args.batch_size, args.threads, (args.input_len, args.target_len))
    pipeline = data_pipeline.measure(data_cfg, batches, args.seconds)
    batch = next(batches)
    del batches  # stops tf.data's background prefetching before the trainer is timed
    gc.collect()
    print(f"pipeline ({args.threads} TF thread(s)): {pipeline['batches_per_s']:,.2f} batches/s of "
          f"{args.batch_size} x {args.input_len}/{args.target_len} (warm-up {pipeline['warmup_s']:.1f}s)")
    highest = max(int(batch["encoder_input_tokens"].max()), int(batch["decoder_target_tokens"].max()))
    if highest >= cfg.vocab_size:
        raise ValueError(f"The pipeline's token ids reach {highest}, beyond the vocab of shape {cfg.name} "
                         f"({cfg.vocab_size}); pick a shape with a vocabulary of at least {highest + 1}.")

    run, _ = harness.make_t5scale_trainer(t5scale.make_model(cfg, seed=args.seed), batch)
    run(args.warmup)
    step_s, _ = harness.timed(lambda: run(args.steps))
    step_s /= args.steps
    print(f"trainer ({cfg.name}, {cfg.dtype.name}): {1 / step_s:,.3f} steps/s ({step_s:.3f}s per step, "
          f"{np.mean(batch['decoder_loss_weights'] > 0):.0%} of target positions are real tokens)")
    harness.finish(args, {"benchmark": "pipeline_vs_trainer",
                          "ratio_name": "pipeline batches/s / trainer steps/s",
                          "ratio": pipeline["batches_per_s"] * step_s, "goal": GOAL, "shape": cfg.to_dict(),
                          "batch_size": args.batch_size, "input_len": args.input_len, "target_len": args.target_len,
                          "tf_threads": args.threads, "pipeline": pipeline, "trainer_step_s": step_s,
                          "trainer_steps": args.steps})


if __name__ == "__main__":
    main()
