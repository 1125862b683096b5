"""Compression (Train Large, Then Compress): quantize and prune a trained T5, store it small, measure accuracy
against bytes. Which parameters are compressed (the one table) is `t5scale.model.kernels`: gradual pruning in
the trainer uses it too.

    quantize     symmetric quantization of one array (qwix's array-level quantize), and back
    prune        one-shot magnitude masks, per matrix or global
    packing      low-bit codes and masks into bytes, and back
    settings     one setting (bits x sparsity x groups), parsed from `bits=4,sparsity=0.5`
    compressed   a model's flat parameters -> stored arrays and layout -> float32
    checkpoint   the folder on disk, its bytes, and `load_any` (compressed or ordinary checkpoints)
    study        the sweep: checkpoints x settings -> folders, bytes, metrics, one table
    plot         accuracy against bytes, a curve per model size and the frontier
    inference    weights kept in int8 / bfloat16 in memory, dequantized inside the program (decoding speed)
"""

from t5scale.compress.checkpoint import is_compressed, load_any

__all__ = ["is_compressed", "load_any"]
