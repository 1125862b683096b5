"""What every `t5scale` command shares: gin at the edge (the only gin importer), t5x-style flags, one-line errors
and the command registry. Command modules import this module and the library, never each other.

gin files and `--gin.X=V` flags configure plain functions and the library's dataclasses here; the library itself
never sees gin.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import sys
from typing import Any, Callable

import gin
from t5scale import config as config_lib


def _gin_dir() -> pathlib.Path:
    """The gin files: `t5scale/gin/` inside an installed wheel, else (a source tree or an editable install, where
    setuptools cannot map a data-only subpackage) the repository's top-level `gin/`, the one place they are
    edited."""
    packaged = pathlib.Path(__file__).resolve().parents[1] / "gin"
    return packaged if packaged.is_dir() else packaged.parents[1] / "gin"


GIN_DIR = _gin_dir()


class UsageError(Exception):
    """Bad command-line input; printed as one line, no traceback."""


class CommandFailed(Exception):
    """The command ran but some of its work failed (e.g. runs of a sweep); one line, exit code 1."""


# --- gin parsing -----------------------------------------------------------------------------------------------

def _tolerate_namespace_packages() -> None:
    """gin also looks for `a/b.gin` inside a Python package `a`; when `a` resolves to a namespace package (any
    folder `a/` in the working directory, like the demo's `runs/`) its check raises TypeError instead of saying
    "not here". Make that check say "not here", so gin goes on to its search path."""
    from gin import config as gin_config
    from gin import resource_reader

    for i, (reader, exists) in enumerate(gin_config._FILE_READERS):
        if exists is resource_reader.system_path_file_exists:
            def exists_or_not(path, exists=exists):
                try:
                    return exists(path)
                except TypeError:
                    return False

            gin_config._FILE_READERS[i] = (reader, exists_or_not)


_tolerate_namespace_packages()


def resolve_gin_file(path: str) -> str:
    """A gin file as given (relative to the working directory) or by its short name among the packaged ones;
    `gin/models/small.gin` (a path into the repository) also resolves to the packaged `models/small.gin`."""
    for candidate in (pathlib.Path(path), GIN_DIR / path, GIN_DIR / path.removeprefix("gin/")):
        if candidate.is_file():
            return str(candidate)
    raise UsageError(f"gin file {path!r} not found (searched the working directory and {GIN_DIR}; the packaged "
                     f"files are {', '.join(packaged_gin_files())}).")


def packaged_gin_files() -> list[str]:
    return sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob("*.gin"))


def parse_gin(gin_files: list[str], bindings: list[str]) -> None:
    """Parse gin files (later wins) then bindings, t5x style. Errors become one UsageError line.

    A macro set on the command line (`--gin.EL=16`) must be defined by a parsed gin file: gin itself would accept
    a misspelt macro and silently ignore it.
    """
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    files = [resolve_gin_file(path) for path in gin_files]
    # gin logs every search-path miss of an include at ERROR level before it finds the file; real failures raise.
    logging.disable(logging.ERROR)
    try:
        try:
            gin.parse_config_files_and_bindings(files, [], finalize_config=False)
        except Exception as error:  # gin raises many kinds; the user needs the message, not the stack.
            raise UsageError(f"bad gin file among {gin_files}: {first_line(error)}") from None
        for binding in bindings:
            _parse_binding(binding)
    finally:
        logging.disable(logging.NOTSET)


def _parse_binding(binding: str) -> None:
    name = binding.split("=", 1)[0].strip()
    if "." not in name and "/" not in name and not macro_defined(name):
        raise UsageError(f"--gin.{binding}: no gin file defines the macro {name!r} (misspelt?).")
    try:
        gin.parse_config(binding)
    except Exception as error:
        message = first_line(error)
        if "malformed node" in message or "Unable to parse value" in message:
            value = binding.split("=", 1)[-1].strip()
            message = f"the value is not a Python literal (quote strings: --gin.{name}=\"'{value}'\")"
        raise UsageError(f"--gin.{binding}: {message}") from None


def macro_defined(name: str) -> bool:
    try:
        gin.query_parameter(f"{name}/macro.value")
        return True
    except ValueError:
        return False


def macro_value(name: str, default: Any = None) -> Any:
    return gin.query_parameter(f"{name}/macro.value") if macro_defined(name) else default


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].split(" In call to configurable")[0] if lines else type(error).__name__


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Pull t5x-style `--gin_file=F` and `--gin.NAME=VALUE` out of argv: (rest, files, bindings)."""
    rest, files, bindings = [], [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--gin_file"):
            files.append(arg.split("=", 1)[1] if "=" in arg else next(args, ""))
        elif arg.startswith("--gin."):
            if "=" not in arg:
                raise UsageError(f"{arg!r}: write gin bindings as --gin.NAME=VALUE.")
            bindings.append(arg[len("--gin."):])
        else:
            rest.append(arg)
    return rest, files, bindings


# --- configurables ---------------------------------------------------------------------------------------------

def model_config(shape: str = "small", EL=None, DL=None, NL=None, DM=None, KV=None, NH=None, FF=None,  # noqa: N803
                 dropout_rate: float | None = None, dtype: str | None = None, scan_layers: bool | None = None,
                 scan_unroll: int | None = None, remat: str | None = None) -> config_lib.ModelConfig:
    """A shape by name, then single operators and fields. Bound by gin/models/*.gin. None keeps the shape's
    value: the defaults (dtype, scan_layers, remat, ...) are written once, in ModelConfig."""
    changes = dict(EL=EL, DL=DL, NL=NL, DM=DM, KV=KV, NH=NH, FF=FF, dropout_rate=dropout_rate, dtype=dtype,
                   scan_layers=scan_layers, scan_unroll=scan_unroll, remat=remat)
    return config_lib.shape(shape, **{k: v for k, v in changes.items() if v is not None})


_CONFIGURABLES: dict[str, Callable] = {}


def configurable(fn_or_class: Callable, name: str) -> None:
    """Make `fn_or_class` bindable as `name.field = ...` (once; commands call this for what they use)."""
    if name not in _CONFIGURABLES:
        gin.external_configurable(fn_or_class, name, module=None)
        _CONFIGURABLES[name] = fn_or_class


configurable(model_config, "model_config")


def register_run_configurables() -> None:
    """A training run's dataclasses, configurable by gin under t5x-like names (train, finetune, plan --sweep)."""
    from t5scale.data.pipeline import DataConfig
    from t5scale.evaluate import EvalConfig
    from t5scale.train.optim import OptimConfig
    from t5scale.train.partitioning import MeshConfig
    from t5scale.train.pruning import PruningConfig
    from t5scale.train.trainer import TrainConfig

    for cls, name in ((DataConfig, "data_config"), (OptimConfig, "optim_config"), (MeshConfig, "mesh_config"),
                      (TrainConfig, "train_config"), (PruningConfig, "pruning_config"), (EvalConfig, "eval_config")):
        configurable(cls, name)


def call_configurable(name: str, **explicit):
    """The configurable `name` called with its gin bindings (and `explicit` arguments, which win over them); a bad
    or missing binding is one UsageError line, and so is a field still bound to a `%gin.REQUIRED` macro (gin itself
    passes the sentinel through)."""
    try:
        value = gin.get_configurable(name)(**explicit)
    except (ValueError, TypeError) as error:
        # A REQUIRED value inside a nested configurable (train_config.pruning = @pruning_config()) reaches that
        # dataclass's checks first, which cannot name the flag: name it here.
        raise UsageError(_required_binding() or first_line(error)) from None
    for field in dataclasses.fields(value) if dataclasses.is_dataclass(value) else ():
        if getattr(value, field.name) is gin.REQUIRED:
            binding = str(gin.query_parameter(f"{name}.{field.name}"))  # "%MACRO"
            flag = f"--gin.{binding[1:]}=..." if binding.startswith("%") else f"--gin.{name}.{field.name}=..."
            raise UsageError(f"{name}.{field.name} is required: set it with {flag}")
    return value


def is_bound(parameter: str) -> bool:
    """Whether gin binds `configurable.parameter`."""
    try:
        gin.query_parameter(parameter)
        return True
    except ValueError:
        return False


def _required_binding() -> str | None:
    """'x.y is required: set it with --gin.MACRO=...' for the first dataclass field bound to %gin.REQUIRED."""
    for name, cls in _CONFIGURABLES.items():
        for field in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
            try:
                bound, macro = str(gin.query_parameter(f"{name}.{field.name}")), None
                while bound.startswith("%") and bound != "%gin.REQUIRED":
                    macro = bound[1:]
                    bound = str(gin.query_parameter(f"{macro}/macro.value"))
            except ValueError:  # not bound
                continue
            if bound == "%gin.REQUIRED":
                return f"{name}.{field.name} is required: set it with --gin.{macro or f'{name}.{field.name}'}=..."
    return None


def gin_model_config() -> config_lib.ModelConfig:
    return call_configurable("model_config")


# --- the command registry --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace, list[str], list[str]], Any]  # (args, gin files, gin bindings)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable | None = None):  # noqa: A002 (argparse's name)
    """Register the decorated `run(args, gin_files, bindings)` as `t5scale NAME`."""
    def register(run: Callable) -> Callable:
        COMMANDS[name] = Command(name, help, run, add_arguments)
        return run
    return register


def make_parser(description: str = "", order: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser of every registered command, those named in `order` first."""
    parser = argparse.ArgumentParser(prog="t5scale", description=description)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in sorted(COMMANDS.values(), key=lambda c: order.index(c.name) if c.name in order else len(order)):
        sub = commands.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        sub.add_argument("--no_compilation_cache", action="store_true",
                         help="do not use JAX's persistent compilation cache ($T5SCALE_CACHE/xla, on by default)")
        if cmd.add_arguments:
            cmd.add_arguments(sub)
        sub.set_defaults(run=cmd.run)
    return parser


def run_command(name: str, gin_files: list[str] = (), bindings: list[str] = (), **args) -> Any:
    """Run a registered command from code (the demo composes commands this way): `args` are its options, the
    others take their command-line defaults."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(add_help=False)
    if command.add_arguments:
        command.add_arguments(parser)
    defaults = {action.dest: action.default for action in parser._actions}
    return command.run(argparse.Namespace(command=name, **{**defaults, **args}), list(gin_files), list(bindings))


TRACEBACK_ENV = "T5SCALE_TRACEBACK"  # set (to anything) to get the traceback instead of the one-line error
_PACKAGE = pathlib.Path(__file__).resolve().parents[1]


def _raised_outside(error: BaseException) -> str:
    """Where the error was raised, when that is not t5scale's own code: t5scale's errors name the culprit, while
    a ValueError from another library (jax, orbax, ...) may be a bug, which needs the stack to be found."""
    frame = error.__traceback__
    if frame is None:
        return ""
    while frame.tb_next is not None:
        frame = frame.tb_next
    path = pathlib.Path(frame.tb_frame.f_code.co_filename).resolve()
    if _PACKAGE in path.parents:
        return ""
    roots = [pathlib.Path(p).resolve() for p in sys.path if p]
    root = max((r for r in roots if r in path.parents), key=lambda r: len(r.parts), default=path.parent)
    return f" [raised in {path.relative_to(root)}:{frame.tb_lineno}; {TRACEBACK_ENV}=1 shows the traceback]"


def run(argv: list[str], description: str = "", order: tuple[str, ...] = ()) -> int:
    """Parse argv, run the command; a user's mistake is one line on stderr and exit code 2 (3 for a NaN loss).
    With T5SCALE_TRACEBACK set, errors propagate with their traceback instead."""
    from t5scale.cache import set_compilation_cache
    from t5scale.malloc import run_cpu_computations_inline
    from t5scale.storage import StorageError
    from t5scale.train.checkpoints import CheckpointReadError, CheckpointWriteError

    try:
        rest, gin_files, bindings = split_gin_flags(argv)
        args = make_parser(description, order).parse_args(rest)
        set_compilation_cache(not args.no_compilation_cache)
        run_cpu_computations_inline()
        args.run(args, gin_files, bindings)
    except (UsageError, ValueError, NotImplementedError, FileNotFoundError, StorageError) as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"t5scale: error: {error}{_raised_outside(error)}", file=sys.stderr)
        return 2
    except (CommandFailed, CheckpointWriteError, CheckpointReadError) as error:  # storage or the run's own work
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"t5scale: {'error: ' if isinstance(error, OSError) else ''}{error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        if type(error).__name__ != "NonFiniteLossError" or os.environ.get(TRACEBACK_ENV):
            raise
        print(f"t5scale: error: {error}", file=sys.stderr)
        return 3
    return 0
