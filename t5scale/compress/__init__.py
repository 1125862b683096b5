"""Compression (Train Large, Then Compress): quantize and prune a trained T5, store it small, measure accuracy
against bytes. Which parameters are compressed (the one table) is `t5scale.model.kernels`: gradual pruning in
the trainer uses it too. Reading a checkpoint back, compressed or not, is `t5scale.weights` (`load_any`): below
`evaluate`, which this package reuses.

    quantize     symmetric quantization of one array (qwix's array-level quantize)
    prune        one-shot magnitude masks, per matrix or global
    settings     one setting (bits x sparsity x groups), parsed from `bits=4,sparsity=0.5`
    compressed   a model's flat parameters -> stored arrays and layout
    checkpoint   the folder written to disk, and its bytes
    study        the sweep: checkpoints x settings -> folders, bytes, metrics, one table
    plot         accuracy against bytes, a curve per model size and the frontier
    inference    weights kept in int8 / bfloat16 in memory, dequantized inside the program (decoding speed)
"""
