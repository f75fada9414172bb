"""Representation similarity: cosine or dot product of hidden representations."""

from __future__ import annotations

from typing import Literal

import torch

from tdakit.data.sources import Batch, Source
from tdakit.errors import NumericalError, require
from tdakit.features.representations import last_linear, layer_inputs
from tdakit.methods.feature_method import FeatureMethod
from tdakit.methods.gradient import unit_rows
from tdakit.methods.registry import register
from tdakit.task import Task


@register
class RepresentationSimilarity(FeatureMethod):
    """``S[q, i] = sim(h_q, h_i)`` with ``h`` the input of ``layer`` (default: the last
    ``nn.Linear`` in the forward pass). Label-agnostic: it says which training inputs the
    model sees as alike, not which ones changed the prediction."""

    name = "representation_similarity"

    def __init__(
        self,
        task: Task,
        *,
        layer: str | None = None,
        similarity: Literal["cos", "dot"] = "cos",
        **kw,
    ) -> None:
        super().__init__(task, **kw)
        require(
            similarity in ("cos", "dot"), f"similarity must be 'cos' or 'dot', got {similarity!r}."
        )
        self.layer, self.similarity = layer, similarity
        self.layer_: str | None = layer

    def feature_config(self) -> dict:
        return {**super().feature_config(), "layer": self.layer_, "similarity": self.similarity}

    def _fit(self, source: Source) -> None:
        if self.layer is None:
            first = next(iter(source.batches(self.task, 1)))
            self.layer_ = last_linear(self.task, first.inputs)  # type: ignore[arg-type]
        super()._fit(source)

    def _featurize(self, batch: Batch, objective: str) -> torch.Tensor:
        H = layer_inputs(self.task, self.layer_, batch.inputs)  # type: ignore[arg-type]
        if not bool(torch.isfinite(H).all()):
            raise NumericalError(
                f"The representations at layer {self.layer_!r} contain NaN or inf (example "
                f"{batch.start} onwards): check the model's weights and the inputs."
            )
        return unit_rows(H) if self.similarity == "cos" else H
