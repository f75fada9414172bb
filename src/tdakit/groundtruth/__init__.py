"""Ground truth: training recipes, the job executor and the retraining oracles.

>>> recipe = TrainingRecipe("mlp", model_kwargs={"hidden": (32,)}, epochs=20)
>>> loo = leave_one_out(recipe, (X, y), (Xq, yq), executor=Executor(cache_dir="gt-cache"))
>>> loo.scores                                   # [n_query, n_train], + = helpful
"""

from tdakit.groundtruth.ensembles import Ensemble, ensemble_seeds, seed_ensemble
from tdakit.groundtruth.executor import Job, JobFailure, Shared, content_key, run_jobs
from tdakit.groundtruth.further import FurtherResult, further_training
from tdakit.groundtruth.jobs import Executor
from tdakit.groundtruth.loo import LOOResult, leave_one_out
from tdakit.groundtruth.loop import TrainRun, epoch_batches
from tdakit.groundtruth.recipe import TrainingRecipe
from tdakit.groundtruth.subsets import SubsetResult, subset_masks, subset_retraining

__all__ = [
    "Ensemble",
    "Executor",
    "FurtherResult",
    "Job",
    "JobFailure",
    "LOOResult",
    "Shared",
    "SubsetResult",
    "TrainRun",
    "TrainingRecipe",
    "content_key",
    "ensemble_seeds",
    "epoch_batches",
    "further_training",
    "leave_one_out",
    "run_jobs",
    "seed_ensemble",
    "subset_masks",
    "subset_retraining",
]
