"""Sparsity stage of feature selection: the features of a cross-validated L1 logistic model.

:class:`LassoSelector` keeps the nonzero coefficients of an L1-penalised logistic
regression whose penalty is chosen by stratified cross-validation (1-SE or min rule),
grouped by patient when ``fit`` is given the cases' ``groups``.

Reads a standardised feature matrix and the binary outcome; writes nothing. The CV folds
are the slow part of model fitting, so ``fit`` can report each finished fold to a
``progress`` callback.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from tasks.models.selection._base import _binary_target, _feature_names

__all__ = ["LassoSelector"]

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


def _l1_logistic(C: float, max_iter: int, tol: float, random_state: int | None):
    """L1 logistic regression, across sklearn versions.

    liblinear's coordinate descent is one to two orders of magnitude faster than saga on
    radiomics-shaped data (a few hundred cases, hundreds of correlated features), which
    matters with 10 folds x 50 penalties. liblinear penalises the intercept like a weight;
    a large ``intercept_scaling`` makes that penalty negligible.
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
        Number of folds of :class:`~sklearn.model_selection.StratifiedKFold`, or of
        :class:`~sklearn.model_selection.StratifiedGroupKFold` when ``fit`` is given
        ``groups`` (both shuffled with ``random_state``), or a splitter with a
        ``split(X, y, groups)`` method.
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
        empty selection would only fail later and less clearly. Callers report it.
    C_rule_ : float
        The ``C`` the rule chose, before any fallback (``C_`` unless ``fallback_``).
    grouped_ : bool
        Whether the CV folds were grouped (``groups`` given to ``fit``).
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

    def fit(self, X, y, groups=None, progress: Callable[[int, int], None] | None = None):
        """Cross-validate the penalty, refit at the chosen one, select nonzero coefficients.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Standardised training features.
        y : array-like of shape (n_samples,)
            Binary outcome.
        groups : array-like of shape (n_samples,), optional
            The patient of each case: no patient has cases in both the fitting and the
            held-out part of a fold (a patient's lesions are not independent, and the
            held-out score would flatter the weaker penalties). In a pipeline pass it
            step-prefixed, ``pipe.fit(X, y, lasso__groups=patients)``.
        progress : callable, optional
            Called as ``progress(fold, n_folds)`` after each CV fold has been fitted over
            the whole grid (``fold`` from 1), so that a caller can report how far the
            slowest part of the fit has come. In a pipeline pass it step-prefixed,
            ``pipe.fit(X, y, lasso__progress=report)``. It sees no data and changes nothing
            fitted.

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

        # The folds are listed first only so that progress can name their number.
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != X.shape[0]:
                raise ValueError(f"groups has {groups.shape[0]} values for {X.shape[0]} cases")
        splitter = self._splitter(grouped=groups is not None)
        folds = list(splitter.split(X, y01, groups))
        fold_scores = []
        for fold, (train, test) in enumerate(folds, start=1):
            model = _l1_logistic(grid[0], self.max_iter, self.tol, self.random_state)
            scores = np.empty(grid.size)
            for i, C in enumerate(grid):
                model.set_params(C=C).fit(X[train], y01[train])
                logit = X[test] @ model.coef_[0] + model.intercept_[0]
                scores[i] = _score(self.scoring, logit, y01[test])
            fold_scores.append(scores)
            if progress is not None:
                progress(fold, len(folds))
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

        self.C_rule_ = float(grid[chosen])
        self.grouped_ = groups is not None
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

    def _splitter(self, grouped: bool = False):
        if isinstance(self.cv, numbers.Integral) and not isinstance(self.cv, bool):
            if self.cv < 2:
                raise ValueError(f"cv must be >= 2; got {self.cv}")
            kind = StratifiedGroupKFold if grouped else StratifiedKFold
            return kind(int(self.cv), shuffle=True, random_state=self.random_state)
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
