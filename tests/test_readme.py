"""The README's library example runs and does what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_library_example_trains() -> None:
    text = (ROOT / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    out = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), namespace)
    model, ds, w = namespace["model"], namespace["ds"], namespace["w"]
    metrics = model.evaluate(w, ds.X_test, ds.y_test)  # type: ignore[attr-defined]
    assert metrics["accuracy"] > 0.95
    b_v, agg = namespace["b_v"], namespace["agg"]
    assert 0 < b_v <= model.dim and agg.shape == (b_v,)  # type: ignore[attr-defined, union-attr]
    assert "median" in out.getvalue()
