"""Validation metrics: discrimination, classification, calibration, clinical use, drift.

Pure functions on arrays; they read and write nothing. The evaluation step
(:mod:`tasks.evaluation.evaluate`) calls them once per model (``ONLY_HF``, ``ONLY_DF``,
``COMB``) and per split (training, external validation, test). One module per family:

- :mod:`~tasks.evaluation.metrics.roc`: AUC with its DeLong variance and confidence
  interval (:func:`delong_roc_variance`, :func:`auc_ci`) and the paired DeLong test between
  two models scored on the same cases (:func:`delong_test`);
- :mod:`~tasks.evaluation.metrics.binary`: classification at a threshold learned on the
  training set (:func:`youden_threshold`): confusion counts, accuracy, sensitivity,
  specificity, PPV, NPV, each with a Wilson interval (:func:`wilson_ci`,
  :func:`classification_metrics`, :func:`model_set_metrics`);
- :mod:`~tasks.evaluation.metrics.calibration`: intercept, slope, Brier score, reliability
  curve (:func:`calibration`);
- :mod:`~tasks.evaluation.metrics.decision`: net benefit over a threshold grid
  (:func:`decision_curve`);
- :mod:`~tasks.evaluation.metrics.drift`: population stability index between training and
  a later set (:func:`psi`, :func:`psi_table`), flagged against a permutation null
  (:func:`psi_permutation_test`).

Conventions used throughout: labels are 0/1 (1 = sentinel lymph node metastasis), a
higher score means more likely positive, and a case is called positive when
``score >= threshold``. Bad input (labels other than 0/1, lengths that differ, scores that
are not finite) raises ``ValueError``; a quantity that the data leave undefined (a ratio
with an empty denominator, an AUC on a set with a single class) comes back as NaN.
"""

from tasks.evaluation.metrics.binary import (
    classification_metrics,
    model_set_metrics,
    wilson_ci,
    youden_threshold,
)
from tasks.evaluation.metrics.calibration import calibration
from tasks.evaluation.metrics.decision import decision_curve
from tasks.evaluation.metrics.drift import drift_bins, psi, psi_permutation_test, psi_table
from tasks.evaluation.metrics.roc import (
    auc_ci,
    delong_components,
    delong_roc_variance,
    delong_test,
)

__all__ = [
    "auc_ci",
    "calibration",
    "classification_metrics",
    "decision_curve",
    "delong_components",
    "delong_roc_variance",
    "delong_test",
    "drift_bins",
    "model_set_metrics",
    "psi",
    "psi_permutation_test",
    "psi_table",
    "wilson_ci",
    "youden_threshold",
]
