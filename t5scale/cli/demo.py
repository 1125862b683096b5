"""`t5scale demo`: the embedded default, run on this machine with no download: the shape table, then pretrain ->
a small shape sweep with its Pareto frontier -> fine-tune -> eval -> compress (int8, int4, pruned) -> release of
the int8 model, `t5scale.load` of it and `t5scale infer` over a file, for a tiny shape on CPython's own prose.
Composes the other commands through the registry."""

from __future__ import annotations

import json
import pathlib
import time

from t5scale.cli import common

DEMO_SHAPES = ("tiny", "small", "small-el16", "small-nl16", "base", "base-nl36", "large", "v1_1-base")


@common.command("demo", "the whole programme on this machine: shapes, pretrain, sweep, fine-tune, eval, compress, "
                "release, load and infer")
def demo(args, gin_files, bindings) -> None:
    print("t5scale demo 1/6: named shapes (params and training FLOPs from the config alone)\n")
    common.run_command("shapes", names=list(DEMO_SHAPES), json=False)
    model_dir = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"

    print("\nt5scale demo 2/6: pretraining on span corruption of CPython's own prose (runs/demo.gin)")
    result = common.run_command("train", ["runs/demo.gin", *gin_files], [f"MODEL_DIR='{model_dir}'", *bindings])
    losses = [json.loads(line)["loss"] for line in pathlib.Path(result["model_dir"], "metrics.jsonl").open()]
    print(f"training loss: first step {losses[0]:.3f}, last step {losses[-1]:.3f} "
          f"(mean of first 10 {sum(losses[:10]) / 10:.3f}, last 10 {sum(losses[-10:]) / 10:.3f})")

    sweep_dir = f"{model_dir}/sweep"
    print(f"\nt5scale demo 3/6: a shape sweep (sweeps/demo.gin: depth 1, 2, 4 at DM 64), one `t5scale train` "
          f"process per run, into {sweep_dir}")
    common.run_command("sweep", ["sweeps/demo.gin"], [f"SWEEP_DIR='{sweep_dir}'"], list=False, run_index=None)
    common.run_command("pareto", sweep_dir=sweep_dir, cost="params,flops", quality="neg_log_perplexity")
    common.run_command("curves", sweep_dir=sweep_dir, target_loss=None)

    print("\nt5scale demo 4/6: fine-tuning the pretrained tiny model on embedded_sst2, SST-2's format on sentences "
          "of CPython's docs (runs/demo_finetune.gin; its accuracy every 50 steps), then evaluating")
    finetuned = f"{model_dir}/finetune"
    common.run_command("finetune", ["runs/demo_finetune.gin"], [f"MODEL_DIR='{finetuned}'",
                                                                 f"INITIAL_CHECKPOINT_PATH='{model_dir}'"])
    common.run_command("eval", ["runs/eval.gin"], [f"CHECKPOINT_PATH='{finetuned}'",
                                                   "MIXTURE_OR_TASK_NAME='embedded_sst2'",
                                                   f"EVAL_OUTPUT_DIR='{finetuned}/eval'"])
    from t5scale.data.finetune_tasks import demo_examples

    labels = [example["label"] for example in demo_examples("validation")]
    majority = 100 * max(labels.count(0), labels.count(1)) / len(labels)
    print(f"(always answering the more frequent label would score {majority:.2f})")

    print("\nt5scale demo 5/6: compressing the fine-tuned model (int8, int4, 50%-sparse int8), stored small and "
          "evaluated again: accuracy against bytes")
    common.run_command("compress", checkpoints=[finetuned], task="embedded_sst2",
                       output_dir=f"{finetuned}/compress", settings=["bits=8", "bits=4", "bits=8,sparsity=0.5"])

    int8 = next(pathlib.Path(finetuned, "compress").glob("*/int8"))
    release_dir = f"{model_dir}/release"
    print(f"\nt5scale demo 6/6: releasing the int8 model ({int8}) to {release_dir}, then t5scale.load(...) in Python")
    common.run_command("release", checkpoint=str(int8), to=release_dir, dtype="float32", vocabulary=None,
                       metrics=None, overwrite=False)
    import t5scale

    model = t5scale.load(release_dir)
    print(model)
    texts = [f"sst2 sentence: {example['sentence']}" for example in demo_examples("validation")[:4]]
    for text, answer in zip(texts, model.generate(texts, max_length=4)):
        print(f"  {answer!r:12} <- {text[:80]}")

    inputs = pathlib.Path(model_dir, "inputs.jsonl")
    inputs.write_text("".join(json.dumps({"id": example["idx"], "inputs": f"sst2 sentence: {example['sentence']}"})
                              + "\n" for example in demo_examples("validation")[:16]))
    print(f"\nand a file of inputs ({inputs}) through `t5scale infer`, as a whole dataset would go (one JSONL "
          "shard here; resumable, and on every host of a pod)")
    common.run_command("infer", ["runs/infer.gin"], ["TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 4}"],
                       checkpoint=release_dir, input_file=str(inputs), id_field="id", output_dir=f"{model_dir}/infer")
    shard = next(pathlib.Path(model_dir, "infer").glob("predictions-*.jsonl"))
    for line in shard.read_text().splitlines()[:2]:
        print(f"  {line[:150]}")
    print(f"TensorBoard: tensorboard --logdir {model_dir}")
