"""The simulated evaluation (numbers computed by hand, see ``simulated.py``) and its page."""

from __future__ import annotations

import pytest

from tasks.evaluation.report import render_html
from tasks.evaluation.results import Evaluation
from tests.tasks.evaluation.report.simulated import build_evaluation


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    return build_evaluation()


@pytest.fixture(scope="module")
def page(evaluation) -> str:
    return render_html(evaluation)
