"""NVFlare's user-facing import paths exist under flare with the names a hello-world job uses (docs/porting.md)."""

from __future__ import annotations

import importlib
import re

import pytest

from conftest import ROOT

ROWS = re.findall(r"^\| `[^`]*` \| `(from (flare[\w.]*) import ([^`]+)|import (flare[\w.]*) as \w+)`",
                  (ROOT / "docs" / "porting.md").read_text(), flags=re.M)


def test_the_table_is_read() -> None:
    assert len(ROWS) >= 12


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_each_ported_import_works(row: tuple[str, str, str, str]) -> None:
    _, module_name, names, plain_module = row
    module = importlib.import_module(module_name or plain_module)
    for name in [n.strip() for n in names.split(",") if n.strip() and n.strip() != "..."]:
        assert hasattr(module, name), f"{module.__name__} has no {name}"
