"""The console of ``sln``: progress bars follow the flows' own progress records."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from flows.runtime.console import STAGES, Progress, progress

ROOT = Path(__file__).resolve().parents[3]
SOURCES = (
    "flows/cohort.py",
    "flows/extract.py",
    "tasks/data/ingest.py",
    "tasks/models/pipelines.py",
)


def test_every_template_is_one_the_flows_log():
    """The bars match log templates verbatim: a reworded message would silently stop its
    bar, so each template must still be in the flows' source."""
    source = "".join((ROOT / path).read_text() for path in SOURCES)
    missing = [t for t in STAGES if f'"{t}"' not in source]
    assert missing == []


def test_one_bar_per_stage_from_log_records():
    stream = io.StringIO()
    log = logging.getLogger("prefect.flow_runs.test-console")
    log.setLevel(logging.INFO)
    log.propagate = False
    with progress(stream=stream) as bars:
        log.addHandler(bars)
        log.info("radiomics: %d cases to extract in %d chunks, %d already stored", 20, 4, 3)
        for chunk, cases in enumerate((5, 10, 15, 20), start=1):
            log.info("%s: chunk %d/%d committed (%d cases so far)", "radiomics", chunk, 4, cases)
        log.info("radiomics, image-normalised pass: %d cases to extract, %d already stored", 4, 0)
        log.info("%s: chunk %d/%d committed (%d cases so far)", "radiomics", 1, 1, 4)
        log.info("something else: %d", 1)
        for fold in (1, 2):
            log.info("%s: LASSO fold %d/%d", "COMB", fold, 2)
        log.removeHandler(bars)
    lines = stream.getvalue().splitlines()
    folds = [line for line in lines if line.startswith("retrain: COMB LASSO")]
    assert len(folds) == 2 and "2/2 folds 100%" in folds[-1]
    lines = [line for line in lines if line not in folds]
    assert [line.split()[0] for line in lines] == ["radiomics"] * 7
    assert "0/20 cases" in lines[0] and "20/20 cases 100%" in lines[4] and "done in" in lines[4]
    assert "(image-normalised)" in lines[5] and "4/4 cases 100%" in lines[6]
    assert all("cases/s" in line and ("s left" in line or "done in" in line) for line in lines)


def test_verbose_shows_no_bars():
    with progress(verbose=True) as bars:
        assert bars is None


def test_a_plain_stream_gets_a_line_per_tenth_not_per_chunk():
    stream = io.StringIO()
    bars = Progress(stream)
    bars.start("embeddings", 1000)
    for done in range(1, 1001):
        bars.update("embeddings", done)
    bars.close()
    assert len(stream.getvalue().splitlines()) == 11  # the start, then every 100 cases
