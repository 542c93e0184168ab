"""The ``sfsr`` command line: tools for people and scripts.

    sfsr make-lr --scale S INPUT_DIR OUTPUT_DIR
    sfsr upscale --scale S INPUT OUTPUT                   (bicubic)
    sfsr upscale --checkpoint CKPT INPUT OUTPUT [--tile N --tile-overlap N --device cpu|cuda]
    sfsr evaluate --hr HR_DIR --sr SR_DIR --scale S [--csv FILE] [--json]

User errors (:class:`sfsr.errors.SfsrError`) print one clear message, with the fix that fits the
command line, and exit with status 2; so do operating-system errors (permission denied, disk full,
a symlink loop, a folder given as a file). Ctrl-C exits with status 130, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from sfsr.errors import CLI, PathError, SfsrError, describe_os_error


def _pixel_limit(args: argparse.Namespace) -> None:
    from sfsr.data.images import set_max_image_pixels

    set_max_image_pixels(args.max_image_pixels)


def _cmd_make_lr(args: argparse.Namespace) -> int:
    from sfsr.data.prepare import make_lr_folder
    from sfsr.outputs import describe_outputs, folder_entries

    _pixel_limit(args)
    before = folder_entries(args.output_dir)
    written = make_lr_folder(args.input_dir, args.output_dir, args.scale, device=args.device,
                             progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {len(written)} LR images (x{args.scale}) to {args.output_dir} "
              f"({describe_outputs(args.output_dir, written, before)})", file=sys.stderr)
    return 0


def _cmd_upscale(args: argparse.Namespace) -> int:
    from sfsr.inference import AUTO_TILE, upscale_path
    from sfsr.outputs import describe_outputs, folder_entries

    _pixel_limit(args)
    if args.checkpoint is None and args.scale is None:
        raise SfsrError("give --scale S (bicubic), or --checkpoint CKPT (the checkpoint knows its scale)")
    if args.checkpoint is not None and args.method is not None:
        raise SfsrError("--method bicubic and --checkpoint ask for two different upscalers; leave "
                        "--method out to run the checkpoint, or --checkpoint out for bicubic")
    before = folder_entries(args.output)
    existed = os.path.lexists(args.output)
    written = upscale_path(args.input, args.output, scale=args.scale, checkpoint=args.checkpoint,
                           device=args.device, tile=AUTO_TILE if args.tile is None else args.tile,
                           tile_overlap=args.tile_overlap,
                           progress=not args.quiet, bf16=args.bf16)
    if not args.quiet:
        if before is not None:  # an existing folder: say what was replaced and what was kept
            note = f" ({describe_outputs(args.output, written, before)})"
        else:
            note = " (replaced)" if existed else ""
        print(f"wrote {len(written)} image(s) to {args.output}{note}", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sfsr import io
    from sfsr.evaluation import PSNR_CAP_DB, evaluate_folders, mean_metrics
    from sfsr.metrics import METRICS

    _pixel_limit(args)
    if args.csv and os.path.isdir(args.csv):  # before the work, not after it
        raise PathError(f"--csv {args.csv} is a folder; give a file path (e.g. {args.csv}/metrics.csv)")
    table = evaluate_folders(args.hr, args.sr, args.scale)
    if args.csv:
        io.write_csv(args.csv, table)
    means = mean_metrics(table)
    if args.json:
        print(json.dumps(means))
    else:
        print(f"{means['n']} images, x{args.scale}: "
              + ", ".join(metric.show(means[name]) for name, metric in METRICS.items()))
        if means["n_psnr_capped"]:
            print(f"({means['n_psnr_capped']} image(s) equal their HR image: PSNR is infinite, "
                  f"counted as {PSNR_CAP_DB:g} dB in the means)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfsr", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    limit = argparse.ArgumentParser(add_help=False)
    limit.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                       help="refuse input images of more pixels than N (default 89,478,485, "
                            "Pillow's threshold: a guard against decompression bombs)")

    p = sub.add_parser("make-lr", parents=[limit], help="MATLAB-exact bicubic LR images of a folder (after modcrop)")
    p.add_argument("--scale", type=int, required=True, choices=[2, 3, 4, 8])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.set_defaults(func=_cmd_make_lr)

    p = sub.add_parser("upscale", parents=[limit], help="upscale an image or a folder with bicubic or a checkpoint")
    p.add_argument("--scale", type=int, choices=[2, 3, 4, 8],
                   help="the factor; without --checkpoint the image is upscaled with bicubic")
    # Bicubic is the only method without a checkpoint; --method bicubic stays accepted (not shown)
    # for scripts written when the option was documented.
    p.add_argument("--method", choices=["bicubic"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help="generator checkpoint written by sfsr training (knows its scale)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tile", type=int, default=None,
                   help="largest LR tile (pixels; each axis split into equal tiles) to bound memory "
                        "(default: the whole image when it fits in the memory available, else the "
                        "largest tile that does; a tile at least the image's size runs it whole; "
                        "bicubic always runs in bounded bands)")
    p.add_argument("--tile-overlap", type=int, default=16, help="LR pixels of overlap between tiles")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (on a CPU without AVX512-BF16/AMX emulated: slower than float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("output", help="output PNG file (for one image) or folder")
    p.set_defaults(func=_cmd_upscale)

    p = sub.add_parser("evaluate", parents=[limit], help="PSNR/SSIM (Y, paper convention) of SR images against HR")
    p.add_argument("--hr", required=True, help="folder of HR images")
    p.add_argument("--sr", required=True, help="folder of SR images (matched by file stem)")
    p.add_argument("--scale", type=int, required=True, choices=[2, 3, 4, 8])
    p.add_argument("--csv", help="write the per-image table here")
    p.add_argument("--json", action="store_true", help="print the means as JSON on stdout")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SfsrError as exc:
        print(f"sfsr {args.command}: error: {exc.message(CLI)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sfsr {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
