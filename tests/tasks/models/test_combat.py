"""ComBat against neuroCombat 0.2.12 (parametric EB, reference batch, no covariates)."""

import numpy as np
import pandas as pd
import pytest
from neuroCombat import neuroCombat

from tasks.models.combat import ComBat
from tasks.models.harmonise import SITE_COLUMN


@pytest.fixture(autouse=True)
def _numpy_int(monkeypatch):
    # neuroCombat 0.2.12 still calls np.int (removed in NumPy 1.24).
    monkeypatch.setattr(np, "int", int, raising=False)


def _sites(seed: int = 0, n=(80, 50, 40), p: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for i, (site, rows) in enumerate(zip("ABC", n, strict=True)):
        shift, scale = rng.normal(0, 1.5 * i, p), np.exp(rng.normal(0, 0.4 * i, p))
        base = rng.normal(0, 1, (rows, p)) * scale + shift + np.arange(p)
        frame = pd.DataFrame(base, columns=[f"hf:f{j}" for j in range(p)])
        frame.insert(0, SITE_COLUMN, site)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _reference(frame: pd.DataFrame, ref: str) -> np.ndarray:
    features = frame.drop(columns=SITE_COLUMN)
    covars = pd.DataFrame({"batch": frame[SITE_COLUMN].to_numpy()})
    out = neuroCombat(features.T.to_numpy(), covars, "batch", ref_batch=ref)
    return out["data"].T


def test_fit_transform_matches_neurocombat_with_a_reference_batch():
    frame = _sites()
    ours = ComBat(min_cases=5).fit(frame).transform(frame)
    expected = _reference(frame, "A")
    np.testing.assert_allclose(ours.drop(columns=SITE_COLUMN).to_numpy(), expected, atol=1e-8)
    # The reference site is left exactly as it was.
    ref = frame[SITE_COLUMN] == "A"
    pd.testing.assert_frame_equal(ours[ref], frame[ref])


def test_a_new_site_is_harmonised_from_its_own_rows_against_the_training_reference():
    frame = _sites()
    training = frame[frame[SITE_COLUMN] != "C"]
    combat = ComBat(min_cases=5).fit(training)
    assert set(combat.estimates_) == {"A", "B"}  # C never seen in fit
    new = frame[frame[SITE_COLUMN] == "C"]
    ours = combat.transform(new).drop(columns=SITE_COLUMN).to_numpy()
    # neuroCombat on reference + new site: each batch's EB estimates use only its own rows.
    both = pd.concat([frame[frame[SITE_COLUMN] == "A"], new], ignore_index=True)
    expected = _reference(both, "A")[(both[SITE_COLUMN] == "C").to_numpy()]
    np.testing.assert_allclose(ours, expected, atol=1e-8)
    # And the adjustment removes most of the site's shift (means move towards site A's).
    gap_before = np.abs(
        new.iloc[:, 1:].mean() - training[training[SITE_COLUMN] == "A"].iloc[:, 1:].mean()
    )
    gap_after = np.abs(ours.mean(axis=0) - combat.mean_)
    assert gap_after.mean() < 0.2 * gap_before.mean()


def test_labels_play_no_part_and_a_small_new_site_is_left_unchanged():
    frame = _sites()
    a = ComBat(min_cases=5).fit(frame, np.zeros(len(frame))).transform(frame)
    b = ComBat(min_cases=5).fit(frame, np.ones(len(frame))).transform(frame)
    pd.testing.assert_frame_equal(a, b)
    combat = ComBat(min_cases=10).fit(frame[frame[SITE_COLUMN] == "A"])
    few = frame[frame[SITE_COLUMN] == "C"].head(4)
    pd.testing.assert_frame_equal(combat.transform(few), few)
    assert combat.skipped_ == {"C": 4}


def test_a_missing_site_column_is_a_clear_error():
    frame = _sites().drop(columns=SITE_COLUMN)
    with pytest.raises(ValueError, match="meta:site"):
        ComBat().fit(frame)


def test_a_feature_without_values_at_a_site_leaves_the_others_harmonised():
    """Real radiomics tables have features that are NaN for every case of a site (an empty
    ring, a failed filter): that feature stays as it is; the others are still harmonised."""
    rng = np.random.default_rng(3)
    ref = pd.DataFrame(rng.normal(size=(40, 5)), columns=[f"hf:{i}" for i in range(5)])
    new = pd.DataFrame(rng.normal(size=(30, 5)) * 2 + 3, columns=ref.columns)
    new["hf:4"] = np.nan
    X = pd.concat([ref.assign(**{SITE_COLUMN: "A"}), new.assign(**{SITE_COLUMN: "B"})])
    X.index = range(len(X))
    out = ComBat(columns_prefixes=("hf:",), min_cases=10).fit(X[X[SITE_COLUMN] == "A"]).transform(X)
    b = out[out[SITE_COLUMN] == "B"]
    assert b["hf:4"].isna().all()
    assert np.isfinite(b[[f"hf:{i}" for i in range(4)]].to_numpy()).all()
    assert (b[[f"hf:{i}" for i in range(4)]].mean().abs() < 0.5).all()  # moved onto A's scale
