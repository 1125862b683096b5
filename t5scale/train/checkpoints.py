"""Checkpoints with orbax: `MODEL_DIR/checkpoint_<step>/` (t5x's naming), local or gs://.

Each holds the train state (params, optimizer state, step) and a JSON record of the run's configuration; a run that
prunes while it trains (t5scale.train.pruning) adds its masks as a third item, `masks`, so the checkpoints of runs
that do not prune are what they always were. The data
iterators' positions are written beside it by every process, `MODEL_DIR/data_state/checkpoint_<step>/process_<i>`,
with a manifest of their file sizes, before the state is committed, so a committed checkpoint always has its data
position.

Restoring tells two failures apart. A *torn* checkpoint (unreadable metadata or arrays, a data-state file that does
not match its manifest) is skipped for the previous one; all processes agree on it. An *incompatible* one reads fine
but does not fit the run (tree structure, shapes, dtypes, a data position the input pipeline cannot take): that
stops the run with an `IncompatibleCheckpointError`, as does a MODEL_DIR whose checkpoints are all torn. A run never
trains from scratch over existing checkpoints unless told to (`restart_from_scratch`). A pruning run whose checkpoint
has no masks, or a run without pruning that meets one with masks, is incompatible too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

STATE, RUN, MASKS = "state", "run", "masks"
DATA_STATE = "data_state"
START_OVER = "--gin.train_config.restart_from_scratch=True"


class IncompatibleCheckpointError(ValueError):
    """MODEL_DIR has checkpoints, but none this run can resume from. The message is one line: what differs, and how
    to proceed."""


class CheckpointWriteError(OSError):
    """Saving failed (disk full, permissions, a storage outage); what was committed before is intact."""


class CheckpointReadError(OSError):
    """Reading a checkpoint that is intact failed (a storage outage, permissions): the run stops without writing."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Another shape of the train state that a checkpoint may have been saved in, and how to convert from it."""

    name: str  # for the log, e.g. "scan_layers=False"
    abstract_state_fn: Callable[[], Any]  # ShapeDtypeStructs with shardings; built only when needed
    convert_fn: Callable[[Any], Any]  # restored state in this layout -> the run's state
    abstract_masks_fn: Callable[[], Any] | None = None  # the same for a pruning run's masks
    convert_masks_fn: Callable[[Any], Any] | None = None


def _how_to_proceed(model_dir: epath.Path) -> str:
    return (f"To proceed: rerun with the settings the checkpoint was written with, use a new MODEL_DIR, or pass "
            f"{START_OVER} to delete the checkpoints in {model_dir} and start over.")


def describe_settings_changed(saved: dict, current: dict, sections=("model", "optim", "data", "mesh")) -> str:
    """'model.scan_layers (True -> False), ...' for the config.json fields that differ; '' if none."""
    changed = [f"{section}.{key} ({saved[section][key]!r} -> {value!r})"
               for section in sections if section in saved and section in current
               for key, value in current[section].items() if key in saved[section] and saved[section][key] != value]
    return ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")


def _flat_layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'params/encoder/...': (shape, dtype)} of an abstract state or of orbax's saved metadata tree."""
    return {"/".join(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in ocp.tree.to_flat_dict(tree).items() if leaf is not None}


def describe_difference(saved: dict, expected: dict) -> str:
    """What a saved state layout has that the run's does not, and vice versa (for one-line errors)."""
    def few(names):
        names = sorted(names)
        return f"{names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")

    parts = []
    if only_saved := set(saved) - set(expected):
        parts.append(f"{len(only_saved)} arrays the run does not have, e.g. {few(only_saved)}")
    if only_expected := set(expected) - set(saved):
        parts.append(f"lacks {len(only_expected)} the run needs, e.g. {few(only_expected)}")
    mismatched = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    if mismatched:
        (s_shape, s_dtype), (e_shape, e_dtype) = saved[mismatched[0]], expected[mismatched[0]]
        parts.append(f"{len(mismatched)} arrays of another shape or dtype, e.g. {mismatched[0]} is "
                     f"{s_dtype}{list(s_shape)} there and {e_dtype}{list(e_shape)} here")
    return "; ".join(parts)


def _all_processes_agree(ok: bool) -> bool:
    """True iff `ok` on every process: a fallback decision that one host takes alone would split the run."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
    def __init__(self, model_dir: str, *, keep: int | None = 3, keep_every: int | None = None,
                 async_save: bool = True):
        """Keeps the newest `keep` checkpoints (None: all) and, for good, every one whose step is a multiple of
        `keep_every`."""
        self.model_dir = epath.Path(model_dir)
        self._saved = False
        policies = [checkpoint_managers.LatestN(keep)]
        if keep_every:
            policies.append(checkpoint_managers.EveryNSteps(keep_every))
        self._manager = ocp.CheckpointManager(
            self.model_dir,
            options=ocp.CheckpointManagerOptions(
                step_prefix="checkpoint", create=True, enable_async_checkpointing=async_save,
                preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies)),
            item_handlers={STATE: ocp.StandardCheckpointHandler(), RUN: ocp.JsonCheckpointHandler(),
                           MASKS: ocp.StandardCheckpointHandler()})

    def data_state_path(self, step: int, process: int | None = None) -> epath.Path:
        process = jax.process_index() if process is None else process
        return self.model_dir / DATA_STATE / f"checkpoint_{step}" / f"process_{process}"

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, run_record: dict, save_data_state: Callable[[str], Any],
             masks: Any = None) -> None:
        path = self.data_state_path(step)
        items = {STATE: ocp.args.StandardSave(state), RUN: ocp.args.JsonSave(run_record)}
        if masks is not None:
            items[MASKS] = ocp.args.StandardSave(masks)
        try:
            save_data_state(str(path))
            _write_manifest(path)
            self._manager.save(step, args=ocp.args.Composite(**items))
        except OSError as error:  # also a failed asynchronous write of the previous step, which orbax raises here
            raise self._write_error(f"checkpoint_{step}", error) from error
        self._saved = True
        self._remove_stale_data_states(also_keep=step)

    def _remove_stale_data_states(self, also_keep: int | None = None) -> None:
        """Data positions of checkpoints orbax has deleted (or never committed)."""
        root = self.model_dir / DATA_STATE
        if jax.process_index() != 0 or not root.exists():
            return
        kept = {f"checkpoint_{s}" for s in [*self._manager.all_steps(), also_keep]}
        for path in root.iterdir():
            if path.name not in kept:
                path.rmtree(missing_ok=True)

    def restore_latest(self, abstract_state: Any, restore_data_state: Callable[[str], Any], *,
                       abstract_masks: Any = None, layouts: tuple[Layout, ...] = (), settings_changed: str = "",
                       derive_data_position: Callable[[int], Any] | None = None
                       ) -> tuple[int, Any, dict | None, Any]:
        """Newest restorable checkpoint as (step, state, run record, masks); (0, None, None, None) when MODEL_DIR has
        none. A pruning run passes `abstract_masks` (its masks' ShapeDtypeStructs); masks is None otherwise.

        A torn checkpoint is skipped with a warning. One saved in one of `layouts` is converted. One that does not fit
        raises IncompatibleCheckpointError, naming `settings_changed` (from the run's config.json) as the likely
        cause; so does a MODEL_DIR whose checkpoints are all torn. Data positions saved by another number of
        processes cannot be split or merged: `derive_data_position(step)` then places the data instead (with a
        warning), or, without it, the run stops.
        """
        steps = self.steps()
        for step in reversed(steps):
            saved = self._saved_layout(step)
            if not _all_processes_agree(saved is not None):
                continue
            saved_state, saved_masks = saved
            target, convert_fn, layout = self._choose_layout(step, saved_state, abstract_state, layouts,
                                                             settings_changed)
            masks_target, convert_masks = self._masks_target(step, saved_masks, abstract_masks, layout)
            if self._data_positions_fit(step, settings_changed, derive_data_position is not None):
                restored = self._try_restore(step, target, masks_target, restore_data_state)
            else:
                restored = self._try_restore(step, target, masks_target, derive_data_position, data_files=False)
            if _all_processes_agree(restored is not None):
                state, record, masks = restored
                return step, convert_fn(state), record, None if masks is None else convert_masks(masks)
        if steps:
            raise IncompatibleCheckpointError(
                f"None of the checkpoints in {self.model_dir} (steps {steps}) can be restored: each is torn or "
                f"corrupted (see the warnings above), and the run will not silently start from scratch over them. "
                + _how_to_proceed(self.model_dir))
        return 0, None, None, None

    def _saved_layout(self, step: int) -> tuple[dict, dict | None] | None:
        """The saved layouts of the train state and of the pruning masks (None: the checkpoint has none); None when
        either cannot be read (torn)."""
        try:
            metadata = self._manager.item_metadata(step)
            has_masks = (self.model_dir / f"checkpoint_{step}" / MASKS).exists()
            layouts = []
            for item in [STATE, MASKS] if has_masks else [STATE]:
                if metadata[item] is None:
                    raise ValueError(f"no metadata for the {item} item")
                layouts.append(_flat_layout(metadata[item].tree))
            return layouts[0], layouts[1] if has_masks else None
        except Exception as error:  # noqa: BLE001 -- any failure to read it means the checkpoint is torn
            self._warn_torn(step, error)
            return None

    def _choose_layout(self, step: int, saved: dict, abstract_state: Any, layouts: tuple[Layout, ...],
                       settings_changed: str):
        expected = _flat_layout(abstract_state)
        if saved == expected:
            return abstract_state, lambda state: state, None
        for layout in layouts:
            other = layout.abstract_state_fn()
            if saved == _flat_layout(other):
                converted = _flat_layout(jax.eval_shape(layout.convert_fn, other))
                if converted != expected:
                    raise IncompatibleCheckpointError(
                        f"{self.model_dir / f'checkpoint_{step}'} was saved with {layout.name} and does not convert "
                        f"to this run's layout: converted, it has {describe_difference(converted, expected)}. "
                        + _how_to_proceed(self.model_dir))
                logging.warning("%s was saved with %s; converting its params and optimizer state to this run's "
                                "layout.", self.model_dir / f"checkpoint_{step}", layout.name)
                return other, layout.convert_fn, layout
        raise IncompatibleCheckpointError(
            f"{self.model_dir / f'checkpoint_{step}'} does not fit this run: it has "
            f"{describe_difference(saved, expected)}. "
            + (f"Settings changed since it was written: {settings_changed}. " if settings_changed else "")
            + _how_to_proceed(self.model_dir))

    def _masks_target(self, step: int, saved: dict | None, abstract_masks: Any, layout: Layout | None):
        """(what to restore the `masks` item into, its converter); (None, None) for a run without pruning. The
        masks' presence (`saved`: their layout in the checkpoint) must match the run's: pruning on without them, or
        off with them, is incompatible."""
        checkpoint = self.model_dir / f"checkpoint_{step}"
        has_masks = saved is not None
        if abstract_masks is None and not has_masks:
            return None, None
        if abstract_masks is None or not has_masks:
            raise IncompatibleCheckpointError(
                f"{checkpoint} " + ("holds pruning masks (its run pruned while it trained) and this run does not "
                                    "prune: training on would let the pruned weights grow back. "
                                    if has_masks else
                                    "has no pruning masks and this run prunes (train_config.pruning): its masks "
                                    "cannot be recovered from the weights. ")
                + _how_to_proceed(self.model_dir))
        if layout is None:
            target, convert = abstract_masks, lambda masks: masks
        else:
            target, convert = layout.abstract_masks_fn(), layout.convert_masks_fn
        if saved != _flat_layout(target):
            raise IncompatibleCheckpointError(
                f"The pruning masks in {checkpoint} do not fit this run (another choice of pruned groups?): they "
                f"have {describe_difference(saved, _flat_layout(target))}. " + _how_to_proceed(self.model_dir))
        return target, convert

    def _data_positions_fit(self, step: int, settings_changed: str, can_derive: bool) -> bool:
        root = self.model_dir / DATA_STATE / f"checkpoint_{step}"
        saved_by = sorted(p.name.removesuffix(".manifest.json") for p in root.glob("process_*.manifest.json"))
        if len(saved_by) == jax.process_count():
            return True
        if can_derive:
            logging.warning("%s holds the data positions of %d processes and this run has %d: each process's "
                            "data restarts from the position derived from step %d (its shard read from the start, "
                            "%d batches skipped), not from where the saving processes left off.",
                            self.model_dir / f"checkpoint_{step}", len(saved_by), jax.process_count(), step, step)
            return False
        raise IncompatibleCheckpointError(
                f"{self.model_dir / f'checkpoint_{step}'} holds the data positions of {len(saved_by)} processes "
                f"and this run has {jax.process_count()}; a data position cannot be split or merged across "
                f"processes. " + (f"Settings changed: {settings_changed}. " if settings_changed else "")
                + _how_to_proceed(self.model_dir))

    def _try_restore(self, step: int, target: Any, masks_target: Any, restore_data_state: Callable[[str], Any],
                     data_files=True):
        """(state, record, masks or None), or None for a torn checkpoint. `restore_data_state` gets this process's
        data-state path, or with `data_files=False` the step."""
        path = self.data_state_path(step)
        if data_files and (problem := _manifest_problem(path)) is not None:
            self._warn_torn(step, problem)
            return None
        items = {STATE: ocp.args.StandardRestore(target), RUN: ocp.args.JsonRestore()}
        if masks_target is not None:
            items[MASKS] = ocp.args.StandardRestore(masks_target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # noqa: BLE001 -- the layout fits (checked above): what remains is damage
            self._warn_torn(step, error)
            return None
        try:
            restore_data_state(str(path) if data_files else step)
        except OSError as error:  # copying the files down failed: the storage, not the checkpoint
            reason = str(error).splitlines()[0][:200] if str(error) else ""
            raise CheckpointReadError(
                f"Reading the data position {path} failed ({type(error).__name__}: {reason}); checkpoint_{step} is "
                "intact. Rerun the same command once the storage is reachable.") from None
        except Exception as error:  # noqa: BLE001 -- the files match their manifest: the pipeline changed
            raise IncompatibleCheckpointError(
                f"The data position saved at {path} does not fit this run's input pipeline "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}). "
                + _how_to_proceed(self.model_dir)) from None
        return restored[STATE], restored[RUN], restored[MASKS] if masks_target is not None else None

    def _warn_torn(self, step: int, error: Exception | str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {str(error).splitlines()[0][:300]}" \
            if str(error) else type(error).__name__
        logging.warning("Checkpoint %s is torn or corrupted (%s); falling back to an earlier one.",
                        self.model_dir / f"checkpoint_{step}", reason)

    def delete_all(self) -> None:
        """Every checkpoint and data position in MODEL_DIR (the explicit start-over)."""
        for step in self.steps():
            self._manager.delete(step)
        if jax.process_index() == 0:
            (self.model_dir / DATA_STATE).rmtree(missing_ok=True)
        self._manager.reload()

    def wait(self) -> None:
        """Block until async saves are committed."""
        try:
            self._manager.wait_until_finished()
        except OSError as error:
            raise self._write_error("an asynchronous checkpoint", error) from error

    def _write_error(self, what: str, error: OSError) -> CheckpointWriteError:
        try:  # an earlier save may still be committing: the message names the newest that made it
            self._manager.wait_until_finished()
        except OSError:
            pass
        self._manager.reload()
        steps = self.steps()
        return CheckpointWriteError(
            f"Writing {what} to {self.model_dir} failed ({type(error).__name__}: {error}). The committed checkpoints "
            f"are intact ({f'newest: step {steps[-1]}' if steps else 'none yet'}): fix the storage (space, "
            "permissions), then rerun the same command to resume.")

    def close(self) -> None:
        self.wait()
        if self._saved:  # a run that saved nothing (e.g. could not resume) leaves MODEL_DIR as it found it
            self._remove_stale_data_states()
        self._manager.close()


def _manifest_path(data_state: epath.Path) -> epath.Path:
    return data_state.parent / f"{data_state.name}.manifest.json"


def _data_files(data_state: epath.Path) -> dict[str, int]:
    manifest = _manifest_path(data_state).name
    return {p.name: p.stat().length for p in data_state.parent.glob(f"{data_state.name}.*") if p.name != manifest}


def _write_manifest(data_state: epath.Path) -> None:
    """Sizes of this process's data-state files, written after them: a file that differs later is torn."""
    _manifest_path(data_state).write_text(json.dumps(_data_files(data_state)))


def _manifest_problem(data_state: epath.Path) -> str | None:
    try:
        expected = json.loads(_manifest_path(data_state).read_text())
    except (OSError, ValueError) as error:
        return f"data-state manifest {_manifest_path(data_state)} is unreadable: {type(error).__name__}"
    found = _data_files(data_state)
    if found != expected:
        return f"data-state files {data_state}.* are {found}, their manifest says {expected}"
    return None


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


def load_model(path: str, *, mesh=None, rules: str = "t5x", **config_changes):
    """The T5 of a checkpoint (or of the newest in a MODEL_DIR), its shape read from the run's config.json.

    With a `mesh`, the parameters come back placed on it by the `rules` (as training places them), each host reading
    only the shards its own devices hold (all of a parameter the rules replicate). Without one, they come back whole,
    as host (numpy) arrays.
    `config_changes` may change what does not alter the parameters (dtype, dropout_rate).
    Returns (model, checkpoint path).
    """
    from flax import nnx

    from t5scale.config import ModelConfig
    from t5scale.model.t5 import T5
    from t5scale.train.partitioning import param_shardings

    checkpoint = resolve_checkpoint(path)
    config_path = checkpoint.parent / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing: cannot tell the shape of the model in {checkpoint}.")
    cfg = ModelConfig.from_dict(json.loads(config_path.read_text())["model"]).replace(**config_changes)
    graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
    if mesh is not None:
        def placed(variable, sharding):
            value = variable.get_value()
            variable.set_value(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))

        jax.tree.map(placed, abstract_params, param_shardings(abstract_params, mesh, rules),
                     is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, restore_params(str(checkpoint), abstract_params), rest), checkpoint
