"""SSEN (reference-based SR with similarity-aware deformable convolution): shapes, the number of
deformable layers and the non-local switch, zero-initialised offsets, gradients into the offset
estimator, alignment that can follow a known shift, and a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfsr.models.residual import bicubic_upsample
from sfsr.models.ssen import SSEN, DeformableAlignment, LocalMatcher, NonLocalBlock

TINY = dict(num_features=8, num_blocks=1, extract_blocks=1, offset_features=8)


@pytest.mark.parametrize("ref_downsample", ["conv", "unshuffle"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shapes_and_a_reference_of_another_size(scale, ref_downsample):
    torch.manual_seed(0)
    model = SSEN(scale, ref_downsample=ref_downsample, **TINY)
    lr = torch.rand(2, 3, 12, 10)
    assert model(lr, torch.rand(2, 3, 12 * scale, 10 * scale)).shape == (2, 3, 12 * scale, 10 * scale)
    # a reference of another size (CUFED5 references are) is resized to the target's HR size
    assert model(lr, torch.rand(2, 3, 40, 70)).shape == (2, 3, 12 * scale, 10 * scale)
    with pytest.raises(ValueError, match="needs a reference"):
        model(lr)


@pytest.mark.parametrize("num_deform", [1, 3, 5])
@pytest.mark.parametrize("non_local", [True, False])
def test_deformable_layers_and_the_non_local_switch_are_honoured(num_deform, non_local):
    model = SSEN(4, num_deform=num_deform, non_local=non_local, **TINY)
    assert len(model.align) == num_deform
    blocks = [m for m in model.modules() if isinstance(m, NonLocalBlock)]
    assert len(blocks) == (3 * num_deform if non_local else 0)
    model(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64))
    assert len(model.offset_magnitudes) == num_deform
    for bad in (0, 6):
        with pytest.raises(ValueError, match="num_deform must be 1..5"):
            SSEN(4, num_deform=bad, **TINY)
    from sfsr.models import build_generator
    with pytest.raises(ValueError, match="'ref_downsample'.*'conv' or 'unshuffle'"):
        build_generator("ssen", 4, ref_downsample="stride")


def test_offsets_start_at_zero_so_a_fresh_layer_is_a_plain_convolution():
    torch.manual_seed(0)
    layer = DeformableAlignment(8, 8)
    lr_features, ref_features = torch.rand(2, 8, 11, 9), torch.rand(2, 8, 11, 9)
    aligned, offset = layer(lr_features, ref_features)
    assert offset.shape == (2, 18, 11, 9) and torch.count_nonzero(offset) == 0
    plain = F.conv2d(ref_features, layer.weight, layer.bias, padding=1)
    assert torch.allclose(aligned, plain, atol=1e-6)


def test_an_untrained_model_with_the_bicubic_base_outputs_bicubic():
    model = SSEN(4, base="bicubic", **TINY)
    lr = torch.rand(1, 3, 10, 10)
    assert torch.allclose(model(lr, torch.rand(1, 3, 40, 40)), bicubic_upsample(lr, 4), atol=1e-6)


def test_gradients_reach_the_offset_estimator_after_the_first_step():
    torch.manual_seed(0)
    model = SSEN(4, **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr, ref, hr = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    for _ in range(2):
        opt.zero_grad()
        F.l1_loss(model(lr, ref), hr).backward()
        opt.step()
    first = model.align[0]
    assert first.to_offset.weight.grad.abs().sum() > 0
    assert first.estimator.down[0][0].weight.grad.abs().sum() > 0  # through the predicted offsets
    assert max(model.offset_magnitudes) > 0


def test_deformable_alignment_learns_a_known_shift():
    """Reference features are the LR features shifted by 2 pixels: 120 steps of the offset
    layers alone must align them far better than the zero offsets do (what SSEN is for)."""
    torch.manual_seed(0)
    layer = DeformableAlignment(4, 8, non_local=False)
    with torch.no_grad():  # make the conv an identity tap, so only the offsets have to learn
        layer.weight.zero_()
        layer.weight[:, :, 1, 1] = torch.eye(4)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    base = F.avg_pool2d(torch.rand(2, 4, 32, 32), 5, stride=1, padding=2)  # smooth: offsets have a gradient
    target, ref = base[..., 4:-4, 4:-4], base[..., 4:-4, 6:-2]  # ref(x) = target(x + 2)
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    before = F.l1_loss(layer(target, ref)[0], target).item()
    for _ in range(120):
        opt.zero_grad()
        loss = F.l1_loss(layer(target, ref)[0][..., 3:-3, 3:-3], target[..., 3:-3, 3:-3])
        loss.backward()
        opt.step()
    after = F.l1_loss(layer(target, ref)[0][..., 3:-3, 3:-3], target[..., 3:-3, 3:-3]).item()
    assert after < 0.3 * before, (before, after)
    dx = layer(target, ref)[1][:, 2 * 4 + 1]  # (dy, dx) per tap: dx of the centre tap (tap 4)
    assert dx[..., 3:-3, 3:-3].mean().item() == pytest.approx(-2.0, abs=0.5)


def test_the_no_reference_control_has_no_reference_branch():
    model = SSEN(4, use_reference=False, **TINY)
    assert not hasattr(model, "align") and not hasattr(model, "ref_head")
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    full = sum(p.numel() for p in SSEN(4, **TINY).parameters())
    assert sum(p.numel() for p in model.parameters()) < full


def test_non_local_block_starts_as_identity():
    block = NonLocalBlock(8)
    x = torch.rand(2, 8, 5, 7)
    assert torch.equal(block(x), x)
    assert isinstance(block.out, nn.Conv2d)


def _photo_crop(size: int) -> torch.Tensor:
    """A textured RGB crop of a real photograph (scikit-image's astronaut), (1, 3, size, size) in [0, 1]."""
    import skimage.data

    a = skimage.data.astronaut()[100:100 + size, 180:180 + size]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255


def test_the_matcher_finds_an_integer_shift_of_a_photo():
    """Block matching on a real photo: where the reference is the LR image moved by (-2, 1) pixels,
    the matched offset of the interior pixels is that shift."""
    lr = F.interpolate(_photo_crop(160), scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)
    ref = torch.roll(lr, shifts=(-2, 1), dims=(2, 3))  # lr(p) = ref(p + (-2, 1))
    offset = LocalMatcher(3)(lr, ref)[0, :, 6:-6, 6:-6]
    assert offset[0].median().item() == pytest.approx(-2.0, abs=0.05)
    assert offset[1].median().item() == pytest.approx(1.0, abs=0.05)
    assert LocalMatcher(3)(lr, lr)[0, :, 6:-6, 6:-6].abs().median().item() < 0.05


def _moved_reference_gap(**kwargs) -> float:
    """Largest output difference, away from the borders, of an untrained SSEN given the target's own
    HR and the same HR moved by one LR pixel on both axes."""
    torch.manual_seed(0)
    hr = _photo_crop(96)
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)
    model = SSEN(scale=4, non_local=False, **TINY, **kwargs).eval()
    with torch.no_grad():  # an untrained tail outputs zeros: make the reference path visible
        nn.init.normal_(model.tail.weight, std=0.1)
        same = model(lr, hr)[..., 32:-32, 32:-32]
        moved = model(lr, torch.roll(hr, shifts=(4, -4), dims=(2, 3)))[..., 32:-32, 32:-32]
    return (same - moved).abs().max().item()


def test_a_fresh_matched_ssen_reads_a_moved_reference_where_the_content_is():
    """With matching, an untrained SSEN's output for a reference moved by one LR pixel is (offset
    mode) or nearly is (warp mode: sub-pixel refinement) its output for the unmoved reference;
    without matching it is not."""
    unmatched = _moved_reference_gap()
    assert unmatched > 2e-3
    assert _moved_reference_gap(match_radius=2, match_mode="offset") < 0.02 * unmatched
    assert _moved_reference_gap(match_radius=2, match_mode="warp") < 0.1 * unmatched


def test_sub_pixel_flow_and_the_warp_bring_a_moved_photo_back():
    """LocalMatcher.flow on the LR images of a photo and of the photo moved by (2, 5) HR pixels (half
    and one and a quarter LR pixels): the flow is that shift within 0.25 LR pixel, and warping the
    moved HR photo by the flow (upsampled to HR) brings it back far closer than it was."""
    from sfsr.models.ssen import warp

    hr = _photo_crop(160)
    ref = torch.roll(hr, shifts=(2, 5), dims=(2, 3))  # hr(p) = ref(p + (2, 5))
    down = lambda x: F.interpolate(x, scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)  # noqa: E731
    flow, peak = LocalMatcher(3).flow(down(hr), down(ref))
    inner = flow[0, :, 6:-6, 6:-6]
    assert inner[0].median().item() == pytest.approx(0.5, abs=0.25)
    assert inner[1].median().item() == pytest.approx(1.25, abs=0.25)
    assert peak.shape == (1, 1, 40, 40) and peak[0, 0, 6:-6, 6:-6].median().item() > 0.8
    back = warp(ref, F.interpolate(flow, scale_factor=4, mode="bilinear", align_corners=False) * 4)
    before = (ref - hr)[..., 30:-30, 30:-30].abs().mean().item()
    after = (back - hr)[..., 30:-30, 30:-30].abs().mean().item()
    assert after < 0.4 * before, (before, after)


def test_match_radius_is_checked_and_needs_the_reference_branch():
    from sfsr.model_options import OptionError, generator_kwargs

    with pytest.raises(OptionError, match="match_radius"):
        generator_kwargs("ssen", 4, {"match_radius": -1})
    with pytest.raises(OptionError, match="match_radius"):
        generator_kwargs("ssen", 4, {"match_radius": 2.5})
    assert generator_kwargs("ssen", 4, {"match_radius": 4})["match_radius"] == 4
    with pytest.raises(OptionError, match="match_gate"):
        generator_kwargs("ssen", 4, {"match_radius": 4, "match_gate": "yes"})
    with pytest.raises(OptionError, match="max_offset"):
        generator_kwargs("ssen", 4, {"max_offset": -1.0})
    with pytest.raises(OptionError, match="match_mode"):
        generator_kwargs("ssen", 4, {"match_radius": 4, "match_mode": "flow"})
    with pytest.raises(ValueError, match="match_radius needs the reference branch"):
        SSEN(scale=4, use_reference=False, match_radius=2, **TINY)


def test_the_match_gate_shuts_out_a_reference_that_matches_nowhere():
    """Warp mode with the gate (the default): the aligned reference features are weighted by the
    match confidence (NCC clamped to [0, 1]), so two flat references, which match nothing (NCC 0),
    give the same output (up to float rounding of the flat patches' NCC); without the gate their
    features reach the fusion and the outputs differ."""
    torch.manual_seed(0)
    lr = F.interpolate(_photo_crop(96), scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)
    dark, light = torch.full((1, 3, 96, 96), 0.2), torch.full((1, 3, 96, 96), 0.8)
    gaps = {}
    for gate in (True, False):
        torch.manual_seed(0)
        model = SSEN(scale=4, non_local=False, match_radius=2, match_gate=gate, **TINY).eval()
        with torch.no_grad():
            nn.init.normal_(model.tail.weight, std=0.1)
            gaps[gate] = (model(lr, dark) - model(lr, light)).abs().max().item()
    assert gaps[False] > 1e-3
    assert gaps[True] < 0.01 * gaps[False], gaps


def test_max_offset_bounds_the_learnt_offsets():
    """``max_offset`` > 0: a deformable layer's offsets stay within it however large the predicting
    layer's output (tanh bound); 0 leaves them as predicted (the paper)."""
    torch.manual_seed(0)
    lr_f, ref_f = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12)
    for bound in (0.0, 2.0):
        layer = DeformableAlignment(8, 8, non_local=False, max_offset=bound)
        with torch.no_grad():
            nn.init.normal_(layer.to_offset.weight, std=10.0)
            offset = layer.offsets(lr_f, ref_f)
        if bound:
            assert offset.abs().max().item() <= bound
            assert offset.abs().max().item() > 0.9 * bound  # saturated, not zeroed
        else:
            assert offset.abs().max().item() > 10.0


def test_a_checkpoint_keeps_its_gate_and_one_from_before_the_gate_loads_ungated(tmp_path):
    """The spec spells ``match_gate`` out, so a later default cannot change a saved model; a
    checkpoint written before the option existed (no key) is read as the ungated model it was."""
    from sfsr.models import generator_spec, load_generator, save_generator

    kwargs = dict(non_local=False, match_radius=2, **TINY)
    spec = generator_spec("ssen", 4, **kwargs)
    assert spec["kwargs"]["match_gate"] is True
    model = SSEN(scale=4, **kwargs)
    save_generator(tmp_path / "new.pt", model, spec)
    old = {**spec, "kwargs": {k: v for k, v in spec["kwargs"].items() if k != "match_gate"}}
    save_generator(tmp_path / "old.pt", model, old)
    assert load_generator(tmp_path / "new.pt")[0].match_gate is True
    assert load_generator(tmp_path / "old.pt")[0].match_gate is False
