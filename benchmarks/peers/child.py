"""One (library, method, case) measurement, run by ``run.py`` in a fresh process.

Loads the saved case and imports the library first (not timed), then times fit + scoring
and measures the peak RSS increase over the RSS right before it. Writes the scores (in
tdakit's orientation, ``[n_query, n_train]``) and a JSON line of measurements.

    python benchmarks/peers/child.py WORKDIR CASE LIB METHOD 'JSON-KWARGS' OUT_PREFIX REPEATS

torch's lazy imports are triggered on a toy problem first (``warm_up_torch``); with
REPEATS=2 a second run follows in the same process when the first took under a minute:
the best time and the larger peak are reported.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import load_case, measure, warm_up_torch  # type: ignore[import-not-found]


def _runner(lib: str):
    if lib == "tdakit":
        import runners_tdakit as mod  # type: ignore[import-not-found]

        return mod.run
    if lib == "dattri":
        import dattri.algorithm  # noqa: F401  (import cost is not timed)
        import runners_dattri as mod  # type: ignore[import-not-found]

        return mod.run
    if lib == "captum":
        import captum.influence  # noqa: F401
        import runners_captum as mod  # type: ignore[import-not-found]

        return mod.run
    import runners_other as mod  # type: ignore[import-not-found]

    if lib == "traker":
        import trak  # noqa: F401

        return mod.run_traker
    if lib == "kronfluence":
        import kronfluence.analyzer  # noqa: F401

        return mod.run_kronfluence
    raise ValueError(f"unknown library {lib!r}")


def main() -> None:
    workdir, case_name, lib, method, kwargs, out, repeats = sys.argv[1:8]
    warnings.filterwarnings("ignore")
    case = load_case(case_name, Path(workdir))
    fn = _runner(lib)
    warm_up_torch()
    times, peaks = [], []
    for r in range(int(repeats)):
        if r and times[-1] > 60:
            break
        torch.manual_seed(0)
        (scores, info), seconds, peak_mib = measure(lambda: fn(case, method, **json.loads(kwargs)))
        times.append(seconds)
        peaks.append(peak_mib)
    scores = torch.as_tensor(scores).detach().to(torch.float64).cpu()
    expected = (len(case.Xq), case.n_train)
    if tuple(scores.shape) != expected:
        raise SystemExit(
            f"{lib}/{method} returned scores of shape {tuple(scores.shape)}, expected {expected}"
        )
    torch.save(scores, f"{out}.pt")
    finite = bool(torch.isfinite(scores).all())
    record = {
        "seconds": min(times),
        "peak_mib": max(peaks),
        "times": times,
        "peaks": peaks,
        "finite": finite,
        **info,
    }
    Path(f"{out}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
