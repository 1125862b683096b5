"""Checkpoints with orbax: `MODEL_DIR/checkpoint_<step>/` (t5x's naming), local or gs://.

Each holds the train state (params, optimizer state, step) and a JSON record of the run's configuration. The data
iterators' positions are written beside it by every process, `MODEL_DIR/data_state/checkpoint_<step>/process_<i>`,
before the state is committed, so a committed checkpoint always has its data position.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

STATE, RUN = "state", "run"


class Checkpointer:
    def __init__(self, model_dir: str, *, keep: int | None = 3, async_save: bool = True):
        self.model_dir = epath.Path(model_dir)
        self._manager = ocp.CheckpointManager(
            self.model_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix="checkpoint", create=True,
                                                 enable_async_checkpointing=async_save))

    def data_state_path(self, step: int) -> str:
        return str(self.model_dir / "data_state" / f"checkpoint_{step}" / f"process_{jax.process_index()}")

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, run_record: dict, save_data_state: Callable[[str], Any]) -> None:
        save_data_state(self.data_state_path(step))
        self._manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                            RUN: ocp.args.JsonSave(run_record)}))
        self._remove_stale_data_states()

    def _remove_stale_data_states(self) -> None:
        root = self.model_dir / "data_state"
        kept = {f"checkpoint_{s}" for s in self._manager.all_steps()}
        if root.exists():
            for path in root.iterdir():
                if path.name not in kept and not self._manager.is_saving_in_progress():
                    path.rmtree(missing_ok=True)

    def restore_latest(self, abstract_state: Any,
                       restore_data_state: Callable[[str], Any]) -> tuple[int, Any, dict | None]:
        """Newest readable checkpoint as (step, state, run record); an unreadable one is skipped with a warning.

        Returns (0, None, None) when there is none.
        """
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardRestore(abstract_state), RUN: ocp.args.JsonRestore()}))
                restore_data_state(self.data_state_path(step))
                return step, restored[STATE], restored[RUN]
            except Exception as error:  # a torn or corrupted checkpoint: fall back to the previous one
                logging.warning("Checkpoint %s is unreadable (%s: %s); falling back to an earlier one.",
                                self.model_dir / f"checkpoint_{step}", type(error).__name__,
                                str(error).splitlines()[0][:300] if str(error) else "")
        return 0, None, None

    def wait(self) -> None:
        """Block until async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _absolute(path: str) -> epath.Path:
    """orbax wants absolute paths; a relative local one is taken from the working directory."""
    path = epath.Path(path)
    return path if path.is_absolute() else path.resolve()


def restore_params(checkpoint_path: str, abstract_params: Any) -> Any:
    """Only the params of a t5scale checkpoint (`.../checkpoint_<step>`), for warm starts."""
    path = _absolute(checkpoint_path)
    if not (path / STATE).exists():
        raise FileNotFoundError(f"{path} is not a t5scale checkpoint: no {STATE}/ in it. "
                                "Point it at a MODEL_DIR/checkpoint_<step> directory.")
    target = {"params": abstract_params}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(path / STATE, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    return restored["params"]


def resolve_checkpoint(path: str, name: str = "checkpoint path") -> epath.Path:
    """`MODEL_DIR/checkpoint_<step>` as given, or the newest one in a MODEL_DIR. `name` is the user's name for
    `path` in the error. Returns an absolute path."""
    path = _absolute(path)
    if (path / STATE).exists():
        return path
    steps = sorted((int(p.name.removeprefix("checkpoint_")), p) for p in (path.glob("checkpoint_*") if path.exists()
                   else []) if p.name.removeprefix("checkpoint_").isdigit() and (p / STATE).exists())
    if not steps:
        raise FileNotFoundError(f"{name} {path} is neither a t5scale checkpoint (MODEL_DIR/checkpoint_<step>) nor a "
                                "MODEL_DIR holding one.")
    return steps[-1][1]


def load_model(path: str, **config_changes):
    """The T5 of a checkpoint (or of the newest in a MODEL_DIR), its shape read from the run's config.json.

    `config_changes` may change what does not alter the parameters (dtype, dropout_rate).
    Returns (model, checkpoint path).
    """
    import json

    from flax import nnx

    from t5scale.config import ModelConfig
    from t5scale.model.t5 import T5

    checkpoint = resolve_checkpoint(path)
    config_path = checkpoint.parent / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing: cannot tell the shape of the model in {checkpoint}.")
    cfg = ModelConfig.from_dict(json.loads(config_path.read_text())["model"]).replace(**config_changes)
    graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
    return nnx.merge(graphdef, restore_params(str(checkpoint), abstract_params), rest), checkpoint
