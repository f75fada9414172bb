"""Ground truth: the retraining oracles (leave-one-out, LDS subsets, seed ensembles,
further training), run as independent jobs through :mod:`tdakit.execution`.

>>> recipe = tda.TrainingRecipe("mlp", model_kwargs={"hidden": (32,)}, epochs=20)
>>> loo = leave_one_out(recipe, (X, y), (Xq, yq), executor=tda.Executor(cache_dir="gt"))
>>> loo.scores                                   # [n_query, n_train], + = helpful
"""

from tdakit.groundtruth.ensembles import Ensemble, ensemble_seeds, seed_ensemble
from tdakit.groundtruth.further import FurtherResult, further_training
from tdakit.groundtruth.jobs import Measure
from tdakit.groundtruth.loo import LOOResult, leave_one_out
from tdakit.groundtruth.subsets import SubsetResult, subset_masks, subset_retraining

__all__ = [
    "Ensemble",
    "FurtherResult",
    "LOOResult",
    "Measure",
    "SubsetResult",
    "ensemble_seeds",
    "further_training",
    "leave_one_out",
    "seed_ensemble",
    "subset_masks",
    "subset_retraining",
]
