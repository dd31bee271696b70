"""Code that runs for nothing: state written and never read, None that never comes.

Dead code misleads the next reader: an attribute that is only written looks
like something depends on it, and a result typed ``X | None`` that is never
None makes every caller grow a branch that never runs (issue 14).
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import glimpse_edge
from glimpse_edge.agent import build_media_hub
from glimpse_edge.media.hub import MediaHub

PACKAGE = Path(glimpse_edge.__file__).resolve().parent


def _private_written_never_read(source: str, name: str) -> list[str]:
    """``self._x`` (or a class-level ``_x``) that the module assigns but never reads."""
    tree = ast.parse(source, name)
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            read.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            read.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            read.add(node.value)  # __slots__, getattr(self, "_x")
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        written: dict[str, int] = {}
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                written.setdefault(node.attr, node.lineno)
        for stmt in cls.body:
            targets = (stmt.targets if isinstance(stmt, ast.Assign)
                       else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name):
                    written.setdefault(target.id, stmt.lineno)
        found += [f"{name}:{line}: {cls.name}.{attr}"
                  for attr, line in sorted(written.items(), key=lambda kv: kv[1])
                  if attr.startswith("_") and not attr.startswith("__") and attr not in read]
    return found


def test_no_private_attribute_is_written_and_never_read() -> None:
    found = [hit for path in sorted(PACKAGE.rglob("*.py"))
             for hit in _private_written_never_read(
                 path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert not found, "written, never read:\n" + "\n".join(found)


def test_the_detector_sees_a_dead_attribute() -> None:
    """Guard the guard: written only is found; read in the class or the module is not."""
    source = ("class A:\n"
              "    _kept = 0\n"
              "    def f(self):\n"
              "        self._dead = 1\n"
              "        self._used = 2\n"
              "        return self._used + self._kept\n")
    assert _private_written_never_read(source, "probe.py") == ["probe.py:4: A._dead"]


def test_the_media_hub_is_always_built() -> None:
    """Video is always on, so there is always a hub: no None for callers to handle."""
    hints = typing.get_type_hints(build_media_hub)
    assert hints["return"] is MediaHub, hints["return"]
