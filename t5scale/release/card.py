"""The model card (`README.md`) of a release: what the model is, what made it, how well it does, how to load it.

Everything in it is computed from the bundle's own records, so two releases of the same checkpoint get the same
card (apart from where they were published).
"""

from __future__ import annotations

import dataclasses

from t5scale.config import ModelConfig
from t5scale.model.flops import count_params, training_flops


@dataclasses.dataclass(frozen=True)
class Facts:
    cfg: ModelConfig
    step: int
    source: str  # the checkpoint it was released from
    destination: str
    params_dtype: str  # float32, bfloat16 or compressed
    vocabulary: str  # where the vocabulary was copied from
    run: dict  # the run's config.json ({} when unknown)
    train_end: dict | None
    warm_start: dict | None  # config.json of the run it was warm-started from
    warm_start_end: dict | None
    metrics: dict | None  # eval metrics.json
    compression: dict | None
    files: dict[str, int]  # name -> bytes, the card and manifest aside


def model_card(f: Facts) -> str:
    cfg = f.cfg
    params = count_params(cfg)
    lines = [f"# {cfg.name or 'T5'}", "",
             f"A T5 encoder-decoder released with t5scale from `{f.source}` (step {f.step}).", "",
             "## Shape", "",
             "| EL | DL | DM | KV | NH | FF | vocab | activation | embeddings |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {cfg.EL} | {cfg.DL} | {cfg.DM} | {cfg.KV} | {cfg.NH} | {cfg.FF} | {cfg.vocab_size} | "
             f"{cfg.activation.value} | {'tied' if cfg.tie_embeddings else 'untied'} |", "",
             f"Parameters: {params.total:,} ({params.total - params.embedding - params.logits:,} without the "
             f"embedding and output layer), stored as {f.params_dtype}.", ""]
    lines += _training("Training", f.run, f.train_end, f.step) if f.run else ["## Training", "", "No run records "
                                                                              "(the source run is gone).", ""]
    if f.warm_start:
        lines += _training("Warm start (the run this one started from)", f.warm_start, f.warm_start_end,
                           (f.warm_start_end or {}).get("step"))
    lines += _metrics(f.metrics) + _compression(f.compression)
    lines += ["## Files", "", "| file | bytes |", "|---|---|",
              *(f"| {name} | {size:,} |" for name, size in sorted(f.files.items())),
              "| README.md | this card |", "| manifest.json | sha256 and size of every file, written last |", "",
              f"Vocabulary: copied from `{f.vocabulary}`.", "",
              "## How to load", "", "```python", "import t5scale", "",
              f"model = t5scale.load({(f.destination or '/path/to/this/folder')!r})  # verifies every checksum",
              'model.generate(["..."], max_length=32)', "model.score([\"inputs\"], [\"targets\"])  # log-likelihoods",
              "```", ""]
    return "\n".join(lines)


def _training(title: str, run: dict, end: dict | None, step: int | None) -> list[str]:
    data, train = run.get("data") or {}, run.get("train") or {}
    lengths = data.get("task_feature_lengths") or {}
    lines = [f"## {title}", "",
             f"- data: `{data.get('mixture_or_task_name', '?')}`, inputs {lengths.get('inputs', '?')} / targets "
             f"{lengths.get('targets', '?')} tokens, batch {data.get('batch_size', '?')}"]
    if end:
        lines.append(f"- steps: {end.get('step')}, ended by `{end.get('ended_by')}`; last training loss "
                     f"{_number(end.get('last_loss'))}")
    elif step is not None:
        lines.append(f"- steps: {step} (train_end.json missing: the run may not have finished)")
    budgets = {k: train.get(k) for k in ("train_steps", "flop_budget", "time_budget_s") if train.get(k) is not None}
    if budgets:
        lines.append("- budgets: " + ", ".join(f"{k} {_number(v)}" for k, v in budgets.items()))
    if train.get("initial_checkpoint_path"):
        lines.append(f"- warm-started from `{train['initial_checkpoint_path']}`")
    model = run.get("model")
    if model and lengths.get("inputs") and lengths.get("targets"):
        from t5scale.config import ModelConfig

        per_example = training_flops(ModelConfig.from_dict(model), lengths["inputs"], lengths["targets"]).total
        lines.append(f"- training FLOPs: {per_example:.3g} per example" + (
            f", {per_example * data['batch_size'] * step:.3g} over {step} steps" if step and data.get("batch_size")
            else ""))
    return [*lines, ""]


def _metrics(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["## Metrics", "", "No eval metrics were bundled.", ""]
    rows = [f"| {task} | {name} | {_number(value)} |" for task, values in (metrics.get("tasks") or {}).items()
            for name, value in values.items()]
    rows += [f"| {name} | | {_number(value)} |" for name, value in (metrics.get("averages") or {}).items()]
    return ["## Metrics", "", f"On the {metrics.get('split', '?')} split at step {metrics.get('step', '?')}:", "",
            "| task | metric | value |", "|---|---|---|", *rows, ""]


def _compression(compression: dict | None) -> list[str]:
    if not compression:
        return ["## Compression", "", "None: the parameters are the checkpoint's.", ""]
    setting = ", ".join(f"{k}={v}" for k, v in (compression.get("setting") or {}).items())
    return ["## Compression", "", f"Compressed from `{compression.get('source')}`: {setting}. Weights are "
            "dequantized to float32 on load.", ""]


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
