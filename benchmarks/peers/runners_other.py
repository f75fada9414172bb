"""traker (TRAK reference implementation, 0.3) and kronfluence (1.0) runners."""

from __future__ import annotations

import uuid

import torch
import torch.nn.functional as F
from common import Case  # type: ignore[import-not-found]
from torch.utils.data import TensorDataset


def run_traker(case: Case, method: str, proj_dim: int, damping: float, batch: int = 500, **kw):
    """TRAKer on CPU with its float32 BasicProjector (default 100-column blocks, regenerated
    from their seeds at every projection; a one-block projector fails after
    ``finalize_features`` frees the matrix).

    traker divides the projected gradients by sqrt(P) and its Gaussian matrix has unit
    entries (no 1/sqrt(k), unlike tdakit's and dattri's projections), so its Gram is
    k / P times tdakit's and ``lambda_reg`` = tdakit's damping * k / P. Scores
    ``[n_train, n_query]`` of the margin, positive = raises the query's margin (helpful):
    transposed to tdakit's layout.
    """
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    P = case.num_params
    projector = BasicProjector(
        grad_dim=P,
        proj_dim=proj_dim,
        seed=0,
        proj_type=ProjectionType.normal,
        device="cpu",
        dtype=torch.float32,
    )
    traker = TRAKer(
        model=case.model,
        task="image_classification",
        train_set_size=case.n_train,
        save_dir=str(case.workdir / f"trak-{uuid.uuid4().hex}"),
        load_from_save_dir=True,  # a fresh directory; False skips creating its files
        device="cpu",
        projector=projector,
        use_half_precision=False,
        lambda_reg=damping * proj_dim / P,
        logging_level=40,
    )
    state = case.model.state_dict()
    traker.load_checkpoint(state, model_id=0)
    for a in range(0, case.n_train, batch):
        traker.featurize(
            batch=[case.X[a : a + batch], case.y[a : a + batch]],
            num_samples=len(case.X[a : a + batch]),
        )
    traker.finalize_features()
    traker.start_scoring_checkpoint(
        exp_name="bench", checkpoint=state, model_id=0, num_targets=len(case.Xq)
    )
    traker.score(batch=[case.Xq, case.yq], num_samples=len(case.Xq))
    scores = torch.as_tensor(traker.finalize_scores(exp_name="bench")).T
    return scores, {}


def run_kronfluence(case: Case, method: str, batch: int = 1000, **kw):
    """kronfluence EK-FAC on CPU: true Fisher with one sampled label per example (its
    default), damping added to the eigenvalues of the MEAN Fisher = tdakit's λ. Pairwise
    scores ``[n_query, n_train]`` of the query loss; positive = helpful (reduces the
    query loss), tdakit's orientation."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            out = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(out.detach(), 1), 1)[:, 0]
            return F.cross_entropy(out, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    torch.manual_seed(0)
    model = prepare_model(case.model, Classification())
    analyzer = Analyzer(
        analysis_name="bench",
        model=model,
        task=Classification(),
        cpu=True,
        disable_tqdm=True,
        output_dir=str(case.workdir / f"kron-{uuid.uuid4().hex}"),
    )
    train = TensorDataset(case.X, case.y)
    analyzer.fit_all_factors(
        factors_name="ekfac",
        dataset=train,
        per_device_batch_size=batch,
        factor_args=FactorArguments(strategy="ekfac"),
        overwrite_output_dir=True,
    )
    analyzer.compute_pairwise_scores(
        scores_name="scores",
        factors_name="ekfac",
        query_dataset=TensorDataset(case.Xq, case.yq),
        train_dataset=train,
        per_device_query_batch_size=len(case.Xq),
        per_device_train_batch_size=batch,
        score_args=ScoreArguments(damping_factor=case.lam),
        overwrite_output_dir=True,
    )
    scores = analyzer.load_pairwise_scores(scores_name="scores")["all_modules"]
    return scores, {}
