"""``streampro convert-backbone SRC --out DST``: a base Qwen2.5-VL / Qwen3-VL checkpoint -> a StreamPro one."""

from __future__ import annotations

import argparse

from streampro.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="base checkpoint directory (Qwen2.5-VL or Qwen3-VL, transformers format)")
    parser.add_argument("--out", required=True, metavar="DST", help="output directory for the StreamPro checkpoint")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--min-pixels", type=int, default=None, help="frame resolution floor (pixels)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="frame resolution cap in pixels (default 200704 = 448*448: 256 tokens per frame on "
                             "Qwen2.5-VL, 196 on Qwen3-VL; see docs/engine.md)")
    parser.add_argument("--base-model", metavar="ORG/NAME", default=None,
                        help="Hub id of SRC, for the model card (default: read from a Hugging Face cache path)")
    parser.add_argument("--license", default=None,
                        help="licence for the model card (default: the one in SRC/README.md, else 'other')")
    parser.add_argument("--three-state", action="store_true",
                        help="also add </Standby>: a three-state (Streamo-style) checkpoint that can say the event "
                             "is under way but not over (docs/engine.md)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")


def run(args: argparse.Namespace) -> int:
    from streampro.convert import convert_backbone

    try:
        out = convert_backbone(args.src, args.out, dtype=args.dtype, min_pixels=args.min_pixels,
                               max_pixels=args.max_pixels, overwrite=args.overwrite,
                               base_model=args.base_model, license=args.license, three_state=args.three_state)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError.from_exception(e, "pass a base Qwen2.5-VL / Qwen3-VL checkpoint directory") from e
    states = "three-state " if args.three_state else ""
    print(f"StreamPro {states}checkpoint written to {out}")
    return 0
