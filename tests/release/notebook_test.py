"""docs/quickstart.ipynb runs, top to bottom, against a release on the GCS emulator made here (nbclient, a real
kernel), so the notebook cannot rot."""

from __future__ import annotations

import pytest

import t5scale
from tests.release.runs import make_model_dir
from tests.testing import REPO

NOTEBOOK = REPO / "docs" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_against_a_release(gcs, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="the [test] extra installs nbclient")
    import nbformat

    make_model_dir(str(tmp_path / "run"))
    destination = f"gs://{gcs.create_bucket()}/releases/tiny"
    t5scale.release(str(tmp_path / "run"), destination)
    monkeypatch.setenv("T5SCALE_RELEASE", destination)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
                            ).execute()  # raises CellExecutionError, with the cell and its traceback, on failure

    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = {i: "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in out)
            for i, out in outputs.items()}
    assert any(f"release from '{destination}'" in t for t in text.values())  # the LoadedModel's repr
    generated = [t for i, t in text.items() if "model.generate(texts" in "".join(notebook.cells[i].source)]
    assert len(generated) == 2 and all(t.startswith("['") for t in generated)
    assert any("'positive':" in t and "'negative':" in t for t in text.values())
    assert any("# test-tiny-embedded" in o.get("data", {}).get("text/markdown", "")
               for out in outputs.values() for o in out)
    assert any("image/png" in o.get("data", {}) for out in outputs.values() for o in out)  # the training curve
