"""The README's Python examples run as written."""

import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(not README.exists(), reason="README.md is not next to the tests")
def test_readme_examples_run(tmp_path, monkeypatch):
    """Every ```python block, in order, in one namespace (later blocks reuse earlier names),
    from a temporary folder (they may write files); the roialign_cy.plot block only where
    matplotlib, its optional dependency, is installed (then on the Agg backend), the
    roialign_cy.dask block only where dask and zarr (the dask extra) are."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5
    try:
        import matplotlib
    except ImportError:
        matplotlib = None
    else:
        matplotlib.use("Agg")
    has_dask = all(importlib.util.find_spec(name) is not None for name in ("dask", "zarr"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        if "roialign_cy.plot" in block and matplotlib is None:
            continue
        if "roialign_cy.dask" in block and not has_dask:
            continue
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["pooled"].shape == (2, 256, 7, 7)
    if has_dask:
        assert namespace["lazy"].shape == (2, 16, 7, 7)
    if matplotlib is not None:
        import matplotlib.pyplot as plt

        assert (tmp_path / "figure3.png").stat().st_size > 0
        plt.close("all")
