"""Model configuration: one dataclass whose ``name`` picks the model and whose other keys
set its hyper-parameters (the YAML ``model:`` table of a training config)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

__all__ = [
    "ACTIVATION_NAMES", "ATTENTIONS", "BACKBONES", "CLASS_SETS", "FEED_FORWARDS", "INPUT_TYPES",
    "LOSS_BALANCES", "MODEL_NAMES", "POOLINGS", "TASKS", "WEIGHT_MODES", "ModelConfig",
    "check_types",
]  # fmt: skip

MODEL_NAMES = ("baseline", "ndive", "ftag_ndive")
WEIGHT_MODES = ("predicted", "truth", "secondary", "all")
BACKBONES = ("transformer", "dips")
ACTIVATION_NAMES = ("relu", "silu", "gelu")
FEED_FORWARDS = ("mlp", "glu")
ATTENTIONS = ("manual", "sdpa")
POOLINGS = ("attention", "sum", "weighted_sum")
TASKS = ("flavour", "origin", "pair", "regression")
INPUT_TYPES = ("tracks", "muons")
LOSS_BALANCES = ("fixed", "gls")
#: ``classes`` -> the jet classes, in output order (see ``data.schema.JET_CLASSES``).
CLASS_SETS = {3: ("b", "c", "light"), 4: ("b", "c", "light", "tau"),
              6: ("b", "c", "ud", "s", "g", "tau")}


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
        fit_features: FTAG+NDIVE also gives the tagger the fit's quality (an idea beyond the
            paper): per track, its chi2 to the fitted vertex; per jet, the fit's chi2/ndf,
            the vertex errors and the flight significance (not differentiated: the gradient
            into the weights flows through the vertex position only).

    The FTAG family (DIPS, GN2, GN3; ``docs/models.md``) are options of the same models:

        backbone: track processor of ``baseline`` and ``ftag_ndive``: ``"transformer"``
            (GN2/GN3) or ``"dips"`` (deep sets: a per-track network of ``layers`` layers of
            width ``dim``, then a permutation-invariant pooling).
        activation: ``"relu"`` (GN2, DIPS), ``"silu"`` (GN3; the paper models) or ``"gelu"``.
        feed_forward: transformer feed-forward: ``"mlp"`` or ``"glu"`` (gated linear unit,
            GN3). attention: ``"manual"`` (explicit softmax) or ``"sdpa"``
            (``torch.nn.functional.scaled_dot_product_attention``: flash / memory-efficient
            kernels where the device has them). registers: learned register tokens appended
            to the sequence (GN3: 8); they take part in attention, not in pooling or heads.
        pooling: jet vector from the constituents: ``"attention"`` (GN2), ``"sum"`` (DIPS)
            or ``"weighted_sum"`` (DIPS variant: sum of sigmoid-weighted embeddings).
        classes: 3 (b, c, light), 4 (b, c, light, tau) or 6 (b, c, ud, s, g, tau): see
            :data:`CLASS_SETS`; 4 and 6 need the file's ``jet_class``.
        tasks: heads to train, a subset of :data:`TASKS` that contains ``"flavour"``;
            ``"regression"`` predicts log(truth jet pT incl. neutrinos and muons / jet pT).
        loss_regression: weight of the regression loss (fixed balancing).
        loss_balance: ``"fixed"`` (``sum_k loss_<k> L_k``) or ``"gls"`` (geometric mean of the
            task losses, weights ignored; ``models.losses.total_loss``).
        inputs: input types: ``["tracks"]`` or ``["tracks", "muons"]`` (soft muons, tracks
            with ``|leptonID| = 13``, as a second token type with its own embedding).
        max_tracks: use only the first (highest-pT) N tracks of a jet (0: all).
        d0_max: [mm] use only tracks with ``|d0| <`` this (0: no cut; GN2: 3.5).
        ndive_dim / ndive_layers / ndive_heads: size of the NDIVE weight predictor inside
            ``ftag_ndive`` (0: ``dim`` / ``layers`` / ``heads``), so that a big backbone can
            keep the paper-sized NDIVE block.
        label: name of the model in ``ndive evaluate`` (default: ``name``, plus the weight
            option for the reference fits); checkpoints with the same label count as seeds.
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
    fit_features: bool = False
    backbone: str = "transformer"
    activation: str = "silu"
    feed_forward: str = "mlp"
    attention: str = "manual"
    registers: int = 0
    pooling: str = "attention"
    classes: int = 3
    tasks: list = field(default_factory=lambda: ["flavour", "origin", "pair"])
    loss_regression: float = 1.0
    loss_balance: str = "fixed"
    inputs: list = field(default_factory=lambda: ["tracks"])
    max_tracks: int = 0
    d0_max: float = 0.0
    ndive_dim: int = 0
    ndive_layers: int = 0
    ndive_heads: int = 0
    label: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for key, allowed in (("backbone", BACKBONES), ("activation", ACTIVATION_NAMES),
                             ("feed_forward", FEED_FORWARDS), ("attention", ATTENTIONS),
                             ("pooling", POOLINGS), ("loss_balance", LOSS_BALANCES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key} must be one of {allowed}, got "
                                 f"{getattr(self, key)!r}")
        if self.classes not in CLASS_SETS:
            raise ValueError(f"model.classes must be one of {tuple(CLASS_SETS)}, got "
                             f"{self.classes!r}")
        self.tasks, self.inputs = list(self.tasks), list(self.inputs)
        for key, allowed in (("tasks", TASKS), ("inputs", INPUT_TYPES)):
            bad = [t for t in getattr(self, key) if t not in allowed]
            if bad:
                raise ValueError(f"model.{key}: unknown {bad}; allowed: {allowed}")
        if "flavour" not in self.tasks:
            raise ValueError("model.tasks must contain 'flavour'")
        if "tracks" not in self.inputs:
            raise ValueError("model.inputs must contain 'tracks'")
        for key in ("dim", "layers", "heads", "registers", "max_tracks", "ndive_dim",
                    "ndive_layers", "ndive_heads"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < (1 if key in ("dim", "heads") else 0):
                raise ValueError(f"model.{key} must be a non-negative integer (dim, heads "
                                 f">= 1), got {v!r}")
        if self.d0_max < 0:
            raise ValueError(f"model.d0_max must be >= 0 (0: no cut), got {self.d0_max!r}")
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
        return cls(**check_types(cls, d, "model."))

    def to_dict(self) -> dict:
        return asdict(self)

    def ndive_block(self) -> ModelConfig:
        """The config of the NDIVE block inside ``ftag_ndive``: this one with the
        ``ndive_*`` sizes, a transformer weight predictor and tracks as the only input."""
        from dataclasses import replace

        return replace(self, name="ndive", dim=self.ndive_dim or self.dim,
                       layers=self.ndive_layers or self.layers,
                       heads=self.ndive_heads or self.heads, backbone="transformer",
                       registers=0, inputs=["tracks"])

    def loss_names(self) -> tuple:
        """Names of the validation losses this model reports (``loss``, the total, and its
        terms, in the order of ``loss_terms``): the values ``TrainConfig.monitor`` may take.
        NDIVE alone has no flavour output; FTAG+NDIVE's vertex term exists only with
        predicted weights."""
        if self.name == "ndive":
            return ("loss", "ndive")
        terms = ["flavour"] + [t for t in ("regression", "origin", "pair") if t in self.tasks]
        if self.name == "ftag_ndive" and self.weights == "predicted":
            terms.append("ndive")
        return ("loss", *terms)

    @property
    def class_names(self) -> tuple:
        """Names of the flavour outputs, in order."""
        return CLASS_SETS[self.classes]

_SIMPLE = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None),
           "list": list}


#: A number written as text that a float field accepts: YAML 1.1 reads ``1e-4`` as a string.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_types(cls, d: dict, prefix: str = "") -> dict:
    """``d`` with every value of a plainly typed field of dataclass ``cls`` (``int``,
    ``float``, ``str``, ``bool``, ``... | None``) checked; ints are accepted for floats, and
    so is a number in exponent notation that YAML read as text (``1e-4``).

    Raises:
        ValueError: naming the key, e.g. ``model.dim: expected int, got 'abc'``.
    """
    out = dict(d)
    for f in fields(cls):
        if f.name not in d:
            continue
        names = [n.strip() for n in str(f.type).split("|")]
        if not all(n in _SIMPLE for n in names):
            continue  # nested configs, dicts: checked where they are built
        v = d[f.name]
        ok = any(isinstance(v, _SIMPLE[n]) and not (n in ("int", "float")
                                                     and isinstance(v, bool))
                 for n in names)
        if not ok and "float" in names and isinstance(v, int) and not isinstance(v, bool):
            ok, v = True, float(v)
        if not ok and "float" in names and isinstance(v, str) and _FLOAT_TEXT.fullmatch(
                v.strip()):
            # YAML 1.1 (PyYAML) reads `lr: 1e-4` (no dot) as the string '1e-4'
            ok, v = True, float(v)
        if not ok:
            raise ValueError(f"{prefix}{f.name}: expected {' or '.join(names)}, got {v!r}")
        out[f.name] = v
    return out
