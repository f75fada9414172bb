"""What is compared: per method, tdakit's configuration and each peer's, matched.

tdakit's side is a registry configuration (what ``method.to_config()`` gives and
``tda.methods.from_config`` takes; solver options live in the solver's own dict), plus
``params`` for the task. Values ``"@lissa_scale"`` and ``"@trak_damping"`` (also inside
nested dicts) are filled in at run time (the LiSSA scale computed once per case; the
damping tdakit's TRAK chose, passed to the peers).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Peer:
    lib: str
    method: str
    kw: dict = field(default_factory=dict)
    label: str = ""
    same_math: bool = True  # False: related but different math (explained in the notes)
    skip: dict = field(default_factory=dict)  # case -> reason for not running it there
    case_kw: dict = field(default_factory=dict)  # case -> extra kwargs


@dataclass
class Group:
    key: str
    title: str
    tdakit: dict  # {"method": registry name, **options} (+ "params" for the Task)
    peers: list[Peer]
    cases: tuple[str, ...] = ("digits", "fmnist")
    tdakit_case_kw: dict = field(default_factory=dict)
    # tdakit variants compared with one named peer (e.g. the peer's own projection matrix)
    checks: list[tuple[str, dict, str]] = field(default_factory=list)


BATCH = {"batch_size": 1000}  # tdakit: as large as the peers' (full-batch) passes
HESSIAN = {"method": "influence", "curvature": "hessian", **BATCH}
GROUPS = [
    Group(
        "graddot",
        "Grad-Dot / TracIn (final checkpoint, all parameters)",
        {"method": "grad_dot", **BATCH},
        [Peer("captum", "tracincp", label="captum TracInCP")],
    ),
    Group(
        "graddot_proj",
        "Grad-Dot, gradients projected to 512 dims (Gaussian)",
        {"method": "grad_dot", "projection": {"dim": 512, "kind": "gaussian", "seed": 0}, **BATCH},
        [Peer("dattri", "tracin", label="dattri TracInAttributor", same_math=False)],
    ),
    Group(
        "graddot_w",
        "Grad-Dot, last-layer weight only (TracInCPFast)",
        {"method": "grad_dot", "params": ["head.weight"], **BATCH},
        [Peer("captum", "tracincp_fast", label="captum TracInCPFast")],
    ),
    Group(
        "exact_last",
        "Exact influence, Hessian, last layer (weight + bias, P=650)",
        {**HESSIAN, "solver": "exact", "params": "last_layer"},
        [
            Peer("dattri", "explicit", {"last_layer": True}, "dattri IFAttributorExplicit"),
            Peer(
                "captum",
                "naive",
                {"last_layer": True, "hessian_inverse_tol": 0.0},
                "captum NaiveInfluenceFunction",
            ),
        ],
    ),
    Group(
        "exact",
        "Exact influence, Hessian, all parameters (P=4,810)",
        {**HESSIAN, "solver": "exact"},
        [
            Peer(
                "captum",
                "naive",
                {"hessian_inverse_tol": 0.0},
                "captum NaiveInfluenceFunction",
            ),
        ],
        cases=("digits",),
    ),
    Group(
        "cg",
        "Influence, conjugate gradient (Hessian, <= 50 iterations)",
        {**HESSIAN, "solver": {"name": "cg", "max_iter": 50, "tol": 1e-6}},
        [
            Peer(
                "dattri",
                "cg",
                {"max_iter": 50, "mode": "rev-fwd", "test_batch": 10},
                "dattri IFAttributorCG",
            )
        ],
    ),
    Group(
        "lissa",
        "Influence, LiSSA (Hessian, depth 200, minibatch 256, same scale)",
        {
            **HESSIAN,
            "solver": {"name": "lissa", "depth": 200, "batch_size": 256, "scale": "@lissa_scale"},
        },
        [
            Peer(
                "dattri",
                "lissa",
                {
                    "recursion_depth": 200,
                    "batch_size": 256,
                    "scale": "@lissa_scale",
                    "mode": "rev-rev",  # dattri's rev-fwd LiSSA fails on (x, y) data tuples
                    "test_batch": 10,
                },
                "dattri IFAttributorLiSSA",
            )
        ],
    ),
    Group(
        "arnoldi",
        "Influence, Arnoldi (Hessian, top 50 of a 200-dim Krylov space)",
        {**HESSIAN, "solver": {"name": "arnoldi", "rank": 50, "krylov_dim": 200}},
        [
            Peer(
                "dattri", "arnoldi", {"proj_dim": 50, "max_iter": 201}, "dattri IFAttributorArnoldi"
            ),
            Peer(
                "captum",
                "arnoldi",
                {
                    "projection_dim": 50,
                    "arnoldi_dim": 201,
                    "arnoldi_tol": 1e-12,
                    "hessian_inverse_tol": 0.0,
                },
                "captum ArnoldiInfluenceFunction",
            ),
        ],
    ),
    Group(
        "datainf",
        "Influence, DataInf (per-layer empirical Fisher)",
        {"method": "influence", "solver": "datainf", **BATCH},
        [Peer("dattri", "datainf", label="dattri IFAttributorDataInf")],
    ),
    Group(
        "ekfac",
        "Influence, EK-FAC (Fisher/GGN)",
        {"method": "influence", "solver": "ekfac", **BATCH},
        [
            Peer("dattri", "ekfac", label="dattri IFAttributorEKFAC"),
            Peer("kronfluence", "ekfac", label="kronfluence EK-FAC"),
        ],
    ),
    Group(
        "trak",
        "TRAK (1 model, 512-dim projection, margin)",
        {"method": "trak", "projection": 512, **BATCH},
        [
            Peer(
                "traker",
                "trak",
                {"proj_dim": 512, "damping": "@trak_damping"},
                "traker TRAKer (BasicProjector)",
            ),
            Peer(
                "dattri",
                "trak",
                {"proj_dim": 512, "damping": "@trak_damping"},
                "dattri TRAKAttributor",
            ),
        ],
        checks=[
            (
                "tdakit TRAK with traker's projection matrix",
                {
                    "traker_projection": 512,
                    "damping": "@trak_damping_raw",
                    "damping_mode": "absolute",
                },
                "traker",
            )
        ],
    ),
    Group(
        "representer",
        "Representer points (last-layer L2 refit, λ=0.003)",
        {"method": "representer", "l2": 0.003, **BATCH},
        [Peer("dattri", "rps", {"l2": 0.003}, "dattri RPSAttributor", same_math=False)],
    ),
]
