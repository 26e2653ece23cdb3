"""Model configuration: one dataclass whose ``name`` picks the model and whose other keys
set its hyper-parameters (the YAML ``model:`` table of a training config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["MODEL_NAMES", "WEIGHT_MODES", "ModelConfig"]

MODEL_NAMES = ("baseline", "ndive", "ftag_ndive")
WEIGHT_MODES = ("predicted", "truth", "all")


@dataclass
class ModelConfig:
    """Model hyper-parameters (the paper's values are the defaults).

    Attributes:
        name: ``"baseline"``, ``"ndive"`` or ``"ftag_ndive"``.
        dim: embedding size (reference code: 32). layers / heads: transformer layers and
            attention heads (paper: 1 / 1). ff_mult: feed-forward width / dim.
        weights: track weights of the NDIVE fit: ``"predicted"`` (the network), ``"truth"``
            (perfect selection: 1 for tracks from the b/c decay chain) or ``"all"`` (1).
        loss_flavour / loss_origin / loss_pair: GN2 task weights (1 / 0.5 / 1.5).
        loss_ndive: weight of the NDIVE vertex MAE inside FtagNdive (reference code: 0.1).
        fit_iter: Gauss-Newton iterations of the fit (paper: 10). fit_model: ``"helix"`` or
            ``"billoir"``. fit_dtype: dtype the fit runs in. fit_compile: run the fit's
            Gauss-Newton step and implicit backward compiled by ``torch.compile``
            (``vertexfit.fit(compile=True)``; same numbers as eager, several times faster at
            batch 100; the first step of a process compiles, Inductor's disk cache serves
            later runs; a failed compilation is reported in one line and the fit runs
            eagerly). See docs/training.md.
        max_displacement: [mm] a fitted vertex further than this from the PV is treated as
            failed (``fit_ok`` False; FtagNdive then uses the PV).
        vertex_loss_cap: [mm] per-component cap of the absolute vertex error in the loss
            (a lost fit costs a constant, not an unbounded gradient).
    """

    name: str = "baseline"
    dim: int = 32
    layers: int = 1
    heads: int = 1
    ff_mult: int = 2
    weights: str = "predicted"
    loss_flavour: float = 1.0
    loss_origin: float = 0.5
    loss_pair: float = 1.5
    loss_ndive: float = 0.1
    fit_iter: int = 10
    fit_model: str = "helix"
    fit_dtype: str = "float64"
    fit_compile: bool = True
    max_displacement: float = 500.0
    vertex_loss_cap: float = 50.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model name must be one of {MODEL_NAMES}, got {self.name!r}")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {self.weights!r}")
        if not isinstance(self.fit_compile, bool):
            raise ValueError(  # noqa: TRY004 (a config mistake: one line, as the others)
                f"fit_compile must be true or false, got {self.fit_compile!r}")
        if self.fit_dtype not in ("float32", "float64"):
            raise ValueError(f"fit_dtype must be float32 or float64, got {self.fit_dtype!r}")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
