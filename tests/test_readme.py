"""The README's code runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet(heading):
    """The first Python block under a README heading."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"## {heading}"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_save_and_load_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_snippet("Save to HDF5, load"), "README.md", "exec"), namespace)
    assert len(namespace["run"]) == 5 * 8 and namespace["median"].shape[0] == 5
    assert (tmp_path / "first_layer.png").stat().st_size > 5000
