"""Feature selection step: reproducibility, redundancy and LASSO filters as sklearn transformers.

The selection of Yang et al., *Gland Surgery* 2025 (doi:10.21037/gs-2025-223), one estimator
per stage so that the whole chain sits in a :class:`sklearn.pipeline.Pipeline`, is refit
inside every cross-validation fold, and is logged like any other model:

- :func:`icc` computes the Shrout-Fleiss / McGraw-Wong intraclass correlations of every
  feature at once from repeated measurements (reader 1 vs reader 2, reader 1 vs its repeat);
- :class:`ICCFilter` keeps the features whose ICC reaches a threshold in every repeat set;
- :class:`PearsonFilter` drops the weaker feature (lower univariate AUC) of each highly
  correlated pair;
- :class:`LassoSelector` keeps the nonzero coefficients of an L1-penalised logistic
  regression whose penalty is chosen by stratified cross-validation (1-SE or min rule).

PCA of the deep features is :class:`sklearn.decomposition.PCA` itself (``n_components=0.95``
keeps 95 % of the variance); it is not wrapped here.

Reads feature matrices (numpy arrays or pandas DataFrames, one row per case) and, for the
ICC stage, the repeat delineations' feature rows; writes nothing. Every estimator follows
the scikit-learn contract: ``__init__`` stores its arguments, ``fit`` validates, learns
attributes ending in ``_`` and returns ``self``; ``transform``, ``get_support`` and
``get_feature_names_out`` come from :class:`sklearn.feature_selection.SelectorMixin`, so
``set_output(transform="pandas")`` keeps column names.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["ICC_FORMS", "ICCFilter", "LassoSelector", "PearsonFilter", "icc"]

#: The ICC forms :func:`icc` computes: Shrout & Fleiss (1979) cases 1-3, single measurement
#: (``ICC1``, ``ICC2``, ``ICC3``) and mean of the k measurements (``ICC1k`` ...). In McGraw &
#: Wong's (1996) terms ICC2 is ICC(A,1) (two-way random, absolute agreement) and ICC3 is
#: ICC(C,1) (two-way mixed, consistency).
ICC_FORMS = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")


# --------------------------------------------------------------------------------------
# ICC
# --------------------------------------------------------------------------------------


def icc(ref, rep=None, form: str = "ICC2") -> np.ndarray:
    """Intraclass correlation of every feature from repeated measurements, vectorised.

    Computes the two-way ANOVA mean squares of each feature (cases x measurements) and
    forms the Shrout-Fleiss / McGraw-Wong coefficient from them, for all features at once.

    Parameters
    ----------
    ref : array-like of shape (n_cases, n_features) or (n_cases, k, n_features)
        First measurement of each case (e.g. reader 1). Without ``rep``, a 3-D array holding
        all ``k >= 2`` measurements of each case along axis 1. A 1-D array is one feature.
    rep : array-like of shape (n_cases, n_features), optional
        Second measurement of the same cases, rows paired with ``ref`` (reader 2, or the
        repeat delineation); then ``k = 2``.
    form : {"ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k"}, default="ICC2"
        ``ICC1``: one-way random effects, single measurement, ICC(1,1).
        ``ICC2``: two-way random effects, absolute agreement, single measurement, ICC(2,1)
        = ICC(A,1); the default, since a feature must agree in value, not only in rank,
        to survive a change of reader.
        ``ICC3``: two-way mixed effects, consistency, single measurement, ICC(3,1) =
        ICC(C,1). The ``k`` forms are the same models for the mean of the k measurements.

    Returns
    -------
    ndarray of shape (n_features,)
        The ICC of each feature. NaN where the feature is constant over all cases and
        measurements (no variance to apportion), or where the form's denominator is zero
        (ICC3 of a feature that varies only between measurements).

    Notes
    -----
    With ``n`` cases, ``k`` measurements, ``MSR`` the between-case, ``MSC`` the
    between-measurement, ``MSE`` the residual and ``MSW = (SSC + SSE) / (n (k - 1))`` the
    within-case mean square::

        ICC1  = (MSR - MSW) / (MSR + (k - 1) MSW)
        ICC2  = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)
        ICC3  = (MSR - MSE) / (MSR + (k - 1) MSE)
        ICC1k = (MSR - MSW) / MSR
        ICC2k = (MSR - MSE) / (MSR + (MSC - MSE) / n)
        ICC3k = (MSR - MSE) / MSR

    These agree with ``pingouin.intraclass_corr`` to rounding error. Every form is
    invariant to an affine map applied to a feature in all measurements alike, so
    standardising features before or after computing it changes nothing.

    References
    ----------
    .. [1] Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater
       reliability. Psychol Bull. 1979;86(2):420-428.
    .. [2] McGraw KO, Wong SP. Forming inferences about some intraclass correlation
       coefficients. Psychol Methods. 1996;1(1):30-46.
    .. [3] Koo TK, Li MY. A guideline of selecting and reporting intraclass correlation
       coefficients for reliability research. J Chiropr Med. 2016;15(2):155-163.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([[1.0, 5.0], [2.0, 1.0], [3.0, 4.0], [4.0, 2.0]])
    >>> rep = ref + np.array([[0.1, -2.0], [0.0, 3.0], [-0.1, -1.0], [0.0, 1.0]])
    >>> icc(ref, rep).round(3)
    array([ 0.998, -0.552])
    """
    if form not in ICC_FORMS:
        raise ValueError(f"form must be one of {ICC_FORMS}, got {form!r}")
    if rep is None:
        ratings = np.asarray(ref, dtype=np.float64)
        if ratings.ndim != 3:
            raise ValueError(
                "icc(ref) without rep needs a 3-D array (n_cases, k, n_features); "
                f"got shape {ratings.shape}"
            )
    else:
        ref = np.asarray(ref, dtype=np.float64)
        rep = np.asarray(rep, dtype=np.float64)
        if ref.ndim == 1:
            ref = ref[:, None]
        if rep.ndim == 1:
            rep = rep[:, None]
        if ref.ndim != 2 or ref.shape != rep.shape:
            raise ValueError(
                "ref and rep must be 2-D arrays of the same shape (n_cases, n_features), "
                f"rows paired by case; got {ref.shape} and {rep.shape}"
            )
        ratings = np.stack([ref, rep], axis=1)
    n, k, _ = ratings.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 cases and 2 measurements; got n={n}, k={k}")
    if not np.isfinite(ratings).all():
        raise ValueError("ICC input contains NaN or infinity; drop or impute those cases first")
    return _icc_from_ratings(ratings, form)


def _icc_from_ratings(ratings: np.ndarray, form: str) -> np.ndarray:
    """ICC of each feature of a finite (n, k, p) array; see :func:`icc`."""
    n, k, _ = ratings.shape
    grand = ratings.mean(axis=(0, 1))
    case_means = ratings.mean(axis=1)  # (n, p)
    rater_means = ratings.mean(axis=0)  # (k, p)
    ss_cases = k * ((case_means - grand) ** 2).sum(axis=0)
    ss_raters = n * ((rater_means - grand) ** 2).sum(axis=0)
    # The residual from its own definition, not SST - SSR - SSC, which cancels badly.
    resid = ratings - case_means[:, None, :] - rater_means[None, :, :] + grand
    ss_error = (resid**2).sum(axis=(0, 1))
    msr = ss_cases / (n - 1)
    msc = ss_raters / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    msw = (ss_raters + ss_error) / (n * (k - 1))

    if form == "ICC1":
        num, den = msr - msw, msr + (k - 1) * msw
    elif form == "ICC2":
        num, den = msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n
    elif form == "ICC3":
        num, den = msr - mse, msr + (k - 1) * mse
    elif form == "ICC1k":
        num, den = msr - msw, msr
    elif form == "ICC2k":
        num, den = msr - mse, msr + (msc - mse) / n
    else:  # ICC3k
        num, den = msr - mse, msr
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    constant = np.ptp(ratings, axis=(0, 1)) == 0
    out[constant | (den == 0)] = np.nan
    return out


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------


def _feature_names(est) -> np.ndarray:
    """Input feature names seen in fit, or sklearn's defaults ``x0, x1, ...``."""
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        return np.asarray(names, dtype=object)
    return np.asarray([f"x{i}" for i in range(est.n_features_in_)], dtype=object)


def _binary_target(y) -> np.ndarray:
    """``y`` as 0/1 (the larger label is 1); refuses anything but two classes."""
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size != 2:
        raise ValueError(
            f"a binary outcome with exactly two classes is required; got {classes.size} "
            f"class(es): {classes.tolist()[:10]}"
        )
    return (np.asarray(y) == classes[1]).astype(np.int64)


def _check_fraction(name: str, value) -> None:
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")


# --------------------------------------------------------------------------------------
# ICC filter
# --------------------------------------------------------------------------------------


class ICCFilter(SelectorMixin, BaseEstimator):
    """Keep the features that are reproducible across readers and repeat delineations.

    For every set of repeat measurements (for instance ``inter``: reader 1 vs reader 2, and
    ``intra``: reader 1 vs reader 1 weeks later) the ICC of each feature is computed with
    :func:`icc`; a feature is kept when its ICC is ``>= threshold`` in every set.

    Parameters
    ----------
    threshold : float, default=0.75
        Lowest acceptable ICC. 0.75 is the lower bound of "good" reliability in Koo & Li
        (2016) (below 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good, above 0.9 excellent).
        The point estimate is compared, as is usual in radiomics, not its confidence bound.
    form : {"ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k"}, default="ICC2"
        ICC form, see :func:`icc`. The default, two-way random effects, absolute agreement,
        single measurement, is the form Koo & Li recommend for inter-rater reliability
        when the model will be used with one reader's measurement.

    Attributes
    ----------
    icc_ : pandas.DataFrame of shape (n_features_in_, n_pair_sets)
        ICC of each feature (index) in each repeat set (columns, the keys of ``pairs``).
        NaN for features that are constant in a set; those are never kept.
    support_ : ndarray of shape (n_features_in_,), dtype bool
        Which features are kept.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` in :meth:`fit`, when it is a DataFrame with string columns.

    See Also
    --------
    icc : the coefficient itself.
    PearsonFilter : the redundancy filter that usually follows.

    Notes
    -----
    The repeat measurements arrive as a ``fit`` parameter, not as rows of ``X``: they are
    usually a subset of the cases, measured again. In a pipeline pass them step-prefixed,
    ``pipe.fit(X, y, icc__pairs=pairs)``, or with metadata routing enabled
    ``ICCFilter().set_fit_request(pairs=True)`` and ``pipe.fit(X, y, pairs=pairs)``.
    The pairs do not go through the steps before this one; that is harmless for per-feature
    affine steps such as :class:`~sklearn.preprocessing.StandardScaler` (the ICC is
    invariant to them) but wrong after steps that mix columns (PCA): place the filter
    before those.

    Because fitting needs ``pairs``, :func:`sklearn.utils.estimator_checks.check_estimator`
    cannot drive this class directly; the test suite runs it on a subclass that supplies
    synthetic repeats.

    References
    ----------
    .. [1] Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater
       reliability. Psychol Bull. 1979;86(2):420-428.
    .. [2] McGraw KO, Wong SP. Forming inferences about some intraclass correlation
       coefficients. Psychol Methods. 1996;1(1):30-46.
    .. [3] Koo TK, Li MY. A guideline of selecting and reporting intraclass correlation
       coefficients for reliability research. J Chiropr Med. 2016;15(2):155-163.
    """

    def __init__(self, threshold: float = 0.75, form: str = "ICC2"):
        self.threshold = threshold
        self.form = form

    def fit(self, X, y=None, pairs: Mapping | None = None):
        """Compute each feature's ICC in every repeat set and choose the features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features; only their number and names are used (the ICC comes from
            ``pairs``), so that the step knows what it selects from.
        y : ignored
        pairs : mapping of str to sequence of array-like
            ``{name: (ref, rep)}``, each a 2-D array or DataFrame of shape
            ``(n_cases, n_features)``, rows paired by case; more than two measurements per
            set, ``(m1, m2, m3)``, give a k-measurement ICC. DataFrames are aligned to
            ``X``'s columns by name (extra columns ignored) when ``X`` is a DataFrame, and
            to each other's row index (case) when the measurements of a set are all
            DataFrames; arrays are taken positionally.

        Returns
        -------
        self : ICCFilter
            Fitted.

        Raises
        ------
        ValueError
            If ``pairs`` is missing or empty, malformed, or if no feature reaches
            ``threshold`` in every set (a model with no features is a configuration
            problem: the message names the best ICC seen).
        """
        X = validate_data(self, X, dtype=np.float64)
        _check_fraction("threshold", self.threshold)
        if self.form not in ICC_FORMS:
            raise ValueError(f"form must be one of {ICC_FORMS}, got {self.form!r}")
        if not pairs:
            raise ValueError(
                "ICCFilter needs repeat measurements to compute ICCs: pass "
                "pairs={'inter': (reader1_rows, reader2_rows), 'intra': (reader1_rows, "
                "repeat_rows)} to fit (in a Pipeline: fit(X, y, <step>__pairs=pairs)). "
                "Without repeats, leave the ICC step out of the pipeline."
            )
        if not isinstance(pairs, Mapping):
            raise ValueError(f"pairs must be a mapping name -> (ref, rep); got {type(pairs)}")

        names = _feature_names(self)
        icc_by_set = {}
        for set_name, measurements in pairs.items():
            ratings = self._ratings(str(set_name), measurements)
            icc_by_set[str(set_name)] = _icc_from_ratings(ratings, self.form)
        self.icc_ = pd.DataFrame(icc_by_set, index=pd.Index(names, name="feature"))
        values = self.icc_.to_numpy()
        self.support_ = np.all(values >= self.threshold, axis=1)  # NaN compares False
        if not self.support_.any():
            worst = np.where(np.isnan(values), -np.inf, values).min(axis=1)
            best = int(np.argmax(worst))
            detail = (
                "every feature is constant in some set"
                if not np.isfinite(worst[best])
                else f"the best feature, {names[best]!r}, reaches {worst[best]:.3f} in every set"
            )
            raise ValueError(
                f"no feature reaches {self.form} >= {self.threshold} in all pair sets "
                f"{list(icc_by_set)}; {detail}. Check that the repeats are paired by case "
                "and measure the same features, or lower the threshold."
            )
        return self

    def _ratings(self, set_name: str, measurements) -> np.ndarray:
        """Stack one repeat set into a finite (n_cases, k, n_features_in_) array."""
        if isinstance(measurements, str | bytes) or not isinstance(measurements, Sequence):
            raise ValueError(
                f"pairs[{set_name!r}] must be a tuple (ref, rep) of 2-D arrays; "
                f"got {type(measurements).__name__}"
            )
        if len(measurements) < 2:
            raise ValueError(f"pairs[{set_name!r}] needs at least two measurements")
        names = getattr(self, "feature_names_in_", None)
        frames = []
        for i, m in enumerate(measurements):
            if isinstance(m, pd.DataFrame) and names is not None:
                missing = [c for c in names if c not in m.columns]
                if missing:
                    raise ValueError(
                        f"pairs[{set_name!r}][{i}] lacks {len(missing)} of X's columns, "
                        f"e.g. {missing[:5]}"
                    )
                m = m.loc[:, list(names)]
            frames.append(m)
        if all(isinstance(m, pd.DataFrame) for m in frames):
            index = frames[0].index
            for i, m in enumerate(frames[1:], start=1):
                if m.index.equals(index):
                    continue
                if not (index.is_unique and m.index.is_unique and set(m.index) == set(index)):
                    raise ValueError(
                        f"pairs[{set_name!r}]: rows are paired by case, but measurement {i}'s "
                        "index holds other cases than measurement 0's; align them, or pass "
                        "numpy arrays to pair rows by position"
                    )
                frames[i] = m.loc[index]
        arrays = []
        for i, m in enumerate(frames):
            a = check_array(m, dtype=np.float64, ensure_min_samples=2, input_name="pairs")
            if a.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"pairs[{set_name!r}][{i}] has {a.shape[1]} features; X has "
                    f"{self.n_features_in_}"
                )
            if arrays and a.shape[0] != arrays[0].shape[0]:
                raise ValueError(
                    f"pairs[{set_name!r}]: measurements have {arrays[0].shape[0]} and "
                    f"{a.shape[0]} rows; rows must be paired by case"
                )
            arrays.append(a)
        return np.stack(arrays, axis=1)

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


# --------------------------------------------------------------------------------------
# Pearson redundancy filter
# --------------------------------------------------------------------------------------


def _univariate_auc(X: np.ndarray, y01: np.ndarray) -> np.ndarray:
    """Direction-free AUC, max(AUC, 1 - AUC), of every column (Mann-Whitney, mid-ranks)."""
    ranks = rankdata(X, axis=0)
    pos = y01 == 1
    n1 = int(pos.sum())
    n0 = y01.size - n1
    auc = (ranks[pos].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.maximum(auc, 1.0 - auc)


class PearsonFilter(SelectorMixin, BaseEstimator):
    """Drop the weaker feature of every highly correlated pair.

    Features are visited in order of decreasing univariate training AUC (direction-free,
    ``max(AUC, 1 - AUC)``; ties keep column order); a feature is kept when its absolute
    Pearson correlation with every feature kept before it is ``<= threshold``. So of two
    features with ``|r| > threshold`` the one that discriminates better survives, and a
    feature is only dropped for a feature that is itself kept.

    Parameters
    ----------
    threshold : float, default=0.9
        Largest absolute Pearson correlation tolerated between two kept features.

    Attributes
    ----------
    auc_ : pandas.Series of shape (n_features_in_,)
        Direction-free univariate AUC of each feature on the training data.
    support_ : ndarray of shape (n_features_in_,), dtype bool
        Which features are kept.
    dropped_ : dict of str to str
        Each dropped feature -> the kept feature it correlates with most strongly.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` in :meth:`fit`, when it is a DataFrame with string columns.

    Notes
    -----
    Constant features have no correlation with anything (treated as ``r = 0``) and AUC
    0.5; they are kept here and left to the LASSO. The greedy pass costs one matrix-vector
    product per feature against the kept ones, so it needs no ``p x p`` correlation matrix
    in memory. ``y`` must be binary (the outcome is N0 vs N>=1); as
    :func:`~sklearn.utils.estimator_checks.check_estimator` feeds 3-class targets, the
    test suite runs it on a subclass that binarises ``y``.
    """

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X, y):
        """Rank features by AUC and drop those redundant with a better one.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features.
        y : array-like of shape (n_samples,)
            Binary outcome.

        Returns
        -------
        self : PearsonFilter
            Fitted.
        """
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        _check_fraction("threshold", self.threshold)
        y01 = _binary_target(y)
        names = _feature_names(self)
        auc = _univariate_auc(X, y01)

        sd = X.std(axis=0)
        z = np.divide(X - X.mean(axis=0), sd, out=np.zeros_like(X), where=sd > 0)
        n, p = X.shape
        kept_z = np.empty((n, p))
        kept: list[int] = []
        dropped: dict[str, str] = {}
        for j in np.argsort(-auc, kind="stable"):
            if kept:
                r = np.abs(kept_z[:, : len(kept)].T @ z[:, j]) / n
                i = int(np.argmax(r))
                if min(r[i], 1.0) > self.threshold:
                    dropped[str(names[j])] = str(names[kept[i]])
                    continue
            kept_z[:, len(kept)] = z[:, j]
            kept.append(int(j))

        self.support_ = np.zeros(p, dtype=bool)
        self.support_[kept] = True
        self.auc_ = pd.Series(auc, index=pd.Index(names, name="feature"), name="auc")
        self.dropped_ = dropped
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


# --------------------------------------------------------------------------------------
# LASSO
# --------------------------------------------------------------------------------------

_SCORINGS = ("log_loss", "roc_auc")
_RULES = ("1se", "min")


def _score(scoring: str, logit: np.ndarray, y01: np.ndarray) -> float:
    """Held-out score from the linear predictor, without sklearn's per-call validation.

    ``log_loss`` is the mean of ``log(1 + exp(logit)) - y logit`` (exact, no clipping);
    ``roc_auc`` the Mann-Whitney statistic with mid-ranks for ties, as ``roc_auc_score``.
    """
    if scoring == "log_loss":
        return float(np.mean(np.logaddexp(0.0, logit) - y01 * logit))
    pos = y01 == 1
    n1 = int(pos.sum())
    if n1 in (0, y01.size):
        raise ValueError("a CV test fold holds one class only, so its AUC is undefined")
    ranks = rankdata(logit)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * (y01.size - n1)))


def _l1_logistic(C: float, max_iter: int, tol: float, random_state, warm_start: bool = False):
    """L1 logistic regression, across sklearn versions.

    liblinear's coordinate descent is one to two orders of magnitude faster than saga on
    radiomics-shaped data (a few hundred cases, hundreds of correlated features), which
    matters with 10 folds x 50 penalties. liblinear penalises the intercept like a weight;
    a large ``intercept_scaling`` makes that penalty negligible. ``warm_start`` is accepted
    for the caller's convenience and ignored by liblinear.
    """
    kwargs = dict(
        C=C,
        solver="liblinear",
        intercept_scaling=100.0,
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
    )
    # scikit-learn 1.8 deprecated penalty= in favour of l1_ratio=.
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        kwargs["l1_ratio"] = 1.0
    else:  # pragma: no cover - scikit-learn < 1.8
        kwargs["penalty"] = "l1"
    return LogisticRegression(**kwargs)


class LassoSelector(SelectorMixin, BaseEstimator):
    """Keep the nonzero coefficients of a cross-validated L1 logistic regression.

    The penalty is chosen on the training data by stratified k-fold cross-validation over a
    grid of inverse penalties ``C`` (larger ``C``, weaker penalty, more features). With
    ``rule="1se"`` the chosen ``C`` is the smallest (strongest penalty) whose mean CV score
    is within one standard error of the best, the sparser model the data cannot tell apart
    from the best one; with ``rule="min"`` it is the best. The model is then refit on all
    training data at that ``C``, and the features with nonzero coefficients are selected.

    The input should be standardised upstream (e.g. :class:`~sklearn.preprocessing.
    StandardScaler` earlier in the pipeline): an L1 penalty on unscaled features penalises
    them by their units. It is not standardised here so that the pipeline shows every step.

    Parameters
    ----------
    cv : int or cross-validation splitter, default=10
        Number of folds of :class:`~sklearn.model_selection.StratifiedKFold` (shuffled with
        ``random_state``), or a splitter with a ``split(X, y)`` method.
    rule : {"1se", "min"}, default="1se"
        How ``C`` is chosen from the CV curve (see above).
    Cs : int or array-like of float, default=50
        An int gives that many values, log-spaced from ``C0 = 1 / max_j |x_j^T (y - ȳ)|``,
        the largest penalty at which every coefficient is zero, up to ``1e4 * C0`` (``1e2 *
        C0`` when there are fewer cases than features), the sequence of Friedman et al.
        (2010). An array gives the grid itself.
    scoring : {"log_loss", "roc_auc"}, default="log_loss"
        CV score: mean held-out log loss (half the binomial deviance per case; lower is
        better), or ROC AUC (higher is better).
    random_state : int, RandomState instance or None, default=0
        Seeds the fold shuffle and liblinear's coordinate order.
    max_iter : int, default=5000
        Maximum liblinear iterations per fit.
    tol : float, default=1e-4
        liblinear stopping tolerance.

    Attributes
    ----------
    C_ : float
        The chosen inverse penalty.
    C_best_ : float
        The ``C`` with the best mean CV score (``C_`` under ``rule="min"``).
    cv_scores_ : pandas.DataFrame
        Indexed by ``C`` (ascending); columns ``mean`` and ``se`` (standard error over folds,
        ``std(ddof=1) / sqrt(n_folds)``) of the CV score, and ``n_nonzero``, the number of
        nonzero coefficients when fitting all training data at that ``C``.
    coef_ : pandas.Series
        Coefficient of each selected feature in the refit model (on the standardised scale).
    intercept_ : float
        Intercept of the refit model.
    n_iter_ : int
        liblinear iterations of the refit model.
    fallback_ : bool
        True when the rule's ``C`` selected no feature and the smallest ``C`` selecting at
        least one was used instead: a model without features cannot score a case, so an
        empty selection would only fail later and less clearly.
    support_ : ndarray of shape (n_features_in_,), dtype bool
        Which features are selected.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` in :meth:`fit`, when it is a DataFrame with string columns.

    Notes
    -----
    The CV loop runs explicitly over the grid, so both rules are exact on the grid; the
    full-data fits are one per ``C``, and the selected model is the one at ``C_``. The
    solver is liblinear (coordinate descent; much faster than saga at these shapes); it
    penalises the intercept like a weight, made negligible by ``intercept_scaling=100``.
    scikit-learn's objective is ``||w||_1 + C sum_i
    logloss_i``, i.e. ``C = 1 / (n lambda)`` in glmnet's notation. ``y`` must be binary;
    like :class:`PearsonFilter`, the class passes ``check_estimator`` through a subclass
    that binarises its 3-class targets.

    References
    ----------
    .. [1] Tibshirani R. Regression shrinkage and selection via the lasso. J R Stat Soc
       Series B. 1996;58(1):267-288.
    .. [2] Friedman J, Hastie T, Tibshirani R. Regularization paths for generalized linear
       models via coordinate descent. J Stat Softw. 2010;33(1):1-22.
    .. [3] Hastie T, Tibshirani R, Friedman J. The Elements of Statistical Learning, 2nd ed.
       Springer; 2009. Section 7.10 (the one-standard-error rule).
    """

    def __init__(
        self,
        cv=10,
        rule: str = "1se",
        Cs=50,
        scoring: str = "log_loss",
        random_state=0,
        max_iter: int = 5000,
        tol: float = 1e-4,
    ):
        self.cv = cv
        self.rule = rule
        self.Cs = Cs
        self.scoring = scoring
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y):
        """Cross-validate the penalty, refit at the chosen one, select nonzero coefficients.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Standardised training features.
        y : array-like of shape (n_samples,)
            Binary outcome.

        Returns
        -------
        self : LassoSelector
            Fitted.
        """
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        if self.rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}; got {self.rule!r}")
        if self.scoring not in _SCORINGS:
            raise ValueError(f"scoring must be one of {_SCORINGS}; got {self.scoring!r}")
        y01 = _binary_target(y)
        grid = self._grid(X, y01)
        splitter = self._splitter()

        fold_scores = []
        for train, test in splitter.split(X, y01):
            model = _l1_logistic(grid[0], self.max_iter, self.tol, self.random_state, True)
            scores = np.empty(grid.size)
            for i, C in enumerate(grid):
                model.set_params(C=C).fit(X[train], y01[train])
                logit = X[test] @ model.coef_[0] + model.intercept_[0]
                scores[i] = _score(self.scoring, logit, y01[test])
            fold_scores.append(scores)
        fold_scores = np.asarray(fold_scores)
        n_folds = fold_scores.shape[0]
        if n_folds < 2:
            raise ValueError("cv must produce at least 2 folds to estimate a standard error")
        mean = fold_scores.mean(axis=0)
        se = fold_scores.std(axis=0, ddof=1) / np.sqrt(n_folds)

        # As a loss, lower is better; the grid ascends in C, so argmin's first hit and the
        # first index under the 1-SE bound are the strongest penalties that qualify.
        loss = mean if self.scoring == "log_loss" else -mean
        best = int(np.argmin(loss))
        chosen = best if self.rule == "min" else int(np.argmax(loss <= loss[best] + se[best]))

        coefs = np.empty((grid.size, X.shape[1]))
        intercepts = np.empty(grid.size)
        n_iter = np.empty(grid.size, dtype=np.int64)
        for i, C in enumerate(grid):
            model = _l1_logistic(C, self.max_iter, self.tol, self.random_state).fit(X, y01)
            coefs[i], intercepts[i] = model.coef_[0], model.intercept_[0]
            n_iter[i] = model.n_iter_[0]
        n_nonzero = (coefs != 0).sum(axis=1)

        self.fallback_ = bool(n_nonzero[chosen] == 0)
        if self.fallback_:
            nonempty = np.flatnonzero(n_nonzero > 0)
            if nonempty.size == 0:
                raise ValueError(
                    f"no C in the grid [{grid[0]:.3g}, {grid[-1]:.3g}] selects any feature"
                )
            chosen = int(nonempty[0])

        names = _feature_names(self)
        self.cv_scores_ = pd.DataFrame(
            {"mean": mean, "se": se, "n_nonzero": n_nonzero}, index=pd.Index(grid, name="C")
        )
        self.C_ = float(grid[chosen])
        self.C_best_ = float(grid[best])
        self.support_ = coefs[chosen] != 0
        self.coef_ = pd.Series(
            coefs[chosen][self.support_],
            index=pd.Index(names[self.support_], name="feature"),
            name="coef",
        )
        self.intercept_ = float(intercepts[chosen])
        self.n_iter_ = int(n_iter[chosen])
        return self

    def _grid(self, X: np.ndarray, y01: np.ndarray) -> np.ndarray:
        if isinstance(self.Cs, numbers.Integral) and not isinstance(self.Cs, bool):
            if self.Cs < 2:
                raise ValueError(f"Cs must be >= 2 when an int; got {self.Cs}")
            gradient = np.abs(X.T @ (y01 - y01.mean())).max()
            if gradient == 0:
                raise ValueError("no feature varies with y; nothing for the LASSO to select")
            c0 = 1.0 / gradient
            span = 4.0 if X.shape[0] > X.shape[1] else 2.0
            # c0 * 10**0 is c0 exactly: 10**log10(c0) can land just above it, where the
            # model is no longer empty.
            return c0 * np.logspace(0.0, span, int(self.Cs))
        grid = np.sort(np.asarray(self.Cs, dtype=np.float64).ravel())
        if grid.size < 1 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError("Cs must be an int or an array of positive finite numbers")
        return grid

    def _splitter(self):
        if isinstance(self.cv, numbers.Integral) and not isinstance(self.cv, bool):
            if self.cv < 2:
                raise ValueError(f"cv must be >= 2; got {self.cv}")
            return StratifiedKFold(int(self.cv), shuffle=True, random_state=self.random_state)
        if hasattr(self.cv, "split"):
            return self.cv
        raise ValueError(f"cv must be an int or a splitter with split(X, y); got {self.cv!r}")

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
