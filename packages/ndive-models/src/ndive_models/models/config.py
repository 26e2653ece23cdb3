"""Model configuration: one dataclass whose ``name`` picks the model and whose other keys
set its hyper-parameters (the YAML ``model:`` table of a training config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["MODEL_NAMES", "WEIGHT_MODES", "ModelConfig"]

MODEL_NAMES = ("baseline", "ndive", "ftag_ndive")
WEIGHT_MODES = ("predicted", "truth", "secondary", "all")


@dataclass
class ModelConfig:
    """Model hyper-parameters (the paper's values are the defaults).

    Attributes:
        name: ``"baseline"``, ``"ndive"`` or ``"ftag_ndive"``.
        dim: embedding size (reference code: 32). layers / heads: transformer layers and
            attention heads (paper: 1 / 1). ff_mult: feed-forward width / dim.
        weights: track weights of the NDIVE fit: ``"predicted"`` (the network), ``"truth"``
            (the paper's perfect selection: 1 for tracks from the b/c decay chain; it encodes
            the label, as a light jet rarely has two such tracks), ``"secondary"`` (perfect
            selection of every displaced track, light jets included: 1 for tracks from b, c,
            tau decays and other secondaries such as K0s, Lambda, conversions; the rule does
            not depend on the jet's flavour) or ``"all"`` (1).
        loss_flavour / loss_origin / loss_pair: GN2 task weights (1 / 0.5 / 1.5).
        loss_ndive: weight of the NDIVE vertex MAE inside FtagNdive (reference code: 0.1).
        fit_iter: Gauss-Newton iterations of the fit (paper: 10). fit_model: ``"helix"`` or
            ``"billoir"``. fit_dtype: dtype the fit runs in.
        max_displacement: [mm] a fitted vertex further than this from the PV is treated as
            failed (``fit_ok`` False; FtagNdive then uses the PV).
        vertex_loss_cap: [mm] per-component cap of the absolute vertex error in the loss
            (a lost fit costs a constant, not an unbounded gradient).
        fit_features: FTAG+NDIVE also gives the tagger the fit's quality (an idea beyond the
            paper): per track, its chi2 to the fitted vertex; per jet, the fit's chi2/ndf,
            the vertex errors and the flight significance (not differentiated: the gradient
            into the weights flows through the vertex position only).
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
    max_displacement: float = 500.0
    vertex_loss_cap: float = 50.0
    fit_features: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model name must be one of {MODEL_NAMES}, got {self.name!r}")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {self.weights!r}")
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
