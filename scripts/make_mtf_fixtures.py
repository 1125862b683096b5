"""Make the Mesh TF parity fixtures in tests/fixtures/mtf (needs torch + transformers 4.x: the `[hf]` extra).

For each T5 variant, writes a small random Mesh TF checkpoint (`model.ckpt-524288.*`, Mesh TF's variable names,
Adafactor slots and global_step included) with its `operative_config.gin`, loads it into
`transformers.T5ForConditionalGeneration` with transformers' own Mesh TF loader (`load_tf_weights_in_t5`), and
stores that model's logits in reference.npz. Every transformers weight starts as NaN, so one the loader did not
fill would show. v1.0 uses Mesh TF's legacy norm names (`layer_norm`, `final_layer_norm`), v1.1 the current ones
(`rms_norm`). EL != DL and NH * KV != DM, sequences long enough to reach the logarithmic relative-position buckets.

    python scripts/make_mtf_fixtures.py tests/fixtures/mtf
"""

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from t5scale.config import ModelConfig  # noqa: E402
from tests.convert.mtf_checkpoints import (  # noqa: E402
    operative_config,
    random_variables,
    transformers_logits,
    write_checkpoint,
)

STEP = 524288
VARIANTS = {
    "v1_0": (ModelConfig(num_encoder_layers=2, num_decoder_layers=3, d_model=16, d_kv=6, num_heads=4, d_ff=20,
                         vocab_size=64, name="v1_0"), "layer_norm", "final_layer_norm"),
    "v1_1": (ModelConfig(num_encoder_layers=3, num_decoder_layers=2, d_model=24, d_kv=5, num_heads=3, d_ff=28,
                         vocab_size=64, activation="gated-gelu", tie_embeddings=False, name="v1_1"),
             "rms_norm", "rms_norm"),
}
INPUT_LEN, TARGET_LEN, BATCH = 40, 21, 3  # > 16 and 32 exact-distance buckets


def example_tokens(seed: int, vocab_size: int):
    rng = np.random.default_rng(seed)
    encoder_tokens = rng.integers(2, vocab_size, (BATCH, INPUT_LEN)).astype(np.int32)
    encoder_tokens[1, 30:] = 0  # padding on one row
    decoder_tokens = rng.integers(2, vocab_size, (BATCH, TARGET_LEN)).astype(np.int32)
    decoder_tokens[:, 0] = 0  # decoder start token
    return encoder_tokens, decoder_tokens


def make_fixture(name: str, out_dir: pathlib.Path, seed: int) -> None:
    cfg, norm, final_norm = VARIANTS[name]
    target = out_dir / name
    target.mkdir(parents=True, exist_ok=True)
    prefix = write_checkpoint(str(target / f"model.ckpt-{STEP}"),
                              random_variables(cfg, seed, norm=norm, final_norm=final_norm))
    (target / "operative_config.gin").write_text(operative_config(cfg))
    encoder_tokens, decoder_tokens = example_tokens(seed, cfg.vocab_size)
    logits, versions = transformers_logits(cfg, prefix, encoder_tokens, decoder_tokens)
    np.savez(target / "reference.npz", encoder_input_tokens=encoder_tokens, decoder_input_tokens=decoder_tokens,
             logits=logits)
    (target / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"wrote {target}: logits {logits.shape}")


def main(out_dir: str) -> None:
    for seed, name in enumerate(VARIANTS):
        make_fixture(name, pathlib.Path(out_dir), seed)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/mtf")
