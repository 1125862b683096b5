"""The docs' examples run: every ```python block of docs/ and the README (except those starting `# not run:`),
every `$ t5scale shapes ...` console block prints exactly what the page shows, and links between pages resolve."""

import re
import shlex

import pytest

from t5scale.cli.main import main
from tests.testing import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(kind: str):
    for page in PAGES:
        for match in BLOCK.finditer(page.read_text()):
            if match.group(1) == kind:
                line = page.read_text()[:match.start()].count("\n") + 1
                yield pytest.param(match.group(2), id=f"{page.name}:{line}")


@pytest.mark.parametrize("code", [b for b in blocks("python") if not b.values[0].startswith("# not run:")])
def test_python_examples_run(code):
    exec(compile(code, "<docs>", "exec"), {})


@pytest.mark.parametrize("block", list(blocks("console")))
def test_shapes_examples_print_what_the_page_shows(block, capsys):
    command, *expected = block.rstrip("\n").split("\n")
    argv = shlex.split(command.removeprefix("$ "))
    assert argv[0] == "t5scale"
    assert main(argv[1:]) == 0
    assert capsys.readouterr().out.rstrip("\n").split("\n") == expected


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
