"""The entry point: every command registered, listed in the data flow's order; `python -m t5scale` works."""

import json
import subprocess
import sys

from t5scale.cli import common, main


def test_every_command_is_registered_in_the_documented_order():
    assert set(main.ORDER) == set(common.COMMANDS)
    help_text = common.make_parser(main.DESCRIPTION, main.ORDER).format_help()
    positions = [help_text.index(f"    {name} ") for name in main.ORDER]
    assert positions == sorted(positions)


def test_module_entry_point_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "t5scale", "shapes", "tiny", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)[0]["params_m"] == 15.6


def test_an_unknown_command_is_argparse_usage_with_exit_2(capsys):
    try:
        main.main(["shapez"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "invalid choice: 'shapez'" in capsys.readouterr().err
