"""A small in-memory FeatureData shared by the modeling tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.models.features import FeatureData

N_HF, N_DF = 40, 30


def feature_data(seed: int = 0, n: int = 90) -> FeatureData:
    """Labels driven by hf:0 and df:0..2; repeats for a third of the cases."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"C{i:03d}" for i in range(n)], name="case_id")
    y = rng.integers(0, 2, n)
    hf = rng.normal(size=(n, N_HF))
    hf[:, 0] += 1.5 * y
    df = rng.normal(size=(n, N_DF))
    df[:, :3] += 1.0 * y[:, None]
    columns = [f"hf:intratumoral:f{i}" for i in range(N_HF)] + [f"df:{i}" for i in range(N_DF)]
    reader1 = pd.DataFrame(np.hstack([hf, df]), index=ids, columns=columns)
    rep_ids = ids[::3]
    noise = lambda: rng.normal(scale=0.2, size=(len(rep_ids), len(columns)))  # noqa: E731
    X = {
        "reader1": reader1,
        "reader2": reader1.loc[rep_ids] + noise(),
        "repeat": reader1.loc[rep_ids] + noise(),
    }
    split = np.where(
        np.arange(n) < 60, "training", np.where(np.arange(n) < 75, "validation", "testing")
    )
    cases = pd.DataFrame(
        {
            "label": pd.array(y, dtype="Int8"),
            "split": split,
            "site": np.where(split == "validation", "B", "A"),
            "exam_date": "2023-01-01",
        },
        index=ids,
    )
    return FeatureData(X=X, cases=cases, lineage={"params_hash": "p", "cnn_model_version": "m"})


def with_perturbed(data: FeatureData, real: bool = True) -> FeatureData:
    """``data`` plus perturbed-mask rows for the cases without real repeats (or for all)."""
    rng = np.random.default_rng(5)
    reader1 = data.X["reader1"]
    repeats = data.X["reader2"].index
    ids = reader1.index.difference(repeats) if real else reader1.index
    data.X["perturbed"] = reader1.loc[ids] + rng.normal(
        scale=0.3, size=(len(ids), reader1.shape[1])
    )
    if not real:
        del data.X["reader2"], data.X["repeat"]
    return data
