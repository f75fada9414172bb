"""Score distributions over posterior samples, accumulated in one streaming pass.

Every pair ``(query q, training example i)`` gets the mean ``mu``, standard deviation
``sigma`` (ddof = 1), signal-to-noise ratio ``mu / sigma``, a test of ``mu != 0`` and a
*reliable* flag (docs/methods.md, section 4):

- ``test="t"`` (default): one-sample Student t, ``t = mu / (sigma / sqrt(S))``, ``S - 1``
  degrees of freedom, two-sided p-value;
- ``test="z"``: the rule on the SNR itself, ``p = 2 (1 - Phi(|mu / sigma|))``: stricter
  than the t-test from four samples on (more lenient with two or three);
- ``correction``: ``None``, ``"bh"`` (Benjamini-Hochberg) or ``"bonferroni"`` over all pairs;
- reliable = the (corrected) p-value is below ``alpha`` (default 0.05).

:class:`Accumulator` keeps running sums in float64 (Welford updates), never the samples,
unless ``keep_samples=True`` (needed for per-pair Kolmogorov-Smirnov or Wasserstein
distances). With ``factors=(init, batch)`` labels per sample it also splits the variance
into initialisation, batch-order and interaction parts (a two-way decomposition of the
sums of squares over a full factorial design of seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tdakit.errors import ConfigError, DataError, require

TESTS = ("t", "z")
CORRECTIONS = (None, "bh", "bonferroni")


class Accumulator:
    """Running moments of score matrices ``[n_query, n_train]`` added one sample at a time."""

    def __init__(self, keep_samples: bool = False) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.keep_samples = keep_samples
        self.samples: list[torch.Tensor] = []
        self._levels: dict[str, dict[int, list]] = {"init": {}, "batch": {}}
        self._cells: dict[tuple[int, int], int] = {}

    def add(self, scores: torch.Tensor, *, init: int | None = None, batch: int | None = None):
        """Add one sample's scores; ``init``/``batch`` label it for the variance split."""
        x = scores.detach().to("cpu", torch.float64)
        require(bool(torch.isfinite(x).all()), "Sample scores contain NaN or inf.", DataError)
        if self.mean is None:
            self.mean, self.m2 = torch.zeros_like(x), torch.zeros_like(x)
        require(
            x.shape == self.mean.shape,
            f"Sample scores have shape {tuple(x.shape)}, expected {tuple(self.mean.shape)}.",
            DataError,
        )
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        if self.keep_samples:
            self.samples.append(x)
        if init is not None and batch is not None:
            for name, level in (("init", init), ("batch", batch)):
                s = self._levels[name].setdefault(int(level), [0, torch.zeros_like(x)])
                s[0] += 1
                s[1] += x
            self._cells[(int(init), int(batch))] = self._cells.get((int(init), int(batch)), 0) + 1

    def result(
        self, *, test: str = "t", alpha: float = 0.05, correction: str | None = None
    ) -> ScoreDistribution:
        require(self.n >= 2, f"A distribution needs at least 2 samples, got {self.n}.")
        assert self.mean is not None and self.m2 is not None
        sd = (self.m2 / (self.n - 1)).clamp_min(0).sqrt()
        p = p_values(self.mean, sd, self.n, test)
        q = correct(p, correction)
        dist = ScoreDistribution(self.mean, sd, self.n, p, q < alpha, test, alpha, correction)
        if self.keep_samples:
            dist.samples = torch.stack(self.samples)
        if self._cells and self._full_grid():
            dist.variance_split = self._split()
        return dist

    def _full_grid(self) -> bool:
        I, B = len(self._levels["init"]), len(self._levels["batch"])
        return I > 1 and B > 1 and len(self._cells) == I * B == self.n

    def _split(self) -> dict[str, torch.Tensor]:
        """Sums of squares of a full ``I x B`` factorial design, one sample per cell:
        ``total = init + batch + interaction`` (each divided by ``n - 1`` as variances)."""
        inits, batches = self._levels["init"], self._levels["batch"]
        I, B = len(inits), len(batches)
        require(
            len(self._cells) == I * B == self.n and set(self._cells.values()) == {1},
            "The variance split needs one sample for every (init seed, batch seed) pair "
            f"(a full {I} x {B} design); got {self.n} samples in {len(self._cells)} cells.",
        )
        assert self.mean is not None and self.m2 is not None
        ss_init = sum(B * (s / B - self.mean) ** 2 for _, s in inits.values())
        ss_batch = sum(I * (s / I - self.mean) ** 2 for _, s in batches.values())
        out = {
            "init": ss_init,
            "batch": ss_batch,
            "interaction": self.m2 - ss_init - ss_batch,
            "total": self.m2,
        }
        return {k: v / (self.n - 1) for k, v in out.items()}


def p_values(mu: torch.Tensor, sd: torch.Tensor, n: int, test: str = "t") -> torch.Tensor:
    """Two-sided p-values of ``mu != 0`` per pair (``sd = 0`` and ``mu != 0``: p = 0)."""
    from scipy import stats

    require(test in TESTS, f"test must be one of {TESTS}, got {test!r}.")
    mu_np, sd_np = mu.numpy(), sd.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        if test == "t":
            stat = mu_np / (sd_np / np.sqrt(n))
            p = 2 * stats.t.sf(np.abs(stat), df=n - 1)
        else:
            p = 2 * stats.norm.sf(np.abs(mu_np / sd_np))
    p = np.where(sd_np == 0, np.where(mu_np == 0, 1.0, 0.0), p)
    return torch.from_numpy(np.nan_to_num(p, nan=1.0))


def correct(p: torch.Tensor, correction: str | None) -> torch.Tensor:
    """Adjusted p-values over all entries: Benjamini-Hochberg or Bonferroni."""
    if correction not in CORRECTIONS:
        raise ConfigError(f"correction must be one of {CORRECTIONS}, got {correction!r}.")
    if correction is None:
        return p
    flat = p.reshape(-1).double()
    m = len(flat)
    if correction == "bonferroni":
        return (flat * m).clamp(max=1).reshape(p.shape)
    order = flat.argsort()
    ranked = flat[order] * m / torch.arange(1, m + 1, dtype=flat.dtype)
    ranked = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1)
    out = torch.empty_like(flat)
    out[order] = ranked
    return out.reshape(p.shape)


@dataclass
class ScoreDistribution:
    """Per-pair statistics of a method's (or an oracle's) scores over ``n`` samples."""

    mean: torch.Tensor
    sd: torch.Tensor
    n: int
    p_value: torch.Tensor
    reliable: torch.Tensor
    test: str = "t"
    alpha: float = 0.05
    correction: str | None = None
    samples: torch.Tensor | None = None  # [n, n_query, n_train] when kept
    variance_split: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def snr(self) -> torch.Tensor:
        """``mu / sigma`` (``+-inf`` where sigma = 0 and mu != 0, 0 where both are 0)."""
        with torch.no_grad():
            out = self.mean / self.sd
        return torch.where((self.sd == 0) & (self.mean == 0), torch.zeros_like(out), out)

    @property
    def fraction_reliable(self) -> float:
        return float(self.reliable.double().mean())

    def summary(self) -> dict[str, float]:
        snr = self.snr[torch.isfinite(self.snr)].abs()
        return {
            "samples": self.n,
            "pairs": self.mean.numel(),
            "fraction_reliable": self.fraction_reliable,
            "median_abs_snr": float(snr.median()) if snr.numel() else float("nan"),
        }
