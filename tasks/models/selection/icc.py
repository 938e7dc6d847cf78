"""Reproducibility stage of feature selection: the ICC and the filter built on it.

:func:`icc` computes the Shrout-Fleiss / McGraw-Wong intraclass correlations of every
feature at once from repeated measurements (reader 1 vs reader 2, reader 1 vs its repeat);
:class:`ICCFilter` keeps the features whose ICC reaches a threshold in every repeat set.

Reads a feature matrix (only its columns) and, as a ``fit`` parameter, the repeat
delineations' feature rows; writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from tasks.models.selection._base import _check_fraction, _feature_names

__all__ = ["ICC_FORMS", "ICCFilter", "icc"]

#: The ICC forms :func:`icc` computes: Shrout & Fleiss (1979) cases 1-3, single measurement
#: (``ICC1``, ``ICC2``, ``ICC3``) and mean of the k measurements (``ICC1k`` ...). In McGraw &
#: Wong's (1996) terms ICC2 is ICC(A,1) (two-way random, absolute agreement) and ICC3 is
#: ICC(C,1) (two-way mixed, consistency).
ICC_FORMS = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")


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
