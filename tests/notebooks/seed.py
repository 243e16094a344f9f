"""The seed notebook (shared/seed, an ipyparallel tutorial) as a notebook pxgrpc can run.

`seed.txt` is the notebook as text: each code cell starts with an `In [n]:` line and ends at the
first blank line; what follows (outputs, markdown) is not code.
"""

from __future__ import annotations

import pathlib
import re

import nbformat

SEED = pathlib.Path(__file__).with_name("seed.txt")
_PROMPT = re.compile(r"^In \[[^\]]*\]:\s*$")


def seed_cells(text: str | None = None) -> list[str]:
    """The code cells of the seed notebook, importing pxgrpc as ipp instead of ipyparallel."""
    lines = (SEED.read_text() if text is None else text).splitlines()
    cells: list[str] = []
    i = 0
    while i < len(lines):
        if _PROMPT.match(lines[i]):
            code: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip():
                code.append(lines[i])
                i += 1
            cells.append("\n".join(code).replace("import ipyparallel as ipp", "import pxgrpc as ipp"))
        i += 1
    return cells


def seed_notebook() -> nbformat.NotebookNode:
    """A version-4 notebook with the seed's code cells, no outputs."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code) for code in seed_cells()]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb
