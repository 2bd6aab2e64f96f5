"""Every setting is read: a config field that no code reads is a setting that silently does nothing.

The test walks every field of ``SeqrecConfig`` and looks for a read of it in the code that runs
(the library outside ``seqrec/config``, the tasks, flows and suites): an attribute access
``<x>.<field>`` or the field's name as a string (``getattr``, ``model_copy(update=...)``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel

from seqrec.config import SeqrecConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PACKAGE = ROOT / "src" / "seqrec" / "config"
CODE = [p for d in ("src/seqrec", "tasks", "flows", "expectations", "deployments") for p in sorted((ROOT / d).rglob("*.py"))
        if CONFIG_PACKAGE not in p.parents]


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """Return (dotted key, field name) of every leaf field under ``model``."""
    out = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += leaf_fields(sub, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", name))
    return out


def names_read() -> set[str]:
    """Return every attribute name accessed and every string constant in the running code."""
    found: set[str] = set()
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_the_code_list_leaves_out_the_config_package_only():
    rel = {p.relative_to(ROOT).as_posix() for p in CODE}
    assert "src/seqrec/pipeline/models.py" in rel and "tasks/models.py" in rel
    assert not any(r.startswith("src/seqrec/config/") for r in rel)


def test_every_config_field_is_read_by_some_code():
    read = names_read()
    unread = [key for key, name in leaf_fields(SeqrecConfig) if name not in read]
    assert not unread, f"config fields no code reads (wire them or remove them): {unread}"


def test_the_walk_reaches_nested_sections_and_the_check_sees_a_missing_read():
    keys = dict(leaf_fields(SeqrecConfig))
    assert keys["models.gru4rec.init_from_embeddings"] == "init_from_embeddings"
    assert keys["generator.defects.receipt_linkage"] == "receipt_linkage"
    assert "no_code_reads_this_setting" not in names_read()
