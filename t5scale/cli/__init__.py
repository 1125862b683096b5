"""The `t5scale` command, one module per command family.

- `common`: the only gin importer; gin parsing, t5x-style flags, one-line errors, the command registry.
- `shapes`, `train` (train, finetune), `evaluate` (eval), `demo`: the commands. Each imports `common` and the
  library, never another command; the demo composes commands through `common.run_command`.
- `main`: the entry point; imports every command module, which registers it.
"""
