"""The page's inline CSS styles every class the page uses."""

from __future__ import annotations

import re

from tasks.evaluation.report._style import CSS


def test_every_class_on_the_page_has_a_rule(page):
    used = {c for attr in re.findall(r'class="([^"]+)"', page) for c in attr.split()}
    styled = set(re.findall(r"\.([A-Za-z][\w-]*)", CSS))
    assert used, "the page uses CSS classes"
    assert used <= styled, f"classes without a rule: {sorted(used - styled)}"


def test_the_css_is_balanced():
    assert CSS.count("{") == CSS.count("}") > 10
