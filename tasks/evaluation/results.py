"""The evaluation contract: typed results passed from the evaluation step to its readers.

:func:`tasks.evaluation.evaluate.evaluate` builds one :class:`Evaluation` per run; the
report (:mod:`tasks.evaluation.report`), the Prefect artifacts
(:mod:`tasks.evaluation.artifacts`), MLflow tracking (:mod:`tasks.models.registry`) and the
flows' summaries read it by attribute. Every class is a frozen dataclass of plain Python
values (``int``, ``float``, ``str``, tuples, dicts keyed by model, split or site); a number
the data leave undefined is NaN. Field names and order are those of ``report.json``
(written by :mod:`tasks.evaluation.report.serialise`); where a JSON key differs from the
attribute it is given as the field's ``json`` metadata.

Keys used throughout: model names are those of :data:`tasks.models.pipelines.MODELS`,
sets those of :data:`EVALUATION_SETS` (the splits of :data:`tasks.data.schema.SPLITS`, and
``training_new`` in a validate run: training-split cases the champion was not fitted on),
sites as in the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

Interval = tuple[float, float]  # (lo, hi); (nan, nan) where undefined

# The sets a report shows, in order. "training_new": cases of the training split added after
# the scored model was fitted (a validate run); the model never saw them.
EVALUATION_SETS = ("training", "training_new", "validation", "testing")
# Per-site metrics are shown only where a site has this many cases of a set, and this many
# of each class: below that an AUC's interval spans most of [0, 1].
SITE_MIN_N = 20
SITE_MIN_CLASS = 5


@dataclass(frozen=True)
class ModelSetMetrics:
    """One model on one set (or site) at the training Youden threshold.

    Counts, the threshold, accuracy, sensitivity, specificity, PPV and NPV with Wilson
    intervals, AUC with its DeLong interval, Brier score; as computed by
    :func:`tasks.evaluation.metrics.model_set_metrics`.
    """

    n: int
    n_pos: int
    n_neg: int
    tp: int
    fp: int
    tn: int
    fn: int
    threshold: float
    accuracy: float
    accuracy_ci: Interval
    sensitivity: float
    sensitivity_ci: Interval
    specificity: float
    specificity_ci: Interval
    ppv: float
    ppv_ci: Interval
    npv: float
    npv_ci: Interval
    auc: float
    auc_ci: Interval
    brier: float


@dataclass(frozen=True)
class DelongTest:
    """Paired two-sided DeLong test of model A against model B on the same cases."""

    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    z: float
    p: float
    diff_ci: Interval


@dataclass(frozen=True)
class ReliabilityBin:
    """One quantile bin of a reliability curve."""

    mean_predicted: float
    observed: float  # fraction positive
    count: int


@dataclass(frozen=True)
class Calibration:
    """Calibration intercept and slope, Brier score and reliability curve of one model on
    one set (:func:`tasks.evaluation.metrics.calibration`)."""

    n: int
    intercept: float
    slope: float
    brier: float
    curve: tuple[ReliabilityBin, ...]


@dataclass(frozen=True)
class NetBenefit:
    """One threshold of a decision curve (:func:`tasks.evaluation.metrics.decision_curve`)."""

    threshold: float
    net_benefit_model: float
    net_benefit_all: float
    net_benefit_none: float


@dataclass(frozen=True)
class RocCurve:
    """ROC curve of one model on one set; ``fpr`` and ``tpr`` are empty when the set has a
    single class (the curve is undefined then, ``n`` and ``n_pos`` are not)."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    n: int
    n_pos: int

    @property
    def defined(self) -> bool:
        return len(self.fpr) > 0


@dataclass(frozen=True)
class SiteMetrics:
    """One model at one site within one set; ``enough`` False (and the AUC NaN) where the
    site has fewer than :data:`SITE_MIN_N` cases or :data:`SITE_MIN_CLASS` of a class."""

    n: int
    n_pos: int
    n_neg: int
    tp: int
    fp: int
    tn: int
    fn: int
    auc: float
    auc_ci: Interval
    enough: bool
    note: str  # "" or why no AUC is shown ("too few: ...")


@dataclass(frozen=True)
class FeaturePsi:
    feature: str
    psi: float
    p: float = float("nan")  # permutation p-value of this feature's PSI
    flagged: bool = False  # PSI above the site's critical value (family-wise at alpha)


@dataclass(frozen=True)
class SiteDrift:
    """PSI of the model's selected input features, one site of one set against training,
    with a critical value from a permutation null (:func:`~tasks.evaluation.metrics.drift.
    psi_permutation_test`): a feature is flagged only when its PSI exceeds what resampling
    training and the site together gives in 1 - alpha of draws, for every feature at once."""

    n: int  # cases at the site in this set
    psi_max: float
    psi_mean: float
    features_flagged: int
    critical: float  # the PSI a feature must exceed to be flagged
    top: tuple[FeaturePsi, ...]  # largest PSI first
    model: str = ""  # whose input features
    features: int = 0  # how many were tested
    note: str = ""


@dataclass(frozen=True)
class CohortFlow:
    """Cases in, quarantined, per split and site, labelled: the report's data-flow box."""

    cases_in: int
    quarantined: int
    per_split: dict[str, int]
    per_site: dict[str, int]
    labelled: int
    unlabelled: int
    exam_dates: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # per split
    manifests: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per split
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # reason -> cases
    patients: dict[str, int] = field(default_factory=dict)  # per split


@dataclass(frozen=True)
class Checks:
    """The acceptance check of a validate run: COMB's AUC on ``split`` against the floor."""

    auc_floor: float
    split: str = field(metadata={"json": "set"})
    auc: float
    passed: bool
    failed: tuple[str, ...]  # one reason per failed check


@dataclass(frozen=True)
class Promotion:
    """Whether a retrained candidate replaces the champion, why, and the test behind it."""

    promote: bool
    reason: str
    delong: DelongTest | None = None  # candidate (a) vs champion (b); None without a test


@dataclass(frozen=True)
class Evaluation:
    """Every number of a run's report, keyed model -> split (or site) where per model.

    ``calibration`` and ``decision_curves`` hold the sets with both classes only; ``roc``
    and ``models`` every set with labelled cases; ``delong`` is keyed split -> comparison
    (``"COMB_vs_ONLY_HF"``). ``per_site`` is keyed set -> site -> model, ``drift`` set ->
    site (validation and testing sites against training). ``model_fits``: per model, how
    it was fitted (penalty, LASSO rule and fallback, ICC sets and n, intercept);
    ``decision_sets``: which set served which decision; ``harmonisation``: the scanner
    harmonisation options compared (retrain). ``versions`` is the feature
    data's lineage (table versions, params hash, CNN model version, ...) plus what the flow
    adds (CNN or champion version). ``checks`` is set by the validate flow (:meth:`with_checks`).
    """

    run_id: str
    kind: str  # "retrain" or "validate"
    created_at: str  # ISO 8601, UTC, seconds
    models: dict[str, dict[str, ModelSetMetrics]]
    per_site: dict[str, dict[str, dict[str, SiteMetrics]]]
    delong: dict[str, dict[str, DelongTest]]
    calibration: dict[str, dict[str, Calibration]]
    decision_curves: dict[str, dict[str, tuple[NetBenefit, ...]]]
    roc: dict[str, dict[str, RocCurve]]
    thresholds: dict[str, float]
    selected_features: dict[str, dict[str, float]]  # model -> feature -> coefficient
    notes: tuple[str, ...]
    drift: dict[str, dict[str, SiteDrift]]  # set -> site -> drift against training
    cohort_flow: CohortFlow
    versions: dict[str, Any]
    model_fits: dict[str, dict[str, Any]] = field(default_factory=dict)
    decision_sets: dict[str, str] = field(default_factory=dict)
    checks: Checks | None = None
    # Scanner harmonisation options compared on the run (retrain), the chosen one and why
    # (tasks.evaluation.harmonisation.compare_harmonisation); empty in validate runs.
    harmonisation: dict[str, Any] = field(default_factory=dict)

    def with_checks(self, checks: Checks) -> Evaluation:
        return replace(self, checks=checks)

    def with_harmonisation(self, comparison: dict[str, Any]) -> Evaluation:
        return replace(self, harmonisation=comparison)
