"""Evaluation metrics: every metric is a function of scores plus ground truth and returns a
:class:`MetricResult` with ``.value`` and a bootstrap ``.ci`` (see ``docs/metrics.md``).

>>> from tdakit import metrics
>>> r = metrics.lds(S, masks, losses)      # Spearman of sum_{i in S_m} S[q, i] with -loss
>>> metrics.compare(r, r_other)            # paired bootstrap CI + Wilcoxon p-value
"""

from tdakit.metrics.correlation import further_training_agreement, lds, loo_correlation
from tdakit.metrics.detection import (
    backdoor_detection,
    class_detection,
    detection_curve,
    mislabel_detection,
    mrr,
    recall_at_k,
    subclass_detection,
    topk_cardinality,
)
from tdakit.metrics.retraining import (
    coreset_selection,
    counterfactual_sensitivity,
    model_layers,
    model_randomisation,
    randomised_copy,
)
from tdakit.metrics.stats import (
    Comparison,
    MetricResult,
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_statistic,
    compare,
)

__all__ = [
    "Comparison",
    "MetricResult",
    "backdoor_detection",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_statistic",
    "class_detection",
    "compare",
    "coreset_selection",
    "counterfactual_sensitivity",
    "detection_curve",
    "further_training_agreement",
    "lds",
    "loo_correlation",
    "mislabel_detection",
    "model_layers",
    "model_randomisation",
    "mrr",
    "randomised_copy",
    "recall_at_k",
    "subclass_detection",
    "topk_cardinality",
]
