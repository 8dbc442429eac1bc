"""`cappy export`: re-save a checkpoint compactly (float16/bfloat16) with a model card, e.g. to embed cappy-mini;
with ``--backend openvino`` also its OpenVINO export (and, calibrated on real pairs, the int8 one) in DIR/openvino/."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="re-save a Cappy checkpoint in half precision with a model card (and its OpenVINO / int8 export)",
    )
    p.add_argument("checkpoint", help="a Cappy checkpoint directory (e.g. a `cappy train` run's best/)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (e.g. src/cappy/models/cappy-mini)")
    p.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="weights saved in DIR (default float16; float32 with --backend openvino, which converts from float32)",
    )
    p.add_argument("--card", default=None, help="markdown file used as the model card (README.md)")
    p.add_argument(
        "--backend",
        choices=("torch", "openvino"),
        default="torch",
        help="openvino: also write DIR/openvino/openvino_model.xml, the float32 export backend='openvino' reads",
    )
    p.add_argument(
        "--int8-calibration",
        metavar="PAIRS.jsonl",
        default=None,
        help="with --backend openvino: also write DIR/openvino/openvino_model_qint8.xml, statically quantized to int8 "
        "and calibrated on these real pairs (rows with 'instruction' and 'response'); load it with dtype='int8'",
    )
    p.add_argument(
        "--calibration-size", type=int, default=300, help="calibration pairs read from the file's start (default 300)"
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cappy.errors import InputError
    from cappy.model import export_checkpoint  # deferred: imports torch

    openvino = args.backend == "openvino"
    if args.int8_calibration and not openvino:
        raise InputError("--int8-calibration makes an OpenVINO export: add --backend openvino")
    if args.calibration_size < 1:
        raise InputError(f"--calibration-size must be positive, got {args.calibration_size}")
    dtype = args.dtype or ("float32" if openvino else "float16")
    pairs = None
    if openvino:
        from cappy.model.quantize import nncf_available, read_pairs

        if args.int8_calibration:
            if not nncf_available():
                raise InputError("--int8-calibration needs nncf: pip install 'cappy[openvino]'")
            pairs = read_pairs(args.int8_calibration, limit=args.calibration_size)  # bad rows fail before any work
    card = Path(args.card).read_text() if args.card else None
    out = export_checkpoint(args.checkpoint, args.out, dtype, model_card=card)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    print(f"exported {args.checkpoint} as {dtype} to {out} ({size:.1f} MB)")
    if openvino:
        from cappy.model.backends import OPENVINO_FILE
        from cappy.model.quantize import export_openvino, quantize_openvino

        # converted from the source checkpoint in float32, whatever --dtype the saved weights have
        if pairs is None:
            print(f"wrote {export_openvino(args.checkpoint, out)} (float32)")
        else:  # writes the float32 export beside the int8 one
            path = quantize_openvino(args.checkpoint, *pairs, out_dir=out, subset_size=len(pairs[0]))
            print(f"wrote {path.parent / OPENVINO_FILE} (float32)")
            print(
                f"wrote {path} (int8, calibrated on {len(pairs[0])} pairs of {args.int8_calibration}); "
                f"load it with Cappy.from_pretrained({str(out)!r}, dtype='int8', backend='openvino')"
            )
    return 0
