"""Reference data for the metric tests: pROC's aSAH data set and seeded simulations.

- aSAH (Turck N, et al. Intensive Care Med. 2010;36:107-115), as shipped with the R
  package pROC (``data(aSAH)``); the ``asah`` fixture (conftest) checks its transcription;
- :func:`simulated`: labels with a shifted normal score, rounded (ties) and continuous;
- :func:`calibration_sample`: outcomes drawn from a true risk, predictions mis-calibrated
  by a known spread and shift.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

# ---------------------------------------------------------------------------------------
# pROC's aSAH data (Turck N, et al. Intensive Care Med. 2010;36:107-115), as shipped with
# the R package pROC (data(aSAH)), in its row order: outcome (P = Poor = 1, G = Good = 0),
# wfns (1-5, used as a number), s100b, ndka. 113 patients, 41 poor outcomes. That these
# columns are transcribed right is itself checked: they reproduce nine pROC test-suite
# numbers to 1e-10 below.
# ---------------------------------------------------------------------------------------
ASAH_OUTCOME = (
    "GGGGPPGPGGPGPPGGPGPPPGPGGGGGGGGGPGGPPGPPGGGGGGGGGPPGGGPGGGPGPGGPPPGPPGPPPPGGGPPGPGGG"
    "GGGPGGGGGGGGGGGGPPPPPPGGGPGGG"
)
ASAH_WFNS = (
    "1 1 1 1 3 2 5 4 1 2 5 2 5 5 1 2 5 2 2 5 2 1 1 1 1 2 1 2 1 1 3 4 2 1 4 5 4 1 4 2 5 5 1 1 2 "
    "4 1 1 2 5 5 2 1 2 5 1 2 2 2 1 5 1 1 2 5 2 1 4 5 2 4 4 1 4 1 2 1 4 2 1 2 3 2 4 2 1 4 5 1 1 "
    "5 4 2 2 1 1 1 3 1 2 5 2 2 5 5 5 2 4 4 5 1 1 1"
)
ASAH_S100B = (
    "0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 "
    "0.07 0.33 0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 "
    "0.35 0.48 0.09 0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 "
    "0.06 0.13 2.07 0.1 0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 "
    "0.27 0.71 0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 "
    "0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 "
    "0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48"
)
ASAH_NDKA = (
    "3.01 8.54 8.09 10.42 17.4 12.75 6.0 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 "
    "11.6 16.11 32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 "
    "9.85 18.21 5.03 14.04 21.93 8.02 7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 "
    "12.59 13.56 3.87 9.44 7.66 12.98 419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39 "
    "11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57 5.19 "
    "9.63 4.61 21.48 17.3 12.71 9.44 11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 "
    "8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61 11.67 24.58 10.33 "
    "13.87 15.89 22.43 6.79 13.45"
)


def asah_data() -> dict[str, np.ndarray]:
    return {
        "y": np.array([c == "P" for c in ASAH_OUTCOME], dtype=int),
        "wfns": np.array(ASAH_WFNS.split(), dtype=float),
        "s100b": np.array(ASAH_S100B.split(), dtype=float),
        "ndka": np.array(ASAH_NDKA.split(), dtype=float),
    }


def simulated(seed: int, n_pos: int = 60, n_neg: int = 90, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    latent = rng.normal(size=y.size) + shift * y
    # rounding makes ties, which the midrank algorithm must count one half
    return y, np.round(latent, 1), latent, rng


def calibration_sample(seed: int, n: int, spread: float = 1.0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    true_lp = rng.normal(-0.4, 1.3, n)
    y = rng.binomial(1, expit(true_lp))
    prob = expit(shift + spread * true_lp)  # spread > 1: over-confident predictions
    return y, prob
