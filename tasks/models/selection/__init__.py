"""Feature selection step: reproducibility, redundancy and LASSO filters as sklearn transformers.

The selection of Yang et al., *Gland Surgery* 2025 (doi:10.21037/gs-2025-223), one estimator
per stage so that the whole chain sits in a :class:`sklearn.pipeline.Pipeline`, is refit
inside every cross-validation fold, and is logged like any other model:

- :func:`icc` computes the Shrout-Fleiss / McGraw-Wong intraclass correlations of every
  feature at once from repeated measurements (reader 1 vs reader 2, reader 1 vs its repeat);
- :class:`ICCFilter` keeps the features whose ICC reaches a threshold in every repeat set
  (both in :mod:`.icc`);
- :class:`PearsonFilter` drops the weaker feature (lower univariate AUC) of each highly
  correlated pair (:mod:`.pearson`);
- :class:`LassoSelector` keeps the nonzero coefficients of an L1-penalised logistic
  regression whose penalty is chosen by stratified cross-validation, 1-SE or min rule
  (:mod:`.lasso`).

PCA of the deep features is :class:`sklearn.decomposition.PCA` itself (``n_components=0.95``
keeps 95 % of the variance); it is not wrapped here.

Reads feature matrices (numpy arrays or pandas DataFrames, one row per case) and, for the
ICC stage, the repeat delineations' feature rows; writes nothing. Every estimator follows
the scikit-learn contract: ``__init__`` stores its arguments, ``fit`` validates, learns
attributes ending in ``_`` and returns ``self``; ``transform``, ``get_support`` and
``get_feature_names_out`` come from :class:`sklearn.feature_selection.SelectorMixin`, so
``set_output(transform="pandas")`` keeps column names.
"""

# After this line the package attribute ``icc`` is the function, which shadows its module
# .icc: reach the module's names with ``from tasks.models.selection.icc import ...``.
from tasks.models.selection.icc import ICC_FORMS, ICCFilter, icc
from tasks.models.selection.lasso import LassoSelector
from tasks.models.selection.pearson import PearsonFilter

__all__ = ["ICC_FORMS", "ICCFilter", "LassoSelector", "PearsonFilter", "icc"]
