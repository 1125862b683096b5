import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5scale.compress.prune import magnitude_masks
from t5scale.config import ModelConfig
from t5scale.model import layout
from t5scale.model.kernels import kernel_spec
from t5scale.model.t5 import T5
from t5scale.train import pruning
from t5scale.train.pruning import PruningConfig

CFG = ModelConfig(num_encoder_layers=2, num_decoder_layers=2, d_model=16, d_kv=4, num_heads=2, d_ff=32,
                  vocab_size=64)


def test_cubic_schedule():
    cfg = PruningConfig(final_sparsity=0.8, begin_step=10, end_step=110, update_every=25)
    assert cfg.sparsity_at(0) == 0 and cfg.sparsity_at(10) == 0
    assert cfg.sparsity_at(60) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cfg.sparsity_at(110) == pytest.approx(0.8) and cfg.sparsity_at(500) == pytest.approx(0.8)
    assert [t for t in range(200) if cfg.updates_masks_at(t)] == [10, 35, 60, 85, 110]


@pytest.mark.parametrize("bad", [dict(final_sparsity=1.0), dict(final_sparsity=-0.1), dict(scope="layer"),
                                 dict(groups=("norms",)), dict(begin_step=5, end_step=5), dict(update_every=0)])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(ValueError) as error:
        PruningConfig(**{"final_sparsity": 0.5, **bad})
    assert "\n" not in str(error.value)


def _model_params(scan_layers):
    model = T5(CFG.replace(scan_layers=scan_layers), rngs=nnx.Rngs(0))
    return model, nnx.state(model, nnx.Param)


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_masks_equal_the_one_shot_numpy_reference(scan_layers, scope):
    """Per matrix means per layer of a scanned stack; both layouts prune the same weights as t5scale.compress."""
    model, params = _model_params(scan_layers)
    cfg = PruningConfig(final_sparsity=0.6, scope=scope, groups=("attention", "mlp"))
    kernels = {n: w for n, w in layout.flat_params(model).items()
               if (spec := kernel_spec(n)) is not None and spec.group != "embedding"}
    masks = jax.jit(pruning.update_masks, static_argnums=3)(params, pruning.initial_masks(params, cfg), 0.6, scope)
    nnx.update(model, pruning.apply_masks(params, masks))
    flat = layout.flat_params(model)
    expected = magnitude_masks(kernels, 0.6, scope=scope)
    for name, value in flat.items():
        if name in expected:
            np.testing.assert_array_equal(value != 0, expected[name], err_msg=name)
        else:  # the embedding, norm scales and relative-bias tables are left alone
            assert np.all(value != 0), name


def test_apply_masks_keeps_pruned_weights_at_zero_and_others_unchanged():
    _, params = _model_params(True)
    cfg = PruningConfig(final_sparsity=0.5)
    masks = pruning.update_masks(params, pruning.initial_masks(params, cfg), 0.5, "matrix")
    pruned = pruning.apply_masks(params, masks)
    assert pruning.measured_sparsity(pruned, masks) == pytest.approx(0.5, abs=0.01)
    for w, p, m in zip(jax.tree.leaves(params), jax.tree.leaves(pruned), jax.tree.leaves(masks)):
        np.testing.assert_array_equal(p, jnp.where(m, w, 0))
    assert all(m.shape == () for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(params)) if w.ndim < 2)
