"""Export a checkpoint to ONNX and check it against ONNX Runtime on real jets.

The graph takes the jet file's track parameters, covariance (the 15 ``cov_*`` fields), track
mask and jet (pt, eta, phi); the input normalisation and the track features are inside it,
the NDIVE vertex fit runs in float32. The jet and track axes are dynamic. The model
configuration and normalisation are stored as ONNX metadata. After the export the file is run
with ONNX Runtime on --jets jets of --data (and on the same jets with fewer track slots) and
compared with PyTorch; the largest differences are printed and written to OUT.json.
Needs ``pip install 'ndive-models[onnx]'``.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "export"
HELP = "export a checkpoint to ONNX, checked against ONNX Runtime"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint (.pt) from `ndive train`")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="ONNX file to write")
    p.add_argument("--data", required=True, metavar="FILE.h5",
                   help="jet file for the example input and the ONNX Runtime check")
    p.add_argument("--jets", type=int, default=1000, help="jets for the check")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the jet axis to the example's 4 jets")


def run(args) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        print("ndive export: error: needs onnx and onnxruntime: "
              "pip install 'ndive-models[onnx]'", file=sys.stderr)
        return 2
    from .data import SchemaError
    from .export import export_report

    if args.jets < 8:
        print("ndive export: error: --jets must be at least 8", file=sys.stderr)
        return 2
    try:
        report = export_report(args.checkpoint, args.out, args.data, jets=args.jets,
                               opset=args.opset, dynamic_batch=not args.static_batch)
    except (SchemaError, ValueError, FileNotFoundError) as err:
        print(f"ndive export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0
