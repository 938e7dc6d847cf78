"""Modeling input step: the feature matrices the three models are fitted and scored on.

Reads the current ``cohort`` with its ``radiomics`` (current params) and ``embeddings``
(one CNN model version) rows, pinned to table versions, and builds one matrix per mask
variant (index ``case_id``): handcrafted columns ``hf:<region>:<feature>``, deep
columns ``df:<i>`` (the fused embedding) and the case's scanner site ``meta:site`` (for
ComBat; the models' family steps read only ``hf:``/``df:`` columns). :class:`FeatureData`
holds them with the cases' label, split and site, and gives the ICC filter its repeat sets
(real delineations first, perturbed reader-1 masks as the fallback, see
:meth:`FeatureData.pairs`). Writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.schema import GENERATED_VARIANTS, MASK_VARIANTS, PERTURBED
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, EMBEDDINGS, FEATURE_TABLES, RADIOMICS, current_cohort
from tasks.features.plan import variant_keys
from tasks.features.radiomics import META_COLUMNS
from tasks.models.harmonise import SITE_COLUMN

# Repeat sets for the ICC filter: (name, reference variant, repeat variant). The sets of a
# generated repeat variant (a perturbed mask) are a fallback: FeatureData.pairs uses them
# only when no real delineation set is available.
REPEAT_SETS = (
    ("inter", "reader1", "reader2"),
    ("intra", "reader1", "repeat"),
    (PERTURBED, "reader1", PERTURBED),
)
# Training cases a repeat set needs to be used. With 3, a feature of true ICC 0.60 passed
# the 0.75 cut 31% of the time; with 30, 6.5%: below 20 the filter is mostly noise.
MIN_REPEATS = 20
_NOT_FEATURES = {*META_COLUMNS, "run_id", "code_version", "extracted_at"}


@dataclass
class FeatureData:
    """Matrices by mask variant (index case_id), labels and the cases' split and site."""

    X: dict[str, pd.DataFrame]  # mask variant -> matrix
    cases: pd.DataFrame  # case_id (index), label, split, site, exam_date, patient_key
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def reader1(self) -> pd.DataFrame:
        return self.X["reader1"]

    def repeat_counts(self, case_ids: pd.Index | None = None) -> dict[str, int]:
        """Cases of every repeat set among ``case_ids``, used or not (the report's n)."""
        out = {}
        for name, ref, rep in REPEAT_SETS:
            if ref in self.X and rep in self.X:
                common = self.X[ref].index.intersection(self.X[rep].index)
                out[name] = len(common if case_ids is None else common.intersection(case_ids))
        return out

    def pairs(
        self, case_ids: pd.Index | None = None, min_repeats: int = MIN_REPEATS
    ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """ICC repeat sets, restricted to ``case_ids`` (the training cases when fitting).

        The real delineation sets (``inter``: reader 2, ``intra``: reader 1's repeat) that
        have at least ``min_repeats`` of the cases each (a smaller set is left out, and
        :meth:`repeat_counts` lets the report say so); only when none has, the
        ``perturbed`` set (reader 1's mask eroded/dilated with contour noise) when it has
        that many. A second delineation measures how readers really differ, a perturbation
        only models it, so the two are never mixed and the real one always wins.
        """
        real: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        generated: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        for name, ref, rep in REPEAT_SETS:
            if ref not in self.X or rep not in self.X:
                continue
            common = self.X[ref].index.intersection(self.X[rep].index)
            if case_ids is not None:
                common = common.intersection(case_ids)
            if len(common) >= min_repeats:
                out = generated if rep in GENERATED_VARIANTS else real
                out[name] = (self.X[ref].loc[common], self.X[rep].loc[common])
        return real or generated


def icc_source(pairs: dict[str, Any]) -> str:
    """What repeat sets ``pairs`` come from: ``"delineations"``, ``"perturbed masks"`` or
    ``"none"``."""
    if not pairs:
        return "none"
    generated = {name for name, _, rep in REPEAT_SETS if rep in GENERATED_VARIANTS}
    return "perturbed masks" if set(pairs) <= generated else "delineations"


def patient_groups(data: FeatureData, index: pd.Index) -> np.ndarray:
    """The patient of each case in ``index`` (``patient_key``; a case is its own patient
    when the cases carry no key), so that cross-validation keeps a patient in one fold."""
    if "patient_key" in data.cases:
        keys = data.cases.loc[index, "patient_key"]
        keys = keys.fillna(pd.Series(index, index=index)).astype(str)
    else:
        keys = pd.Series(index.astype(str), index=index)
    # Numbered by first appearance: folds must not depend on the secret pseudonym key's values.
    return pd.factorize(keys)[0]


def training_rows(data: FeatureData) -> tuple[pd.DataFrame, pd.Series]:
    """Reader 1's matrix and the 0/1 labels of the labelled training cases: all a fit sees."""
    cases = data.cases
    keep = (cases["split"] == "training") & cases["label"].notna()
    index = cases.index[keep]
    return data.reader1.loc[index], cases.loc[index, "label"].astype(int)


def _current_keys(cohort: pd.DataFrame) -> pd.DataFrame:
    """(case_id, mask_variant, image_sha256, mask_sha256) of every mask variant of the
    current cohort rows, the perturbed ones included where a case gets one (the derived
    mask id, as :func:`tasks.features.plan.variant_keys` plans them)."""
    records = cohort.astype(object).where(cohort.notna(), None).to_dict("records")
    keys = [key for case in records for key in variant_keys(case, perturb=True)]
    return pd.DataFrame(keys, columns=["case_id", "mask_variant", "image_sha256", "mask_sha256"])


def _matching(rows: pd.DataFrame, cohort: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Rows whose image and mask hashes are the current cohort version's."""
    current = _current_keys(cohort)
    current = current[current["mask_variant"] == variant]
    rows = rows[rows["mask_variant"] == variant]
    return rows.merge(
        current, on=["case_id", "mask_variant", "image_sha256", "mask_sha256"], how="inner"
    )


def radiomics_matrix(radiomics: pd.DataFrame, cohort: pd.DataFrame, variant: str) -> pd.DataFrame:
    """One mask variant's handcrafted features, a row per case, ``hf:<region>:<feature>``."""
    rows = _matching(radiomics, cohort, variant)
    if rows.empty:
        return pd.DataFrame()
    features = [c for c in rows.columns if c not in _NOT_FEATURES and rows[c].dtype.kind == "f"]
    rows = rows.sort_values("extracted_at").drop_duplicates(["case_id", "region"], keep="last")
    wide = rows.pivot(index="case_id", columns="region", values=features)
    wide.columns = [f"hf:{region}:{feature}" for feature, region in wide.columns]
    return wide.sort_index(axis=1).astype("float64")


def embedding_matrix(embeddings: pd.DataFrame, cohort: pd.DataFrame, variant: str) -> pd.DataFrame:
    """One mask variant's fused CNN embeddings, a row per case, ``df:<i>``."""
    rows = _matching(embeddings, cohort, variant)
    if rows.empty:
        return pd.DataFrame()
    rows = rows.sort_values("embedded_at").drop_duplicates("case_id", keep="last")
    rows = rows.sort_values("case_id")  # one order whatever the embedding order was
    vectors = np.stack([np.asarray(v, dtype=np.float64) for v in rows["fused"]])
    return pd.DataFrame(
        vectors,
        index=pd.Index(rows["case_id"], name="case_id"),
        columns=[f"df:{i}" for i in range(vectors.shape[1])],
    )


def _crossfit_map(store: FeatureStore, crossfit: Mapping[str, Any] | None) -> dict | None:
    """The case -> fold model map of a cross-fitted CNN: ``crossfit`` is the map itself
    (with ``cases``) or the CNN meta's summary naming it; None (or ``in-sample``): none."""
    if not crossfit or crossfit.get("mode") != "crossfit":
        return None
    if "cases" in crossfit:
        return dict(crossfit)
    from tasks.features.cnn.crossfit import load_crossfit  # torch only for cross-fitted CNNs

    return load_crossfit(store, crossfit)


# The deep feature of cross-fitted runs. Independently fine-tuned CNNs do not share an
# embedding space (measured on the demo: per-dimension correlation -0.03 between a fold
# CNN's and the final CNN's embeddings of the same cases; a model fitted on fold-model
# embeddings scored the final model's at external AUC 0.31), but they share their output
# scale, the log-odds of the label: so with cross-fitting the deep feature is each row's
# CNN logit (the model's head on its fused embedding), out-of-fold for training rows.
DEEP_LOGIT = "df:cnn_logit"
Head = tuple[np.ndarray, float]


def _logits(vectors: pd.DataFrame, head: Head) -> pd.DataFrame:
    weight, bias = head
    # Row by row, not ``vectors @ weight``: BLAS gemv rounds a row differently by the
    # matrix's shape and the row's place in it (118 of 130 rows differed alone vs in the
    # matrix), so a case's logit would depend on the cases embedded with it. numpy's sum
    # along a C-ordered row depends on that row only (a DataFrame's array is column-major).
    rows = np.ascontiguousarray(vectors.to_numpy(np.float64))
    logits = (rows * np.asarray(weight, np.float64)).sum(axis=1)
    return pd.DataFrame({DEEP_LOGIT: logits + bias}, index=vectors.index)


def deep_matrix(
    embeddings: pd.DataFrame,
    cohort: pd.DataFrame,
    variant: str,
    model_version: str,
    mapping: Mapping[str, Any] | None = None,
    heads: Mapping[str, Head] | None = None,
) -> pd.DataFrame:
    """One mask variant's deep features. Without ``mapping``: the fused embeddings of
    ``model_version`` (``df:<i>``). With it (cross-fitting): one column, the CNN logit
    (:data:`DEEP_LOGIT`; ``heads``: each model's output layer), from the fold model that
    held it out for the map's cases (never the final model's), from ``model_version`` for
    every other case."""
    final = embedding_matrix(
        embeddings[embeddings["model_version"] == model_version], cohort, variant
    )
    if mapping is None:
        return final
    heads = heads or {}
    assigned = pd.DataFrame(list(mapping["cases"].items()), columns=["case_id", "model_version"])
    others = final.loc[final.index.difference(pd.Index(assigned["case_id"]), sort=False)]
    parts = [] if others.empty else [_logits(others, heads[model_version])]
    for fold_model, cases in assigned.groupby("model_version"):
        folded = embedding_matrix(
            embeddings.merge(cases, on=["case_id", "model_version"]), cohort, variant
        )
        if not folded.empty:
            parts.append(_logits(folded, heads[fold_model]))
    return pd.concat(parts) if parts else pd.DataFrame()


def _check_folded(
    deep: pd.DataFrame, cohort: pd.DataFrame, mapping: Mapping[str, Any], model_version: str
) -> None:
    """Every current labelled training case of the map has its fold model's reader-1
    embedding: falling back to the final model's would leak its training into the fits."""
    if mapping["final_model"] != model_version:
        raise ValueError(
            f"cross-fitting map of {mapping['final_model']} given for CNN {model_version}"
        )
    training = cohort[(cohort["split"] == "training") & cohort["label"].notna()]
    training = set(training["case_id"].astype(str))
    missing = [c for c in mapping["cases"] if c in training and c not in deep.index]
    if missing:
        named = ", ".join(f"{c} (fold model {mapping['cases'][c]})" for c in missing[:5])
        raise ValueError(
            f"{len(missing)} training case(s) lack the reader-1 embedding of the fold model "
            f"that held them out: {named}; embed them with it (retrain) first"
        )


def deep_lineage(crossfit: Mapping[str, Any] | None, mapping: dict | None) -> dict[str, Any]:
    """Which CNNs gave the training rows' deep features (the report says which)."""
    if mapping is None:
        return {"mode": "in-sample", "folds": None, "fold_models": [], "feature": "embedding"}
    out = {
        "mode": "crossfit",
        "folds": mapping["folds"],
        "fold_models": mapping["fold_models"],
        "feature": "logit",
    }
    if crossfit and "mapping" in crossfit:
        out["mapping"] = crossfit["mapping"]
    return out


def load_features(
    store: FeatureStore,
    params_hash: str,
    model_version: str,
    versions: dict[str, int | None] | None = None,
    crossfit: Mapping[str, Any] | None = None,
    heads: Mapping[str, Head] | None = None,
) -> FeatureData:
    """Matrices for every current case that has both feature families, pinned to table
    ``versions`` (default: the latest) so a model records exactly what it read.

    ``crossfit``: the CNN meta's ``crossfit`` summary (or the map itself); in cross-fit mode
    the deep feature is the CNN logit (:data:`DEEP_LOGIT`, see :func:`deep_matrix`), of the
    fold model that held each of the map's (training) cases out, of ``model_version`` for
    every other case. None or ``in-sample``: the fused embeddings of ``model_version``.
    ``lineage["deep_features"]`` says which. ``heads``: the models' output layers (default:
    read from their checkpoints in the store).

    Raises
    ------
    ValueError
        No case has both families, or a training case of the map lacks its fold embedding.
    """
    versions = versions or store.versions(FEATURE_TABLES)
    mapping = _crossfit_map(store, crossfit)
    cohort = current_cohort(store.read(COHORT, version=versions["cohort"]))
    radiomics = store.read(RADIOMICS, version=versions["radiomics"])
    radiomics = radiomics[radiomics["params_hash"] == params_hash]
    embeddings = store.read(EMBEDDINGS, version=versions["embeddings"])
    models = {model_version, *(mapping["fold_models"] if mapping else ())}
    embeddings = embeddings[embeddings["model_version"].isin(models)]
    if mapping is not None and heads is None:
        from tasks.features.cnn.checkpoints import model_head  # torch: cross-fitted CNNs only

        heads = {version: model_head(store, version) for version in sorted(models)}
    X: dict[str, pd.DataFrame] = {}
    sites = cohort.set_index("case_id")["site"].astype("string").fillna("").astype(str)
    for variant in (*MASK_VARIANTS, *GENERATED_VARIANTS):
        hf = radiomics_matrix(radiomics, cohort, variant)
        df = deep_matrix(embeddings, cohort, variant, model_version, mapping, heads)
        if mapping is not None and variant == "reader1":
            _check_folded(df, cohort, mapping, model_version)
        if hf.empty or df.empty:
            continue
        X[variant] = hf.join(df, how="inner")
        # Each row's scanner site, for ComBat (the family steps read hf:/df: columns only).
        X[variant][SITE_COLUMN] = sites.reindex(X[variant].index).to_numpy()
    if "reader1" not in X:
        raise ValueError(
            f"no case has both radiomics (params {params_hash[:12]}) and embeddings "
            f"({model_version}) in {store.root}: run the cohort flow first"
        )
    cases = cohort.set_index("case_id").loc[
        X["reader1"].index, ["label", "split", "site", "exam_date", "patient_key"]
    ]
    lineage = {
        "table_versions": versions,
        "params_hash": params_hash,
        "cnn_model_version": model_version,
        "cases_with_features": int(len(cases)),
        "cases_in_cohort": int(len(cohort)),
        "deep_features": deep_lineage(crossfit, mapping),
    }
    data = FeatureData(X=X, cases=cases, lineage=lineage)
    # The repeats the ICC filter will use, as fit_models picks them (labelled training rows).
    data.lineage["icc_source"] = icc_source(data.pairs(training_rows(data)[0].index))
    return data


def training_cases(store: FeatureStore, cohort_version: int | None = None) -> list[dict]:
    """Current labelled training cases, as plain dicts (for the CNN fine-tune)."""
    cohort = current_cohort(store.read(COHORT, version=cohort_version))
    rows = cohort[(cohort["split"] == "training") & cohort["label"].notna()]
    return rows.astype(object).where(rows.notna(), None).to_dict("records")


# -- Prefect wrappers ------------------------------------------------------------------------
@task(name="load-features", cache_policy=NO_CACHE)
def load_features_task(
    store: FeatureStore,
    params_hash: str,
    model_version: str,
    versions: dict[str, int | None] | None = None,
    crossfit: dict[str, Any] | None = None,
) -> FeatureData:
    """:func:`load_features` as a task run of its own in the flow's graph."""
    return load_features(store, params_hash, model_version, versions, crossfit)


@task(name="training-cases", cache_policy=NO_CACHE)
def training_cases_task(store: FeatureStore, cohort_version: int | None = None) -> list[dict]:
    """:func:`training_cases` as a task run of its own in the flow's graph."""
    return training_cases(store, cohort_version)
