"""Big inputs and bad checkpoints in ``sfsr upscale`` (issue 22, items 6 and 7; docs/reliability.md).

* Memory: a pass estimates its need (:mod:`sfsr.memory`) and tiles on its own, or refuses, in one
  line; a failed allocation anywhere ends in one line naming the image and a ``--tile``; bicubic runs
  in bounded bands, bit-identical to ``imresize``; the SSEN non-local block attends in bounded chunks.
  Nothing here allocates more than a few hundred MB: the big case runs in a child under an
  address-space limit (``prlimit --as``), the decisions are tested with a given "available" value.
* Checkpoints: corrupt, hostile, unreadable, mismatching, oversized-spec and non-finite files are
  refused in one line that says which, without torch's advice to load unsafely.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import corrupt, without_dac_override
from sfsr import inference, memory
from sfsr.cli import main
from sfsr.data import bicubic as bc
from sfsr.data.bicubic import imresize
from sfsr.data.images import read_image
from sfsr.errors import DataError
from sfsr.models import (GENERATORS, build_generator, generator_spec, implied_tensor_count, load_generator,
                         save_generator)
from sfsr.models.ssen import SSEN, NonLocalBlock

SRC = Path(inference.__file__).resolve().parents[1]  # children run the sfsr this process imported
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2"}
TINY = {"num_blocks": 1, "num_features": 8}


def _image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _checkpoint(path: Path, scale: int = 2, **kwargs) -> Path:
    kwargs = kwargs or TINY
    torch.manual_seed(0)
    save_generator(path, build_generator("edsr_baseline", scale, **kwargs),
                   generator_spec("edsr_baseline", scale, **kwargs))
    return path


def _upscale(capsys, *args: str) -> tuple[int, str]:
    rc = main(["upscale", "--quiet", "--device", "cpu", *map(str, args)])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ the estimate
def test_peak_values_follow_the_architecture():
    """A pixel-shuffle x4 upsampler's largest map is F x 4h x 4w (16 F per LR pixel), held
    ACTIVATION_COPIES times; the autoencoder's transposed convolutions add their column buffer."""
    edsr = build_generator("edsr_baseline", 4, num_blocks=1, num_features=16)
    assert memory.peak_values(edsr) == memory.ACTIVATION_COPIES * 16 * 16
    assert memory.model_bytes_per_lr_pixel(1024, 4) == 4 * (1024 + 3 + 9 * 16)
    auto = build_generator("autoencoder", 2, num_blocks=1, num_features=8)
    # last ConvTranspose2d(8, 8, 4, stride 2): input 8 x 2h x 2w (32/px), output 8 x 4h x 4w (128/px),
    # columns 8*4*4 per input pixel (4 per LR pixel): 512/px; the largest map: 128/px
    assert memory.peak_values(auto) == max(memory.ACTIVATION_COPIES * 128, 32 + 128 + 512)


def test_plan_tile_whole_tiles_or_refuses():
    per_px, gib = 16_972, memory.GiB  # EDSR-baseline x4 (64 features)
    fits = memory.plan_tile(per_px, 100, 150, 4, 16, available=8 * gib)
    assert fits.tile is None and fits.need == fits.need_whole
    # a 6000x4000 photo at x4: ~380 GiB whole; the largest multiple of 16 whose tile fits 80% of 9.8 GiB
    plan = memory.plan_tile(per_px, 4000, 6000, 4, 16, available=int(9.8 * gib))
    budget = memory.BUDGET_FRACTION * 9.8 * gib
    assert plan.tile % memory.TILE_STEP == 0 and plan.need <= budget < plan.need_whole
    bigger = per_px * (plan.tile + memory.TILE_STEP + 32) ** 2 + memory.fixed_bytes(4000, 6000, 4)
    assert bigger > budget
    assert plan.need == per_px * (plan.tile + 32) ** 2 + memory.fixed_bytes(4000, 6000, 4)
    with pytest.raises(memory.NotEnoughMemory) as err:  # not even tiles of 32 (64x64 with context)
        memory.plan_tile(per_px, 4000, 6000, 4, 16, available=int(1.5 * gib))
    assert err.value.plan.tile == memory.MIN_TILE and not err.value.host_short
    # a GPU: tiles sized by the device's memory, the whole-image arrays by the host's
    gpu = memory.plan_tile(per_px, 4000, 6000, 4, 16, available=2 * gib, host_available=64 * gib)
    assert gpu.tile is not None and gpu.need == per_px * (gpu.tile + 32) ** 2
    with pytest.raises(memory.NotEnoughMemory) as err:
        memory.plan_tile(per_px, 4000, 6000, 4, 16, available=64 * gib, host_available=gib)
    assert err.value.host_short


def test_available_memory_reads_the_cgroup_limit(tmp_path):
    (tmp_path / "proc").write_text("4:memory:/job\n0::/job\n")
    v1 = tmp_path / "cg" / "memory" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(3 << 30))
    (v1 / "memory.usage_in_bytes").write_text(str(2 << 30))
    (v1 / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {512 << 20}\n")
    (v1.parent / "memory.limit_in_bytes").write_text("9223372036854771712")  # the root: no limit
    assert memory.cgroup_available(tmp_path / "cg", tmp_path / "proc") == (3 << 30) - (2 << 30) + (512 << 20)
    v2 = tmp_path / "cg2" / "job"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text(str(4 << 30))
    (v2 / "memory.current").write_text(str(1 << 30))
    (v2.parent / "memory.max").write_text("max")
    assert memory.cgroup_available(tmp_path / "cg2", tmp_path / "proc") == 3 << 30
    assert memory.available_memory() > 0


def test_upscale_tiles_on_its_own_in_one_line_or_refuses(tmp_path, monkeypatch, caplog, capsys):
    lr = read_image(_image(tmp_path / "in" / "photo.png", 60, 80))
    model, _ = load_generator(_checkpoint(tmp_path / "g.pt"))
    per_px = memory.model_bytes_per_lr_pixel(memory.peak_values(model), 2)
    whole = per_px * 60 * 80 + memory.fixed_bytes(60, 80, 2)
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": whole)  # plans use 80% of it
    with caplog.at_level("WARNING", logger="sfsr.inference"):
        auto = inference.upscale_image(lr, scale=2, model=model, tile="auto", tile_overlap=4, name="photo.png")
    # the library default (what the study runs) stays the whole image whatever the memory
    np.testing.assert_array_equal(inference.upscale_image(lr, scale=2, model=model, tile_overlap=4),
                                  inference.upscale_image(lr, scale=2, model=model, tile=10**6, tile_overlap=4))
    (line,) = [r.getMessage() for r in caplog.records]
    tile = int(re.fullmatch(r"photo\.png: image 80x60 needs ~\S+ MiB untiled, \S+ MiB available: tiling "
                            r"with --tile (\d+)", line).group(1))
    assert tile < 80
    np.testing.assert_array_equal(auto, inference.upscale_image(lr, scale=2, model=model, tile=tile, tile_overlap=4))
    # nothing fits: one line with the numbers and the --tile to force a try
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2 << 20)
    rc, err = _upscale(capsys, "--checkpoint", tmp_path / "g.pt", tmp_path / "in" / "photo.png", tmp_path / "out.png")
    assert rc == 2 and not (tmp_path / "out.png").exists()
    assert re.search(r"photo\.png: image 80x60 needs ~[\d.]+ MiB untiled and ~[\d.]+ MiB even in tiles of 32, 2.0 MiB "
                     r"available on cpu; free memory, or try anyway with --tile 32$", _one_line(err))


@pytest.mark.parametrize("where", ["model", "bicubic", "write"])
def test_a_failed_allocation_is_one_line_naming_the_image(tmp_path, monkeypatch, capsys, where):
    src = _image(tmp_path / "photo.png", 40, 50)
    ckpt = _checkpoint(tmp_path / "g.pt")
    if where == "model":
        def oom(*args, **kwargs):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 9663676416 bytes. Error code 12 (Cannot allocate memory)")
        monkeypatch.setattr(inference, "_run_model", oom)
        rc, err = _upscale(capsys, "--checkpoint", ckpt, "--tile", "1000", src, tmp_path / "out.png")
        line = _one_line(err)
        assert re.search(r"photo\.png: out of memory upscaling this 50x40 image x2 whole on cpu; try --tile \d+$", line)
        rc2, err2 = _upscale(capsys, "--checkpoint", ckpt, "--tile", "16", src, tmp_path / "out.png")
        assert rc2 == 2 and _one_line(err2).endswith("image x2 in tiles of 16 on cpu; free memory or use a machine with more")
    elif where == "bicubic":
        def oom(*args, **kwargs):
            raise MemoryError("Unable to allocate 37.1 GiB for an array with shape (16000, 24000, 3)")
        monkeypatch.setattr(bc, "_gather_pass_np", oom)
        rc, err = _upscale(capsys, "--scale", "4", src, tmp_path / "out.png")
        assert "photo.png: out of memory upscaling this 50x40 image with bicubic x4" in _one_line(err)
    else:
        def oom(*args, **kwargs):
            raise MemoryError()
        monkeypatch.setattr(inference.io, "save_image", oom)
        rc, err = _upscale(capsys, "--scale", "2", src, tmp_path / "out.png")
        assert "photo.png: out of memory reading, upscaling or writing this image" in _one_line(err)
    assert rc == 2 and not (tmp_path / "out.png").exists()


def _vm_size_after_imports() -> int:
    probe = ("import sfsr.cli, sfsr.inference, sfsr.models, torch\n"
             "print(open('/proc/self/status').read().split('VmSize:')[1].split()[0])")
    return int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV,
                              check=True).stdout) * 1024


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="util-linux's prlimit is missing")
def test_under_an_address_space_limit_a_big_image_is_tiled_or_refused_in_one_line(tmp_path):
    """LR 600x600 x4 with a 16-feature EDSR: ~1.6 GiB estimated whole (~0.9 GB measured); the child
    may map 600 MiB beyond what Python + torch map at import (``prlimit --as``). Without --tile it
    tiles on its own (the output equals --tile T's); forced whole, its allocation fails: one line."""
    src = _image(tmp_path / "big.png", 600, 600)
    ckpt = _checkpoint(tmp_path / "g.pt", scale=4, num_blocks=1, num_features=16)
    limit = _vm_size_after_imports() + (600 << 20)
    cli = ["prlimit", f"--as={limit}", sys.executable, "-m", "sfsr.cli", "upscale", "--quiet", "--device", "cpu",
           "--checkpoint", str(ckpt)]
    run = subprocess.run(cli + [str(src), str(tmp_path / "auto.png")], capture_output=True, text=True, env=ENV)
    assert run.returncode == 0, run.stderr
    line = _one_line(run.stderr)
    tile = int(re.fullmatch(rf"{re.escape(str(src))}: image 600x600 needs ~1\.\d GiB untiled, \d+ MiB available: "
                            r"tiling with --tile (\d+)", line).group(1))
    model, _ = load_generator(ckpt)
    np.testing.assert_array_equal(read_image(tmp_path / "auto.png"),
                                  inference.upscale_image(read_image(src), scale=4, model=model, tile=tile))
    run = subprocess.run(cli + ["--tile", "100000", str(src), str(tmp_path / "whole.png")], capture_output=True,
                         text=True, env=ENV)
    assert run.returncode == 2 and not (tmp_path / "whole.png").exists()
    assert re.fullmatch(rf"sfsr upscale: error: {re.escape(str(src))}: out of memory upscaling this 600x600 image "
                        r"x4 whole on cpu; try --tile \d+", _one_line(run.stderr))


# ---------------------------------------------------------------------------------- bicubic
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_bicubic_in_bands_is_bit_identical_to_imresize(monkeypatch, scale):
    monkeypatch.setattr(inference, "BICUBIC_BAND_BYTES", 40 * 3 * 8 * 50 * 3)  # bands of a few rows
    rng = np.random.default_rng(scale)
    for shape in [(37, 53, 3), (41, 29), (1, 7, 3), (6, 1)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(inference.upscale_image(image, scale=scale), imresize(image, scale=scale))


def test_bicubic_memory_is_the_result_plus_one_band(monkeypatch):
    """numpy's allocations are traced: a 200x300 RGB x4 (a 2.9 MB result) peaks at the result plus
    the band budget, where one piece (imresize) holds ~100 MB of float64 temporaries."""
    monkeypatch.setattr(inference, "BICUBIC_BAND_BYTES", 1 << 20)
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        out = inference.upscale_image(image, scale=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= out.nbytes + (1 << 20) + (1 << 20), peak  # + the band's uint8 rows and weights


# -------------------------------------------------------------------------------- non-local
class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor (values) each aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                name = func.overloadpacket.__name__
                self.largest[name] = max(self.largest.get(name, 0), t.numel())
        return out


def test_non_local_attention_is_chunked_and_bounded(monkeypatch):
    """A 64x64 map (4096 positions) attends through a 16.8M-value matrix in one piece; with chunks of
    2^18 values the largest similarity or softmax tensor is 2^18 (its peak: two such float32 arrays,
    2 MiB), and the result equals the one-piece formula."""
    torch.manual_seed(0)
    block = NonLocalBlock(8).eval()
    torch.nn.init.normal_(block.out.weight)  # not the identity it starts as
    x = torch.randn(1, 8, 64, 64)
    with torch.no_grad():
        theta = block.theta(x).flatten(2).transpose(1, 2)
        reference = x + block.out((torch.softmax(theta @ block.phi(x).flatten(2), dim=-1)
                                   @ block.g(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 4, 64, 64))
    monkeypatch.setattr("sfsr.models.ssen.ATTENTION_CHUNK_VALUES", 1 << 18)
    mode = _LargestTensor()
    with torch.inference_mode(), mode:
        y = block(x)
    assert max(mode.largest["matmul"], mode.largest["softmax"]) == 1 << 18, mode.largest
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    # a whole SSEN forward (LR 96x80 -> 3840 positions at the estimator's first level): bounded too
    ssen = SSEN(2, num_features=8, num_blocks=1, extract_blocks=1, num_deform=1, offset_features=8).eval()
    mode = _LargestTensor()
    with torch.inference_mode(), mode:
        ssen(torch.rand(1, 3, 96, 80), torch.rand(1, 3, 192, 160))
    assert mode.largest["softmax"] <= 1 << 18 < 3840 ** 2


def test_ssen_checkpoint_is_refused_by_upscale(tmp_path, capsys):
    kw = dict(num_blocks=1, num_features=8, extract_blocks=1, num_deform=1, offset_features=8)
    ckpt = tmp_path / "ssen.pt"
    save_generator(ckpt, build_generator("ssen", 2, **kw), generator_spec("ssen", 2, **kw))
    rc, err = _upscale(capsys, "--checkpoint", ckpt, _image(tmp_path / "a.png", 16, 16), tmp_path / "out.png")
    assert rc == 2 and _one_line(err) == (
        f"sfsr upscale: error: {ckpt} is an SSEN (reference-based) generator; sfsr upscale takes single-image "
        "generators; evaluate it with the refsr stage (docs/refsr.md)")


# ------------------------------------------------------------------------------ checkpoints
REASONS = {"truncated": "not a torch checkpoint (truncated or corrupt); delete it and re-run training",
           "empty": "empty (0 bytes), not a torch checkpoint (truncated or corrupt)",
           "garbage": "not a torch checkpoint (truncated or corrupt)",
           "unsafe_pickle": "holds Python objects that a safe load refuses (it could run code); only load "
                            "checkpoints you trust made by sfsr",
           "unsafe_zip": "holds Python objects that a safe load refuses (it could run code)"}


class _Foreign:
    """An object a safe load refuses, saved by torch.save in its zip format."""


@pytest.mark.parametrize("case", sorted(REASONS))
def test_a_bad_checkpoint_is_one_line_without_torchs_advice(tmp_path, capsys, case):
    ckpt = _checkpoint(tmp_path / "g.pt")
    if case == "unsafe_zip":
        torch.save({"arch": {}, "state_dict": {}, "extra": _Foreign()}, ckpt)
    else:
        corrupt(ckpt, case)
    rc, err = _upscale(capsys, "--checkpoint", ckpt, _image(tmp_path / "a.png", 16, 16), tmp_path / "out.png")
    line = _one_line(err)
    assert rc == 2 and line.startswith(f"sfsr upscale: error: generator checkpoint {ckpt}: ") and REASONS[case] in line
    assert "weights_only" not in line and "likely succeed" not in line and "Re-running" not in line
    assert ("corrupt" in line) != case.startswith("unsafe") and not Path("/tmp/sfsr_pwned").exists()


def test_an_unreadable_checkpoint_is_not_called_corrupt(tmp_path):
    ckpt = _checkpoint(tmp_path / "g.pt")
    src = _image(tmp_path / "a.png", 16, 16)
    ckpt.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    prefix = without_dac_override(locked)  # skips where the override cannot be dropped
    run = subprocess.run(prefix + [sys.executable, "-m", "sfsr.cli", "upscale", "--quiet", "--device", "cpu",
                                   "--checkpoint", str(ckpt), str(src), str(tmp_path / "out.png")],
                         capture_output=True, text=True, env=ENV)
    assert run.returncode == 2 and _one_line(run.stderr) == (
        f"sfsr upscale: error: cannot read {ckpt}: Permission denied; check the file's permissions")


def _edited(tmp_path: Path, name: str, arch: dict | None = None, state=None) -> Path:
    ckpt = torch.load(_checkpoint(tmp_path / "g.pt"), weights_only=True)
    if arch is not None:
        ckpt["arch"] = arch
    if state is not None:
        ckpt["state_dict"] = state(ckpt["state_dict"])
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def test_weights_that_do_not_fit_their_spec_are_one_line(tmp_path, capsys):
    src = _image(tmp_path / "a.png", 16, 16)
    wide = _edited(tmp_path, "wide.pt", generator_spec("edsr_baseline", 2, num_blocks=1, num_features=16))
    rc, err = _upscale(capsys, "--checkpoint", wide, src, tmp_path / "out.png")
    assert rc == 2 and _one_line(err) == (
        f"sfsr upscale: error: {wide}: the weights do not match the generator its spec describes (edsr_baseline x2 "
        "{'num_blocks': 1, 'num_features': 16, 'base': 'none'}): 11 tensors differ in shape, e.g. head.weight "
        "(8, 3, 3, 3) in the file vs (16, 3, 3, 3); the file is damaged or was edited")
    # a spec of 100,000 blocks is refused before anything of that size is built
    huge = _edited(tmp_path, "huge.pt", generator_spec("edsr_baseline", 2, num_blocks=100_000, num_features=8))
    start = time.perf_counter()
    rc, err = _upscale(capsys, "--checkpoint", huge, src, tmp_path / "out.png")
    assert rc == 2 and time.perf_counter() - start < 5
    assert _one_line(err).endswith("): the spec implies 400,009 tensors, the file holds 13; the file is damaged "
                                   "or was edited")
    renamed = _edited(tmp_path, "renamed.pt",
                      state=lambda sd: {("tale.weight" if k == "tail.weight" else k): v for k, v in sd.items()})
    rc, err = _upscale(capsys, "--checkpoint", renamed, src, tmp_path / "out.png")
    assert rc == 2 and "1 tensors missing (e.g. tail.weight), 1 not in the generator (e.g. tale.weight)" in _one_line(err)
    assert not (tmp_path / "out.png").exists()


def test_implied_tensor_count_matches_every_generator():
    for name in GENERATORS:
        for kw in ({"num_blocks": 3}, {"num_blocks": 5, "extract_blocks": 2, "num_deform": 4},
                   {"num_blocks": 2, "use_reference": False}):
            kw = {k: v for k, v in kw.items() if k in GENERATORS[name][1]}
            for scale in (2, 3, 4, 8):
                with torch.device("meta"):
                    real = len(build_generator(name, scale, **kw).state_dict())
                assert implied_tensor_count(name, scale, kw) == real, (name, scale, kw)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, capsys, value):
    def poison(sd):
        sd = dict(sd)
        for k in ("head.weight", "tail.bias"):
            sd[k] = sd[k].clone()
            sd[k].view(-1)[0] = value
        return sd

    bad = _edited(tmp_path, "bad.pt", state=poison)
    rc, err = _upscale(capsys, "--checkpoint", bad, _image(tmp_path / "a.png", 16, 16), tmp_path / "out.png")
    assert rc == 2 and _one_line(err) == (f"sfsr upscale: error: {bad}: 2 of 13 weight tensors hold NaN/inf; the "
                                          "training diverged or the file is damaged")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(DataError, match="2 of 13 weight tensors hold NaN/inf"):
        load_generator(bad)
