"""Reading any checkpoint, dense or compressed, into a model: below both `t5scale.evaluate` (which evaluates either
kind) and `t5scale.compress` (which writes compressed checkpoints and evaluates them), so neither imports the other
from below. Imports only config, model and train.

    packing              low-bit codes and masks into bytes, and back
    compressed_format    a compressed checkpoint's layout kinds, and its stored arrays -> float32 (`decompress_params`)
    load                 the folder's file names, `read_compressed`, and `load_any` (compressed or ordinary)
"""
