"""``streampro convert-backbone SRC --out DST``: a base Qwen2.5-VL / Qwen3-VL checkpoint -> a StreamPro one."""

from __future__ import annotations

import argparse

from streampro.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="base checkpoint directory (Qwen2.5-VL or Qwen3-VL, transformers format)")
    parser.add_argument("--out", required=True, metavar="DST", help="output directory for the StreamPro checkpoint")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--min-pixels", type=int, default=None, help="frame resolution floor (pixels)")
    parser.add_argument("--max-pixels", type=int, default=None, help="frame resolution cap (pixels), e.g. 448*448")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")


def run(args: argparse.Namespace) -> int:
    from streampro.convert import convert_backbone

    try:
        out = convert_backbone(args.src, args.out, dtype=args.dtype, min_pixels=args.min_pixels,
                               max_pixels=args.max_pixels, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError.from_exception(e, "pass a base Qwen2.5-VL / Qwen3-VL checkpoint directory") from e
    print(f"StreamPro checkpoint written to {out}")
    return 0
