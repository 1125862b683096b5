"""The CLI's shared module: gin files by short name, t5x-style flags, one-line errors, the command registry and
the import arrows between command modules."""

import ast
import json
import pathlib

import pytest

from t5scale.cli import common
from t5scale.cli.main import main
from tests.testing import REPO


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, culprit", [
    (["shapes", "smal-el16"], "Unknown shape 'smal-el16'"),
    (["shapes", "--gin_file=models/small.gin", "--gin.ELL=16"], "no gin file defines the macro 'ELL'"),
    (["shapes", "--gin_file=models/small.gin", "--gin.EL=abc"], "--gin.EL=abc: the value is not a Python"),
    (["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin", "--gin.MODEL_DIR=/tmp/run"],
     "--gin.MODEL_DIR=/tmp/run: the value is not a Python literal (quote strings: --gin.MODEL_DIR=\"'/tmp/run'\")"),
    (["shapes", "--gin_file=models/small.gin", "--gin.model_config.foo=1"], "have a parameter named 'foo'"),
    (["shapes", "--gin_file=models/nope.gin"], "gin file 'models/nope.gin' not found"),
    (["shapes", "--gin_file=models/small.gin", "--gin.MODEL_SHAPE='base-sh'", "--gin.EL=4"],
     "'sh' variant (the encoder runs the decoder's layers) with EL=4 != DL=12"),
    (["shapes", "--gin_file=models/small.gin", "--gin.EL"], "write gin bindings as --gin.NAME=VALUE"),
    (["train"], "train needs --gin_file=... (e.g. models/small.gin and runs/pretrain.gin)"),
    (["finetune", "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='/tmp/x'"], "INITIAL_CHECKPOINT_PATH"),
    (["eval"], "eval needs --gin_file="),
])
def test_bad_input_is_one_line_naming_the_culprit(capsys, argv, culprit):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("t5scale: error: ") and culprit in err


def test_a_missing_gin_file_lists_the_packaged_ones(capsys):
    _, _, err = run(capsys, "shapes", "--gin_file=models/smal.gin")
    assert "models/small.gin" in err and "runs/pretrain.gin" in err


def test_gin_files_resolve_by_short_name_repository_path_or_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout
    packaged = str(common.GIN_DIR / "models" / "small.gin")
    assert common.resolve_gin_file("models/small.gin") == packaged
    assert common.resolve_gin_file("gin/models/small.gin") == packaged
    (tmp_path / "mine.gin").write_text("include 'models/small.gin'\nEL = 3\n")
    assert common.resolve_gin_file("mine.gin") == "mine.gin"  # the working directory first
    common.parse_gin(["mine.gin"], ["NL=None"])
    assert common.gin_model_config().num_encoder_layers == 3  # its include found among the packaged files


def test_every_gin_file_of_the_repository_is_found_by_its_short_name():
    assert common.packaged_gin_files() == sorted(str(p.relative_to(REPO / "gin"))
                                                 for p in (REPO / "gin").rglob("*.gin"))


def test_split_gin_flags_keeps_order_and_both_spellings():
    rest, files, bindings = common.split_gin_flags(
        ["train", "--gin_file=a.gin", "--gin_file", "b.gin", "--gin.X=1", "--json", "--gin.y.z='s'"])
    assert (rest, files, bindings) == (["train", "--json"], ["a.gin", "b.gin"], ["X=1", "y.z='s'"])


def test_gin_includes_work_with_folders_of_the_same_names_in_the_working_directory(capsys, tmp_path, monkeypatch):
    """`make demo` leaves runs/ in the repository; gin used to crash on include 'runs/...' from there."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m t5scale` or pytest put the working directory first
    code, out, err = run(capsys, "shapes", "--gin_file=models/small.gin", "--gin.EL=16", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["name"] == "small-el16"


def test_commands_compose_through_the_registry(capsys):
    rows = common.run_command("shapes", names=["tiny"], json=True)
    assert rows[0]["params_m"] == 15.6 and json.loads(capsys.readouterr().out) == rows
    # Options left out take their command-line defaults (the demo's `pareto` call broke when `--plan` came).
    assert common.run_command("shapes", names=["tiny"]) == rows and "tiny" in capsys.readouterr().out


def _cli_imports(path: pathlib.Path) -> set[str]:
    """The t5scale.cli modules `path` imports (absolute imports, at any depth of the module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "t5scale.cli":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("t5scale.cli."):
            names.add(node.module.removeprefix("t5scale.cli."))
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("t5scale.cli.") for a in node.names if a.name.startswith("t5scale.cli.")}
    return names


def test_import_arrows_point_one_way():
    """Command modules import only `common`; `common` imports no command; only the entry module imports them all;
    nothing outside the CLI imports it, and only the CLI imports gin."""
    cli = REPO / "t5scale" / "cli"
    commands = {p.stem for p in cli.glob("*.py")} - {"__init__", "common", "main"}
    assert {"shapes", "train", "evaluate", "demo"} <= commands
    assert _cli_imports(cli / "common.py") == set()
    for name in commands:
        assert _cli_imports(cli / f"{name}.py") == {"common"}, name
    assert _cli_imports(cli / "main.py") == {"common", *commands}
    for path in (REPO / "t5scale").rglob("*.py"):
        if cli not in path.parents and path.name != "__main__.py":  # `python -m t5scale` is the CLI too
            source = path.read_text()
            assert "t5scale.cli" not in source and "import gin" not in source, path


def test_model_config_defaults_are_model_configs():
    from t5scale import config as config_lib
    from t5scale.cli import common

    assert common.model_config("small") == config_lib.shape("small")  # one place for the defaults
    assert common.model_config("small", scan_layers=False, NL=2) == config_lib.shape("small-nl2", scan_layers=False)


def test_an_error_raised_by_another_library_says_where_and_how_to_get_the_traceback(capsys, monkeypatch):
    import dataclasses

    import t5scale

    def command_raising(error_source):
        def run(args, gin_files, bindings):
            error_source()
        return dataclasses.replace(common.COMMANDS["shapes"], run=run)

    monkeypatch.setitem(common.COMMANDS, "shapes", command_raising(lambda: json.loads("{")))
    code, _, err = run(capsys, "shapes")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("t5scale: error: Expecting property name") and "[raised in json/decoder.py:" in err
    assert f"{common.TRACEBACK_ENV}=1 shows the traceback]" in err
    monkeypatch.setenv(common.TRACEBACK_ENV, "1")
    with pytest.raises(json.JSONDecodeError):
        main(["shapes"])
    monkeypatch.delenv(common.TRACEBACK_ENV)
    monkeypatch.setitem(common.COMMANDS, "shapes", command_raising(lambda: t5scale.shape("smal")))
    code, _, err = run(capsys, "shapes")  # t5scale's own message names the culprit: no hint
    assert code == 2 and "Unknown shape 'smal'" in err and "raised in" not in err
