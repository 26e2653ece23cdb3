"""The main job: ttbar jets, classic and differentiable vertex fits, a short training of the
baseline and FTAG+NDIVE, and a report (markdown + plots) in ``--out``. The steps
are listed in the docstring of ndive_models.demo.
"""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "the main job: vertex fits, gradients, a short training, a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output directory")
    p.add_argument("--jets", type=int, default=10000, help="jets to generate")
    p.add_argument("--seed", type=int, default=1, help="generator seed")
    p.add_argument("--workers", type=int, default=2, help="generator processes")
    p.add_argument("--input", default=None,
                   help="use this existing jet file instead of generating one")
    p.add_argument("--grad-jets", type=int, default=2000,
                   help="b-jets used in the differentiable-fit step")
    p.add_argument("--reference-jets", type=int, default=50,
                   help="b-jets also fitted with the SciPy reference fit, as a cross-check")
    p.add_argument("--lr", type=float, default=1.0,
                   help="length of the gradient step in weight-logit space, per jet")
    p.add_argument("--test-input", default=None,
                   help="test file for the evaluation (default: a generated one, or --input)")
    p.add_argument("--test-jets", type=int, default=3000,
                   help="jets of the test sample used in the evaluation")
    p.add_argument("--epochs", type=int, default=2, help="training epochs")
    p.add_argument("--train-jets", type=int, default=4000, help="training jets per epoch")
    p.add_argument("--dim", type=int, default=32, help="model embedding size")
    p.add_argument("--train-lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX part")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch part")
    p.add_argument("--no-train", action="store_true", help="skip the training part")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch intra-op threads (default 1; 0: PyTorch's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the vertex fit in the short trainings (default: off; "
                        "compiling takes minutes of CPU the first time, more than the demo's "
                        "trainings would save; `ndive train` compiles by default)")


def run(args) -> int:
    from ._runtime import set_threads
    from .demo import run as run_demo

    try:
        set_threads(args.threads)
    except ValueError as err:
        print(f"ndive demo: error: {err}", file=sys.stderr)
        return 2
    return run_demo(args)
