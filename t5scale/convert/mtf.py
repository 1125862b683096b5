"""Mesh TensorFlow T5 checkpoints (Scale Efficiently's releases, T5's own) -> t5scale models.

A source is a release folder (`operative_config.gin` + `model.ckpt-<N>.*`, local or gs://) or a `model.ckpt-<N>`
prefix. Arrays come from TensorFlow's checkpoint reader (no graph, no Mesh TF); optimizer slots are skipped.
The shape comes from `operative_config.gin` read as text (`gin_text`), and from the release table when the
folder's name is in its `release_folder` column; the two must agree.

The whole correspondence is `name_map`: one line per weight. Mesh TF stores attention kernels joined
(q/k/v [d, n*h], o [n*h, d]); t5scale splits the heads axis ([d, n, h], [n, h, d]). Variants, as Mesh TF builds
them (docs/convert.md has the sources):
  skv  `SelfAttention.shared_kv = True`: one kernel `kv` serves as key and value (self- and cross-attention).
  sh   `make_bitransformer.encoder_name = "decoder"` (t5's models/bi_v1_shared.gin): the encoder is built in the
       decoder's variable scope, so it reuses the decoder's self-attention, MLP, norms and relative-bias table.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from t5scale import config as config_lib
from t5scale.config import Activation, ModelConfig
from t5scale.convert.gin_text import GinText
from t5scale.convert.output import Rule, apply_rules, build_model, describe
from t5scale.model.t5 import T5

OPERATIVE_CONFIG = "operative_config.gin"
_INDEX = re.compile(r"model\.ckpt-(\d+)\.index$")
_SKIPPED = re.compile(r"(_slot_\w+|^global_step)$")  # Adafactor's slots (…/q_slot_vc), the step counter
# Fields that decide the parameters; the gin file and the release table must agree on each.
_ARCHITECTURE = ("num_encoder_layers", "num_decoder_layers", "d_model", "d_kv", "num_heads", "d_ff", "activation",
                 "tie_embeddings", "shared_heads", "tied_kv")
_ACTIVATIONS = {"relu": Activation.RELU, ("gelu", "linear"): Activation.GATED_GELU,
                ("gelu_new", "linear"): Activation.GATED_GELU}


@dataclasses.dataclass(frozen=True)
class Source:
    prefix: str  # .../model.ckpt-N
    step: int
    folder: str  # the directory holding it


def locate(source: str) -> Source:
    """The newest `model.ckpt-N` in a folder, or the prefix given."""
    from t5scale.data import tf  # TensorFlow, imported with the accelerators hidden from it

    source = source.rstrip("/")
    match = re.search(r"model\.ckpt-(\d+)$", source)
    if match and tf.io.gfile.exists(source + ".index"):
        return Source(source, int(match[1]), source.rsplit("/", 1)[0] if "/" in source else ".")
    if not tf.io.gfile.isdir(source):
        raise FileNotFoundError(f"{source} is neither a Mesh TF checkpoint prefix (model.ckpt-N, with "
                                "model.ckpt-N.index beside it) nor a folder holding one.")
    steps = sorted(int(m[1]) for name in tf.io.gfile.listdir(source) if (m := _INDEX.search(name)))
    if not steps:
        found = sorted(tf.io.gfile.listdir(source))[:8]
        raise FileNotFoundError(f"No model.ckpt-<N>.index in {source} (found: {found}).")
    return Source(f"{source}/model.ckpt-{steps[-1]}", steps[-1], source)


def config_from_gin(gin: GinText, *, vocab_size: int, has_logits: bool) -> ModelConfig:
    """The shape an operative_config.gin describes (unset values take Mesh TF's defaults.gin / bi_v1.gin ones)."""
    def value(configurable, parameter, macro, scope=None):
        found = gin.get(configurable, parameter, scope=scope, default=gin.macro(macro))
        if found is None:
            raise ValueError(f"{gin.source}: neither {configurable}.{parameter} nor the macro {macro!r} is set; "
                             "cannot tell the shape.")
        return found

    activation = gin.get("DenseReluDense", "activation", default="relu")
    key = tuple(activation) if isinstance(activation, list) else activation
    if key not in _ACTIVATIONS:
        raise ValueError(f"{gin.source}: DenseReluDense.activation = {activation!r}; t5scale supports 'relu' (T5 "
                         "v1.0) and ['gelu', 'linear'] (v1.1).")
    relative = gin.get("SelfAttention", "relative_attention_type", default="bias_shared")
    if relative != "bias_shared":
        raise ValueError(f"{gin.source}: SelfAttention.relative_attention_type = {relative!r}; t5scale builds "
                         "T5's 'bias_shared' (one relative-bias table per stack).")
    shared_kv = bool(gin.get("SelfAttention", "shared_kv", default=False))
    if bool(gin.get("EncDecAttention", "shared_kv", default=shared_kv)) != shared_kv:
        raise ValueError(f"{gin.source}: shared_kv differs between SelfAttention and EncDecAttention; t5scale "
                         "ties keys and values in both or neither.")
    return ModelConfig(
        num_encoder_layers=value("make_layer_stack", "num_layers", "num_layers", scope="encoder"),
        num_decoder_layers=value("make_layer_stack", "num_layers", "num_layers", scope="decoder"),
        d_model=value("Unitransformer", "d_model", "d_model"),
        d_kv=value("SelfAttention", "key_value_size", "d_kv"),
        num_heads=value("SelfAttention", "num_heads", "num_heads"),
        d_ff=value("DenseReluDense", "hidden_size", "d_ff"),
        vocab_size=vocab_size, activation=_ACTIVATIONS[key],
        tie_embeddings=bool(gin.get("Unitransformer", "shared_embedding_and_softmax_weights",
                                    default=not has_logits)),
        shared_heads=gin.get("make_bitransformer", "encoder_name", default="encoder") == "decoder",
        tied_kv=shared_kv,
        relative_buckets=gin.get("SelfAttention", "relative_attention_num_buckets", default=32),
    )


def released_shape_for_folder(folder: str) -> config_lib.ReleasedShape | None:
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return next((row for row in config_lib.released_shapes().values() if row.release_folder == name), None)


def resolve_config(gin_cfg: ModelConfig | None, released: config_lib.ReleasedShape | None, *, vocab_size: int,
                   source: str) -> ModelConfig:
    """The gin file's shape, checked against the release table's row for the folder; either alone will do."""
    table_cfg = config_lib.shape(released.name, vocab_size=vocab_size) if released else None
    if gin_cfg is None and table_cfg is None:
        raise FileNotFoundError(f"{source}: no {OPERATIVE_CONFIG} beside the checkpoint and the folder name is not "
                                "in the release table (t5scale/released_shapes.tsv); copy the run's "
                                f"{OPERATIVE_CONFIG} next to model.ckpt-N.")
    if gin_cfg is not None and table_cfg is not None:
        differ = [f"{f} {getattr(gin_cfg, f)!r} vs {getattr(table_cfg, f)!r}" for f in _ARCHITECTURE
                  if getattr(gin_cfg, f) != getattr(table_cfg, f)]
        if differ:
            raise ValueError(f"{source}: {OPERATIVE_CONFIG} and the release table's row {released.name!r} (folder "
                             f"{released.release_folder}) disagree: {', '.join(differ)} (gin vs table).")
    if table_cfg is not None:
        return table_cfg.replace(relative_buckets=gin_cfg.relative_buckets) if gin_cfg else table_cfg
    return gin_cfg


def name_map(cfg: ModelConfig, norm: str, final_norm: str) -> list[Rule]:
    """(t5scale name, Mesh TF name, Mesh TF shape, conversion) for every weight of `cfg`. `norm` / `final_norm`
    are the checkpoint's names for the per-layer and final RMSNorm scopes (`rms_norm`, or the legacy
    `layer_norm` / `final_layer_norm`)."""
    n, h, d, f, v = cfg.num_heads, cfg.d_kv, cfg.d_model, cfg.d_ff, cfg.vocab_size
    heads_in = lambda w: w.reshape(d, n, h)  # noqa: E731  [d, n*h] -> [d, n, h]
    heads_out = lambda w: w.reshape(n, h, d)  # noqa: E731  [n*h, d] -> [n, h, d]
    projections = [("query", "q")] + ([("key", "kv")] if cfg.tied_kv else [("key", "k"), ("value", "v")])
    mlp = ["wi_0", "wi_1"] if cfg.is_gated else ["wi"]
    # Layer scopes inside a block: positional (layer_000, ...) normally; bi_v1_shared.gin names them.
    encoder_scopes = ("self_attention", "dense_relu_dense") if cfg.shared_heads else ("layer_000", "layer_001")
    decoder_scopes = (("self_attention", "enc_dec_attention", "dense_relu_dense") if cfg.shared_heads
                      else ("layer_000", "layer_001", "layer_002"))

    def attention(ours: str, theirs: str) -> list[Rule]:
        return [Rule(f"{ours}/{a}/kernel", f"{theirs}/{b}", (d, n * h), heads_in) for a, b in projections] + [
            Rule(f"{ours}/out/kernel", f"{theirs}/o", (n * h, d), heads_out)]

    def mlp_rules(ours: str, theirs: str) -> list[Rule]:
        return [Rule(f"{ours}/{w}/kernel", f"{theirs}/{w}/kernel", (d, f)) for w in mlp] + [
            Rule(f"{ours}/wo/kernel", f"{theirs}/wo/kernel", (f, d))]

    rules = [Rule("token_embedder/embedding", "shared/embedding", (v, d))]
    stacks = (("decoder", cfg.num_decoder_layers),) if cfg.shared_heads else (
        ("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers))
    for stack, num_layers in stacks:
        first = f"{stack}/block_000/{(decoder_scopes if stack == 'decoder' else encoder_scopes)[0]}"
        rules.append(Rule(f"{stack}/relpos_bias/rel_embedding", f"{first}/SelfAttention/relative_attention_bias",
                          (n, cfg.relative_buckets)))
        rules.append(Rule(f"{stack}/{stack}_norm/scale", f"{stack}/{final_norm}/scale", (d,)))
        for i in range(num_layers):
            ours, block = f"{stack}/layers/{i}", f"{stack}/block_{i:03d}"
            if stack == "encoder":
                attn, ffn = (f"{block}/{s}" for s in encoder_scopes)
                rules += attention(f"{ours}/attention", f"{attn}/SelfAttention")
                rules.append(Rule(f"{ours}/pre_attention_layer_norm/scale", f"{attn}/{norm}/scale", (d,)))
            else:
                attn, cross, ffn = (f"{block}/{s}" for s in decoder_scopes)
                rules += attention(f"{ours}/self_attention", f"{attn}/SelfAttention")
                rules.append(Rule(f"{ours}/pre_self_attention_layer_norm/scale", f"{attn}/{norm}/scale", (d,)))
                rules += attention(f"{ours}/encoder_decoder_attention", f"{cross}/EncDecAttention")
                rules.append(Rule(f"{ours}/pre_cross_attention_layer_norm/scale", f"{cross}/{norm}/scale", (d,)))
            rules += mlp_rules(f"{ours}/mlp", f"{ffn}/DenseReluDense")
            rules.append(Rule(f"{ours}/pre_mlp_layer_norm/scale", f"{ffn}/{norm}/scale", (d,)))
    if not cfg.tie_embeddings:
        rules.append(Rule("logits_dense/kernel", "decoder/logits/kernel", (d, v)))
    return rules


class _Reader:
    """TensorFlow's checkpoint reader, with its errors (a truncated or corrupt file) as one ValueError line."""

    def __init__(self, prefix: str):
        from t5scale.data import tf  # TensorFlow, imported with the accelerators hidden from it

        # TensorFlow reports a cut file as an OpError (DataLossError, ...) or, reading past its end, an IndexError.
        self.prefix, self._errors = prefix, (tf.errors.OpError, IndexError)
        try:
            self._reader = tf.train.load_checkpoint(prefix)
            self.shapes = self._reader.get_variable_to_shape_map()
        except self._errors as error:
            raise self._unreadable(error) from None

    def __call__(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._reader.get_tensor(name))
        except self._errors as error:
            raise self._unreadable(error, name) from None

    def _unreadable(self, error, name: str | None = None) -> ValueError:
        what = f"variable {name!r} of " if name else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return ValueError(f"cannot read {what}Mesh TF checkpoint {self.prefix} ({type(error).__name__}: {first}); "
                          "its .index or .data-* file is truncated or corrupt: copy the checkpoint again.")


def _norm_names(variables: set[str]) -> tuple[str, str]:
    legacy = any("/layer_norm/" in name for name in variables) or any("/final_layer_norm/" in name
                                                                       for name in variables)
    return ("layer_norm", "final_layer_norm") if legacy else ("rms_norm", "rms_norm")


def read_mtf(source: str, **config_overrides) -> tuple[ModelConfig, dict[str, np.ndarray], Source]:
    """(config, t5scale's flat params, where they came from) of a Mesh TF checkpoint."""
    from t5scale.data import tf  # TensorFlow, imported with the accelerators hidden from it

    located = locate(source)
    reader = _Reader(located.prefix)
    variables = {name for name in reader.shapes if not _SKIPPED.search(name)}
    if "shared/embedding" not in variables:
        raise ValueError(f"{located.prefix}: no 'shared/embedding' variable; not a Mesh TF T5 checkpoint "
                         f"(variables: {sorted(variables)[:5]}...).")
    vocab_size = reader.shapes["shared/embedding"][0]
    gin_path = f"{located.folder}/{OPERATIVE_CONFIG}"
    gin_cfg = None
    if tf.io.gfile.exists(gin_path):
        with tf.io.gfile.GFile(gin_path) as file:
            gin_cfg = config_from_gin(GinText(file.read(), gin_path), vocab_size=vocab_size,
                                      has_logits="decoder/logits/kernel" in variables)
    released = released_shape_for_folder(located.folder)
    cfg = resolve_config(gin_cfg, released, vocab_size=vocab_size, source=located.folder)
    name = released.name if released else located.folder.rstrip("/").rsplit("/", 1)[-1]
    cfg = cfg.replace(name=name, **config_overrides)
    cfg.require_buildable()
    rules = name_map(cfg, *_norm_names(variables))
    unknown = sorted(variables - {rule.theirs for rule in rules})
    if unknown:
        raise ValueError(f"{located.prefix}: unknown variable {unknown[0]!r}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                         + f": shape {cfg.name!r} ({describe(cfg)}) has no such weight; t5scale maps Mesh TF's T5 "
                         "variables (see docs/convert.md).")
    return cfg, apply_rules(rules, reader, variables, located.prefix, cfg), located


def from_mtf(source: str, **config_overrides) -> tuple[T5, Source]:
    """A Mesh TF T5 checkpoint as a t5scale model (float32), and where it came from."""
    cfg, params, located = read_mtf(source, **config_overrides)
    return build_model(cfg, params), located
