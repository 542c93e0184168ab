"""fp32 training speed: sfsr's real training loop against the real BasicSR MSRResNet training step,
in one process, alternating (issue 26 item 1; not a test).

    python -m benchmarks.basicsr_train --basicsr-source PATH [--images DIR] [--rounds 3]
        [--iterations 30] [--batch-size 16] [--lr-patch 24] [--threads N] [--arch msrresnet]

PATH: BasicSR 1.4.2's sdist ``basicsr-1.4.2.tar.gz`` (``pip download basicsr==1.4.2 --no-deps``) or
its extracted folder; else ``$SFSR_BASICSR_SOURCE`` (:func:`benchmarks.basicsr_real.source_from`).

BasicSR side: BasicSR's own ``MSRResNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16,
upscale=4)`` from ``basicsr/archs/srresnet_arch.py`` and ``basicsr/archs/arch_util.py``, loaded
unchanged from the source without ``import basicsr`` (:func:`load_msrresnet`), trained by the step of
``SRModel.optimize_parameters`` (``basicsr/models/sr_model.py``) with the options of
``options/train/SRResNet_SRGAN/train_MSRResNet_x4.yml`` (BasicSR's repository; its ``gt_size`` is 128,
``--lr-patch 32`` gives that): Adam lr 2e-4, betas (0.9, 0.99), weight_decay 0; L1 loss,
mean; zero_grad, forward, loss, backward, step, the loss logged with ``.item()``
(``reduce_loss_dict``), then the EMA update with decay 0.999 (:func:`basicsr_model_ema`). 2 steps
warm up, then ``--iterations`` steps are timed with ``time.perf_counter``.

What BasicSR's timing does NOT hold (this favours BasicSR): its data. BasicSR reads precomputed LR
images from disk in DataLoader worker processes; here it gets pre-made batches (random 96x96 HR crops
of the training images, the LR made before any timing with sfsr's MATLAB-exact bicubic
``sfsr.training.data.make_lr_batch``, already float in [0, 1]), cycling through a fixed list of 8, so
its timing is compute only. Its learning-rate scheduler step (once per iteration in BasicSR's
``train.py``) and ``feed_data``'s ``.to(device)`` (a no-op on the CPU) are not run either.

sfsr side: the real loop ``sfsr.training.loop.train("warmup", cfg, ...)`` with bf16, channels_last and
compile off (fp32 on any CPU), ``num_workers`` 0, EMA 0.999, lr 2e-4, the same batch and LR patch.
Its timing holds everything the loop does per iteration: crops, flips and the on-the-fly MATLAB-exact
LR in the main process, the step, EMA, logging. The rate is measured as ``benchmarks/train_speed.py``
does, from ``train_log.csv`` between the first logged window and the end (so start-up is out); the
loop runs ``--iterations`` plus one log window, so both sides time ``--iterations`` steps (the number
timed is printed). ``ran`` says which speed flags the run actually recorded (provenance.json).

Rounds alternate the order (round 1: sfsr then BasicSR; round 2: BasicSR then sfsr; ...). Each round
prints both sides' s/it and ``ratio`` = BasicSR s/it / sfsr s/it (> 1: sfsr is faster), with the load
average before and after each part; at the end the median ratio, torch version, threads, the
parameter counts of both models and whether their parameter shapes match
(:func:`compare_architectures`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

from sfsr import io  # noqa: F401  sfsr before torch: its threading policy (sfsr.threads), as a training job has it
from sfsr.data.images import list_images, read_image, to_rgb
from sfsr.models import count_parameters, load_generator
from sfsr.training.data import make_lr_batch
from sfsr.training.loop import train

import torch  # noqa: E402  isort: skip
from torch.nn import functional as F  # noqa: E402  isort: skip

from benchmarks.basicsr_real import ENV, Unavailable, light_package, source_from, source_root  # noqa: E402
from benchmarks.train_speed import ran, training_images  # noqa: E402

SCALE = 4
#: BasicSR's files MSRResNet runs (relative to the folder holding ``basicsr/``), loaded unchanged.
FILES = ("basicsr/archs/srresnet_arch.py", "basicsr/archs/arch_util.py", "basicsr/utils/registry.py")
#: options/train/SRResNet_SRGAN/train_MSRResNet_x4.yml (network_g, optim_g, pixel_opt, ema_decay).
BASICSR_NET = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=SCALE)
LR, BETAS, EMA_DECAY = 2e-4, (0.9, 0.99), 0.999
WARMUP_STEPS = 2
N_BATCHES = 8


def load_msrresnet(source: str | Path) -> type[torch.nn.Module]:
    """BasicSR's own ``MSRResNet`` class from ``basicsr/archs/srresnet_arch.py`` of ``source``, loaded
    with ``basicsr/archs/arch_util.py`` and ``basicsr/utils/registry.py`` unchanged, without running
    any ``__init__.py`` of BasicSR. Raises :class:`Unavailable` with the reason where it cannot."""
    loaded = sys.modules.get("basicsr.archs.srresnet_arch")
    if loaded is not None:  # loading it twice would register MSRResNet twice (ARCH_REGISTRY asserts)
        return loaded.MSRResNet
    try:
        importlib.import_module("torchvision")  # arch_util.py imports it
    except ImportError as exc:
        raise Unavailable(f"BasicSR's arch_util.py imports torchvision, not installed here ({exc})") from exc
    root = source_root(Path(source), FILES)
    for name in ("basicsr", "basicsr.utils", "basicsr.archs", "basicsr.ops"):
        light_package(name, root.joinpath(*name.split(".")))
    utils = sys.modules["basicsr.utils"]
    if not hasattr(utils, "get_root_logger"):
        # Stand-in: arch_util.py imports get_root_logger from basicsr/utils/__init__.py (which imports
        # cv2, lmdb, ...); only DCNv2Pack.forward calls it, MSRResNet never does.
        utils.get_root_logger = lambda *a, **k: logging.getLogger("basicsr")
    if "basicsr.ops.dcn" not in sys.modules:
        # Stand-in for basicsr/ops/dcn/__init__.py (it builds or loads a compiled CUDA/C++ extension):
        # arch_util.py subclasses ModulatedDeformConvPack (DCNv2Pack) and calls modulated_deform_conv
        # in DCNv2Pack.forward only; MSRResNet uses neither.
        dcn = types.ModuleType("basicsr.ops.dcn", "stand-in: names MSRResNet does not use")

        class ModulatedDeformConvPack(torch.nn.Module):
            """Stand-in (unused by MSRResNet): a base class for arch_util.DCNv2Pack's definition."""

        def modulated_deform_conv(*args, **kwargs):
            """Stand-in (unused by MSRResNet)."""
            raise NotImplementedError("basicsr.ops.dcn stand-in: deformable convolution is not loaded")

        dcn.ModulatedDeformConvPack = ModulatedDeformConvPack
        dcn.modulated_deform_conv = modulated_deform_conv
        sys.modules["basicsr.ops.dcn"] = dcn
        sys.modules["basicsr.ops"].dcn = dcn
    importlib.import_module("basicsr.utils.registry")  # the real one: ARCH_REGISTRY
    return importlib.import_module("basicsr.archs.srresnet_arch").MSRResNet


@torch.no_grad()
def basicsr_model_ema(net_g: torch.nn.Module, net_g_ema: torch.nn.Module, decay: float = EMA_DECAY) -> None:
    """BasicSR's ``BaseModel.model_ema`` (``basicsr/models/base_model.py``, called at the end of
    ``SRModel.optimize_parameters`` in ``basicsr/models/sr_model.py``), as written there: for every
    parameter name of the EMA net, ``ema.data.mul_(decay).add_(net.data, alpha=1 - decay)``
    (parameters only, no buffers; ``get_bare_model`` unwraps DDP, not used here)."""
    net_g_params = dict(net_g.named_parameters())
    net_g_ema_params = dict(net_g_ema.named_parameters())
    for k in net_g_ema_params.keys():
        net_g_ema_params[k].data.mul_(decay).add_(net_g_params[k].data, alpha=1 - decay)


def basicsr_l1_loss(pred: torch.Tensor, target: torch.Tensor, loss_weight: float = 1.0) -> torch.Tensor:
    """BasicSR's ``L1Loss(loss_weight=1.0, reduction='mean')`` (``basicsr/losses/basic_loss.py``,
    ``loss_util.weighted_loss``): ``F.l1_loss(reduction='none')``, then ``.mean()`` (no weight), times
    ``loss_weight``."""
    return loss_weight * F.l1_loss(pred, target, reduction="none").mean()


def basicsr_step(net_g: torch.nn.Module, net_g_ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lq: torch.Tensor, gt: torch.Tensor) -> float:
    """One ``SRModel.optimize_parameters`` (``basicsr/models/sr_model.py``) with only the pixel loss:
    zero_grad, forward, L1, backward, step, the logged loss (``reduce_loss_dict``: ``.mean().item()``),
    EMA."""
    optimizer.zero_grad()
    output = net_g(lq)
    l_pix = basicsr_l1_loss(output, gt)
    l_pix.backward()
    optimizer.step()
    logged = l_pix.mean().item()
    basicsr_model_ema(net_g, net_g_ema, EMA_DECAY)
    return logged


def new_basicsr_model(msrresnet: type[torch.nn.Module], seed: int = 0):
    """(net_g in train mode, net_g_ema = a copy by ``model_ema(0)`` in eval mode, Adam) as
    ``SRModel.init_training_settings`` / ``setup_optimizers`` set them up."""
    torch.manual_seed(seed)
    net_g = msrresnet(**BASICSR_NET)
    net_g.train()
    net_g_ema = msrresnet(**BASICSR_NET)
    basicsr_model_ema(net_g, net_g_ema, 0)
    net_g_ema.eval()
    optimizer = torch.optim.Adam([p for p in net_g.parameters() if p.requires_grad], LR, betas=BETAS, weight_decay=0)
    return net_g, net_g_ema, optimizer


def make_batches(images: Path, batch_size: int, lr_patch: int, n: int = N_BATCHES,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (LR, HR) float batches in [0, 1]: random HR crops of ``lr_patch * 4`` pixels from the
    images of ``images``, their LR by sfsr's MATLAB-exact bicubic (``make_lr_batch``), made now."""
    rng = np.random.default_rng(seed)
    photos = [to_rgb(read_image(p)) for p in list_images(images)]
    size = lr_patch * SCALE
    photos = [p for p in photos if p.shape[0] >= size and p.shape[1] >= size]
    if not photos:
        raise ValueError(f"no image in {images} is at least {size}x{size}")
    batches = []
    for _ in range(n):
        crops = []
        for _ in range(batch_size):
            photo = photos[rng.integers(len(photos))]
            top = rng.integers(photo.shape[0] - size + 1)
            left = rng.integers(photo.shape[1] - size + 1)
            crops.append(photo[top:top + size, left:left + size])
        hr = torch.from_numpy(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))
        lr = make_lr_batch(hr, SCALE)
        batches.append((lr.float().div_(255).contiguous(), hr.float().div_(255).contiguous()))
    return batches


def time_basicsr(msrresnet: type[torch.nn.Module], batches: list, iterations: int) -> dict:
    """BasicSR's step: :data:`WARMUP_STEPS` untimed, then ``iterations`` timed; s/it and the last loss."""
    net_g, net_g_ema, optimizer = new_basicsr_model(msrresnet)
    for i in range(WARMUP_STEPS):
        basicsr_step(net_g, net_g_ema, optimizer, *batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(iterations):
        loss = basicsr_step(net_g, net_g_ema, optimizer, *batches[(WARMUP_STEPS + i) % len(batches)])
    elapsed = time.perf_counter() - start
    return {"s_per_it": elapsed / iterations, "timed_iterations": iterations, "last_loss": loss,
            "net": net_g}


def time_sfsr(arch: str, images: Path, out_dir: Path, iterations: int, batch_size: int,
              lr_patch: int) -> dict:
    """sfsr's real loop in fp32 (module docstring); s/it from train_log.csv as train_speed.py measures it."""
    log_every = max(1, iterations // 10)
    cfg = dict(arch=arch, scale=SCALE, kwargs=dict(num_blocks=16, num_features=64),
               iterations=iterations + log_every, batch_size=batch_size, lr_patch=lr_patch, lr=LR,
               log_every=log_every, val_every=10**9, checkpoint_every=10**9, num_workers=0,
               ema_decay=EMA_DECAY, device="cpu", bf16=False, channels_last=False, compile=False)
    generator = train("warmup", cfg, train_hr_dirs=[images], valid_hr_dirs=[], out_dir=out_dir, seed=0)
    log = pd.read_csv(out_dir / "train_log.csv").dropna(subset=["lr"])
    first, last = log.iloc[0], log.iloc[-1]
    timed = int(last.iteration - first.iteration)
    return {"s_per_it": (last.elapsed_s - first.elapsed_s) / timed, "timed_iterations": timed,
            "ran": ran(out_dir), "data_wait_fraction": float(log.data_wait_fraction.iloc[1:].mean()),
            "generator": generator}


def compare_architectures(basicsr_net: torch.nn.Module, sfsr_net: torch.nn.Module) -> dict:
    """Whether the two nets have the same number of parameters and the same list of parameter shapes
    in order (names may differ): ``same_count``, ``same_shapes``, ``same`` (both), and the counts."""
    a = [tuple(p.shape) for p in basicsr_net.parameters()]
    b = [tuple(p.shape) for p in sfsr_net.parameters()]
    same_count = count_parameters(basicsr_net) == count_parameters(sfsr_net)
    return {"same": same_count and a == b, "same_count": same_count, "same_shapes": a == b,
            "basicsr_params": count_parameters(basicsr_net), "sfsr_params": count_parameters(sfsr_net),
            "basicsr_tensors": len(a), "sfsr_tensors": len(b)}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (module docstring); prints and returns one row per round."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--basicsr-source", type=Path, default=None,
                        help="basicsr-1.4.2.tar.gz or its extracted folder (default: $SFSR_BASICSR_SOURCE)")
    parser.add_argument("--images", type=Path, default=None, help="folder of training HR images")
    parser.add_argument("--arch", default="msrresnet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr-patch", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    source = source_from(args.basicsr_source)
    if source is None or not source.exists():
        raise SystemExit(f"give --basicsr-source or ${ENV} (now {source})")
    msrresnet = load_msrresnet(source)
    threads = args.threads or torch.get_num_threads()
    rows, nets = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = training_images(args.images, tmp)
        batches = make_batches(images, args.batch_size, args.lr_patch)
        for r in range(1, args.rounds + 1):
            order = ("sfsr", "basicsr") if r % 2 else ("basicsr", "sfsr")
            row = {"round": r, "order": "+".join(order)}
            for side in order:
                torch.set_num_threads(threads)
                row[f"{side}_load_before"] = _load()
                if side == "sfsr":
                    res = time_sfsr(args.arch, images, tmp / f"sfsr{r}", args.iterations,
                                    args.batch_size, args.lr_patch)
                    nets["sfsr"] = res.pop("generator")
                    row["sfsr_ran"] = res.pop("ran")
                    row["sfsr_data_wait_fraction"] = res.pop("data_wait_fraction")
                else:
                    res = time_basicsr(msrresnet, batches, args.iterations)
                    nets["basicsr"] = res.pop("net")
                    res.pop("last_loss")
                row[f"{side}_load_after"] = _load()
                row[f"{side}_threads_after"] = torch.get_num_threads()
                row[f"{side}_s_per_it"] = res["s_per_it"]
                row[f"{side}_timed_iterations"] = res["timed_iterations"]
            row["ratio"] = row["basicsr_s_per_it"] / row["sfsr_s_per_it"]
            rows.append(row)
            print(f"round {r} ({row['order']}): sfsr {row['sfsr_s_per_it']:.4f} s/it "
                  f"[{row['sfsr_ran']}], BasicSR {row['basicsr_s_per_it']:.4f} s/it, "
                  f"ratio (BasicSR/sfsr) {row['ratio']:.3f}; load sfsr {row['sfsr_load_before']}->"
                  f"{row['sfsr_load_after']}, BasicSR {row['basicsr_load_before']}->"
                  f"{row['basicsr_load_after']}", flush=True)
        sfsr_net = load_generator(nets["sfsr"])[0]
    arch = compare_architectures(nets["basicsr"], sfsr_net)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"median ratio (BasicSR s/it / sfsr s/it, > 1: sfsr faster): "
          f"{statistics.median(r['ratio'] for r in rows):.3f} over {len(rows)} rounds")
    print(f"torch {torch.__version__}, threads {threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"batch {args.batch_size}, LR patch {args.lr_patch}, {args.iterations} timed iterations, "
          f"sfsr arch {args.arch}, ran {sorted({r['sfsr_ran'] for r in rows})}")
    print(f"parameters: BasicSR MSRResNet {arch['basicsr_params']}, sfsr {args.arch} {arch['sfsr_params']}; "
          f"same count {arch['same_count']}, same shapes in order {arch['same_shapes']}")
    return rows


if __name__ == "__main__":
    main()
