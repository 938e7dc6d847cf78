"""The layout rules of docs/architecture.md, checked on the real tree (tests/layout.py)."""

from __future__ import annotations

import textwrap

from tests import layout


def test_the_tree_keeps_the_layout_rules():
    assert layout.problems() == []


def test_the_checker_finds_a_cycle_a_long_module_and_a_missing_test(tmp_path, monkeypatch):
    pkg = tmp_path / "tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tasks import b\n")
    (pkg / "b.py").write_text(
        textwrap.dedent(
            """
            def f():
                from tasks.a import x  # a lazy import still closes the cycle
            """
        )
        + "\n" * 600
    )
    (tmp_path / "flows").mkdir()
    (tmp_path / "tests" / "tasks").mkdir(parents=True)
    (tmp_path / "tests" / "tasks" / "test_a.py").write_text("")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    found = layout.problems()
    assert "import cycle: tasks.a -> tasks.b" in found
    assert any(line.startswith("tasks/b.py:") and "lines" in line for line in found)
    assert "tasks/b.py: no tests/tasks/test_b.py" in found
    assert not any(line.startswith("tasks/a.py: no") for line in found)
