"""MODEL_DIRs for the release tests, written without the trainer: an orbax checkpoint holding {"params": ...} and
the records a run leaves (config.json, metrics.jsonl, train_end.json, eval/metrics.json), in the trainer's format.

The model is random but has the embedded vocabulary's size, so its generations are real (if odd) text.
"""

from __future__ import annotations

import json

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from t5scale.data.vocab import EMBEDDED_PIECES, EXTRA_IDS
from tests.testing import random_model, tiny_config

VOCAB_SIZE = EMBEDDED_PIECES + EXTRA_IDS + 28  # padded past the vocabulary, as real runs pad to 128s
STEP = 7
TEXTS = ["The interpreter reads a line.", "sst2 sentence: a fine module", "x = [i for i in range(3)]"]


def run_config(model_dir: str, cfg, *, initial_checkpoint_path: str | None = None) -> dict:
    return {"model": cfg.to_dict(),
            "data": {"mixture_or_task_name": "embedded_span_corruption",
                     "task_feature_lengths": {"inputs": 32, "targets": 8}, "batch_size": 4},
            "train": {"model_dir": model_dir, "train_steps": STEP, "flop_budget": None, "time_budget_s": 600.0,
                      "initial_checkpoint_path": initial_checkpoint_path}}


def make_model_dir(model_dir: str, *, seed: int = 0, scan_layers: bool = True,
                   initial_checkpoint_path: str | None = None, eval_metrics: bool = True):
    """A MODEL_DIR (local or gs://) with checkpoint_<STEP>; returns the model it holds."""
    cfg = tiny_config(vocab_size=VOCAB_SIZE, scan_layers=scan_layers, name="test-tiny-embedded")
    model = random_model(cfg, seed=seed)
    root = epath.Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(root / f"checkpoint_{STEP}" / "state", {"params": nnx.state(model, nnx.Param)})
    jax.effects_barrier()
    (root / "config.json").write_text(json.dumps(run_config(model_dir, cfg,
                                                            initial_checkpoint_path=initial_checkpoint_path)))
    (root / "config.gin").write_text("# gin text, kept for the record only\nimport os\n")
    (root / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 8.0 / s}) + "\n"
                                                for s in range(1, STEP + 1)))
    (root / "train_end.json").write_text(json.dumps({"step": STEP, "ended_by": "train_steps", "last_loss": 1.14,
                                                     "start_step": 0}))
    if eval_metrics:
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / "metrics.json").write_text(json.dumps(
            {"checkpoint": f"{model_dir}/checkpoint_{STEP}", "step": STEP, "split": "validation",
             "tasks": {"embedded_sst2": {"accuracy": 61.5}}, "averages": {}}))
    return model
