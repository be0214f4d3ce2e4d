"""Build a notebook from a list of (kind, source) cells: python scripts/make_notebook.py SPEC.py OUT.ipynb.

Notebooks are committed without outputs; their cells assert what they teach.
"""
import json
import runpy
import sys


def notebook(cells):
    return {
        "cells": [
            {"cell_type": kind, "id": f"cell-{i}", "metadata": {}, "source": src.strip("\n").splitlines(keepends=True),
             **({"outputs": [], "execution_count": None} if kind == "code" else {})}
            for i, (kind, src) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


if __name__ == "__main__":
    spec, out = sys.argv[1:3]
    cells = runpy.run_path(spec)["CELLS"]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(notebook(cells), f, ensure_ascii=False, indent=1)
        f.write("\n")
