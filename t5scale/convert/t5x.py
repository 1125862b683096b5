"""t5x checkpoints of the T5 1.0 / 1.1 networks (`t5x/examples/t5`) -> t5scale models.

Two on-disk formats, both read without t5x:
  older  `checkpoint_<N>/checkpoint`, a msgpack tree (flax.serialization) whose large arrays are tensorstore specs
         with paths relative to the checkpoint folder;
  newer  an orbax PyTree checkpoint in `checkpoint_<N>/` (or `checkpoint_<N>/state/`).
The parameters are the tree's `target` (or `optimizer/target`); optimizer state is skipped.

The whole correspondence is `name_map`: t5x names layers `layers_<i>` and stores attention kernels joined
(q/k/v [d, n*h], o [n*h, d]), t5scale `layers/<i>` with the heads axis split. The shape is read off the arrays
(t5x checkpoints carry no config of their own); `expected` (a shape name) is checked against it.
"""

from __future__ import annotations

import re

import numpy as np
from etils import epath

from t5scale.config import Activation, ModelConfig
from t5scale.convert.output import Rule, apply_rules, build_model, describe
from t5scale.model.t5 import T5

MSGPACK = "checkpoint"
_STEP = re.compile(r"checkpoint_(\d+)$")
_LAYER = re.compile(r"layers_(\d+)$")
_SHAPE_FIELDS = ("num_encoder_layers", "num_decoder_layers", "d_model", "d_kv", "num_heads", "d_ff", "vocab_size",
                 "activation", "tie_embeddings")


def locate(source: str) -> tuple[epath.Path, int]:
    """The checkpoint folder (as given, or the newest checkpoint_<N> in a MODEL_DIR) and its step."""
    path = epath.Path(source)
    if not path.is_absolute() and not str(source).startswith("gs://"):
        path = path.resolve()
    if (match := _STEP.search(path.name)) and path.is_dir():
        return path, int(match[1])
    steps = sorted((int(m[1]), p) for p in (path.iterdir() if path.is_dir() else []) if (m := _STEP.search(p.name)))
    if not steps:
        raise FileNotFoundError(f"{source} is neither a t5x checkpoint folder (checkpoint_<N>) nor a MODEL_DIR "
                                "holding one.")
    return steps[-1][1], steps[-1][0]


def read_target(checkpoint: epath.Path) -> dict[str, np.ndarray]:
    """{'encoder/layers_0/attention/query/kernel': array, ...}: the checkpoint's parameters, flat."""
    if (checkpoint / MSGPACK).is_file():
        tree = _read_msgpack(checkpoint)
    else:
        tree = _read_orbax(checkpoint)
    target = tree.get("target") if isinstance(tree, dict) else None
    if target is None and isinstance(tree.get("optimizer"), dict):
        target = tree["optimizer"].get("target")
    if not isinstance(target, dict):
        raise ValueError(f"{checkpoint}: no 'target' (or 'optimizer/target') parameter tree; top-level keys: "
                         f"{sorted(tree)[:6]}.")
    return {name: value for name, value in _flatten(target)}


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_ts_spec(value):
            yield from _flatten(value, f"{name}/")
        else:
            yield name, value


def _is_ts_spec(value) -> bool:
    return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


def _read_msgpack(checkpoint: epath.Path) -> dict:
    from flax import serialization

    path = checkpoint / MSGPACK
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack raises several kinds for a cut file
        raise ValueError(f"cannot read t5x checkpoint {path} ({type(error).__name__}: {error}); the file is "
                         "truncated or corrupt: copy the checkpoint again.") from None

    def load(value):
        if isinstance(value, dict) and not _is_ts_spec(value):
            return {k: load(v) for k, v in value.items()}
        return _read_tensorstore(checkpoint, value) if _is_ts_spec(value) else value

    return load(tree)


def _read_tensorstore(checkpoint: epath.Path, spec: dict) -> np.ndarray:
    """An array t5x wrote with tensorstore; its spec's path is relative to the checkpoint folder."""
    import tensorstore as ts

    spec = {**spec, "kvstore": dict(spec["kvstore"])}
    relative = spec["kvstore"].get("path", spec.get("path"))
    location = str(checkpoint / relative)
    if location.startswith("gs://"):
        bucket, _, rest = location.removeprefix("gs://").partition("/")
        spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": rest}
    else:
        spec["kvstore"] = {"driver": "file", "path": location}
    spec.pop("path", None)
    try:
        return np.asarray(ts.open(spec, open=True).result().read().result())
    except Exception as error:  # tensorstore reports a cut or missing chunk as ValueError or its own errors
        raise ValueError(f"cannot read t5x array {location} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); it is truncated or missing: copy "
                         "the checkpoint again.") from None


def _read_orbax(checkpoint: epath.Path) -> dict:
    import orbax.checkpoint as ocp

    for candidate in (checkpoint, checkpoint / "state"):
        if (candidate / "_METADATA").exists() or (candidate / "manifest.ocdbt").exists():
            try:
                with ocp.PyTreeCheckpointer() as checkpointer:
                    return checkpointer.restore(candidate)
            except Exception as error:  # noqa: BLE001 -- orbax/tensorstore raise many kinds for damaged files
                raise ValueError(f"cannot read t5x checkpoint {candidate} ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''}); a file of it is truncated "
                                 "or corrupt: copy the checkpoint again.") from None
    found = sorted(p.name for p in checkpoint.iterdir())[:8] if checkpoint.is_dir() else []
    raise FileNotFoundError(f"{checkpoint}: neither a msgpack '{MSGPACK}' file (older t5x) nor an orbax checkpoint "
                            f"(_METADATA / manifest.ocdbt) in it (found: {found}).")


def config_from_arrays(arrays: dict[str, np.ndarray], source: str) -> ModelConfig:
    """The shape the parameter arrays have (t5x checkpoints hold no config of their own)."""
    def shape_of(name: str) -> tuple[int, ...]:
        if name not in arrays:
            raise ValueError(f"{source}: no {name!r}; not a t5x T5 checkpoint (parameters: "
                             f"{sorted(arrays)[:4]}...).")
        return tuple(np.shape(arrays[name]))

    vocab_size, d_model = shape_of("token_embedder/embedding")
    num_heads, buckets = shape_of("encoder/relpos_bias/rel_embedding")
    joined = int(np.prod(shape_of("encoder/layers_0/attention/query/kernel")[1:]))
    gated = "encoder/layers_0/mlp/wi_0/kernel" in arrays
    d_ff = shape_of(f"encoder/layers_0/mlp/{'wi_0' if gated else 'wi'}/kernel")[-1]

    def count(stack: str) -> int:
        return len({m[1] for name in arrays if (m := re.match(rf"{stack}/layers_(\d+)/", name))})

    if joined % num_heads:
        raise ValueError(f"{source}: query kernels are {joined} wide, not a multiple of the {num_heads} heads of "
                         "the relative-bias table.")
    return ModelConfig(num_encoder_layers=count("encoder"), num_decoder_layers=count("decoder"), d_model=d_model,
                       d_kv=joined // num_heads, num_heads=num_heads, d_ff=d_ff, vocab_size=vocab_size,
                       activation=Activation.GATED_GELU if gated else Activation.RELU,
                       tie_embeddings="decoder/logits_dense/kernel" not in arrays, relative_buckets=buckets)


def name_map(cfg: ModelConfig, joined: bool = True) -> list[Rule]:
    """(t5scale name, t5x name, t5x shape, conversion) for every weight; `joined`: kernels [d, n*h] (t5x's
    DenseGeneral), else [d, n, h]."""
    n, h, d, f, v = cfg.num_heads, cfg.d_kv, cfg.d_model, cfg.d_ff, cfg.vocab_size
    in_shape, out_shape = ((d, n * h), (n * h, d)) if joined else ((d, n, h), (n, h, d))
    heads_in = lambda w: w.reshape(d, n, h)  # noqa: E731
    heads_out = lambda w: w.reshape(n, h, d)  # noqa: E731
    mlp = ["wi_0", "wi_1"] if cfg.is_gated else ["wi"]

    def attention(ours: str, theirs: str) -> list[Rule]:
        return [Rule(f"{ours}/{p}/kernel", f"{theirs}/{p}/kernel", in_shape, heads_in)
                for p in ("query", "key", "value")] + [Rule(f"{ours}/out/kernel", f"{theirs}/out/kernel",
                                                            out_shape, heads_out)]

    rules = [Rule("token_embedder/embedding", "token_embedder/embedding", (v, d))]
    for stack, num_layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        rules.append(Rule(f"{stack}/relpos_bias/rel_embedding", f"{stack}/relpos_bias/rel_embedding",
                          (n, cfg.relative_buckets)))
        rules.append(Rule(f"{stack}/{stack}_norm/scale", f"{stack}/{stack}_norm/scale", (d,)))
        for i in range(num_layers):
            ours, theirs = f"{stack}/layers/{i}", f"{stack}/layers_{i}"
            norms = (["pre_attention_layer_norm"] if stack == "encoder" else
                     ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm"]) + ["pre_mlp_layer_norm"]
            rules += [Rule(f"{ours}/{norm}/scale", f"{theirs}/{norm}/scale", (d,)) for norm in norms]
            blocks = ["attention"] if stack == "encoder" else ["self_attention", "encoder_decoder_attention"]
            for block in blocks:
                rules += attention(f"{ours}/{block}", f"{theirs}/{block}")
            rules += [Rule(f"{ours}/mlp/{w}/kernel", f"{theirs}/mlp/{w}/kernel", (d, f)) for w in mlp]
            rules.append(Rule(f"{ours}/mlp/wo/kernel", f"{theirs}/mlp/wo/kernel", (f, d)))
    if not cfg.tie_embeddings:
        rules.append(Rule("logits_dense/kernel", "decoder/logits_dense/kernel", (d, v)))
    return rules


def read_t5x(source: str, expected: ModelConfig | None = None,
             **config_overrides) -> tuple[ModelConfig, dict[str, np.ndarray], epath.Path, int]:
    """(config, t5scale's flat params, checkpoint folder, step). `expected`: a shape the arrays must have."""
    checkpoint, step = locate(source)
    arrays = read_target(checkpoint)
    cfg = config_from_arrays(arrays, str(checkpoint))
    if expected is not None:
        differ = [f"{f} {getattr(cfg, f)!r} vs {getattr(expected, f)!r}" for f in _SHAPE_FIELDS
                  if getattr(cfg, f) != getattr(expected, f)]
        if differ:
            raise ValueError(f"{checkpoint}: its arrays and shape {expected.name!r} disagree: {', '.join(differ)} "
                             "(checkpoint vs shape).")
    cfg = cfg.replace(name=expected.name if expected is not None else f"t5x-{checkpoint.parent.name}",
                      **config_overrides)
    joined = len(np.shape(arrays["encoder/layers_0/attention/query/kernel"])) == 2
    rules = name_map(cfg, joined)
    unknown = sorted(set(arrays) - {rule.theirs for rule in rules})
    if unknown:
        raise ValueError(f"{checkpoint}: unknown parameter {unknown[0]!r}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                         + f": shape {cfg.name!r} ({describe(cfg)}) has no such weight; t5scale maps the t5x T5 "
                         "1.0 / 1.1 networks (see docs/convert.md).")
    return cfg, apply_rules(rules, lambda name: np.asarray(arrays[name]), set(arrays), str(checkpoint), cfg), \
        checkpoint, step


def from_t5x(source: str, expected: ModelConfig | None = None, **config_overrides) -> tuple[T5, epath.Path, int]:
    cfg, params, checkpoint, step = read_t5x(source, expected, **config_overrides)
    return build_model(cfg, params), checkpoint, step
