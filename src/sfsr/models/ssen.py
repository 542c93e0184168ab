"""SSEN: reference-based SR with similarity-aware deformable convolution (Shim et al., CVPR 2020,
"Robust Reference-based Super-Resolution with Similarity-Aware Deformable Convolution").

Graph (``forward(lr, ref)``; ``lr`` (N,3,h,w), ``ref`` the HR reference (N,3,H,W), both in [0,1]):

1. **Features.** The LR image: 1x1 conv 3->F. The HR reference: brought to the LR grid inside the
   model — resized (bicubic, antialiased) to ``(h*s, w*s)`` when its size differs, then
   (``ref_downsample``) log2(s) stride-2 3x3 convs (x3: one stride-3 conv; ``conv``, as the
   reference implementation) or a lossless space-to-depth (``nn.PixelUnshuffle(s)``, 3*s*s channels
   per LR pixel) and a 3x3 conv (``unshuffle``). Both go through one shared extractor of
   ``extract_blocks`` residual blocks (conv-ReLU-conv, no batch norm).
2. **Alignment (SSEN).** ``num_deform`` (1-5, paper: 3) stacked deformable 3x3 convolutions
   (``torchvision.ops.deform_conv2d``); each samples the current reference features at offsets
   predicted from ``cat(lr features, reference features)`` by a **dynamic offset estimator**: a
   three-level encoder-decoder (stride-2 conv + LeakyReLU down; bilinear up + conv + LeakyReLU, with
   the skip added) with an embedded-Gaussian **non-local block** at each level (``non_local``:
   switchable for the ablation). The layer predicting the offsets starts at zero, so a fresh
   deformable layer is a plain 3x3 convolution of the reference features. No flow supervision.
   ``match_radius > 0`` (not in the paper; the fix of docs/refsr.md's diagnosis ladder): block
   matching of the LR image against the reference brought down to the LR grid (:class:`LocalMatcher`,
   zero-mean NCC of 5x5 patches within ``match_radius`` LR pixels). ``match_mode: warp`` (the
   default): the sub-pixel flow, upsampled to HR, warps the HR reference before step 1's features,
   and its NCC, clamped to [0, 1], weights the aligned reference features per LR pixel
   (``match_gate``, TTSR's soft attention) and joins the fusion as a confidence channel; ``offset``:
   the first deformable layer's offsets start from the expected displacement, the learnt offsets
   added on top. ``max_offset > 0`` bounds every learnt offset to that many LR-feature pixels
   (``max_offset * tanh(offset / max_offset)``, BasicVSR++'s ``max_residue_magnitude``): trained
   with references that match nowhere, unbounded offsets diverged (docs/refsr.md).
3. **Fusion and trunk.** ``cat(lr features, aligned reference features)`` -> 1x1 conv -> the
   EDSR-baseline trunk (``num_blocks`` residual blocks without batch norm, conv, global skip) ->
   pixel-shuffle upsampler -> 3x3 conv to RGB, plus the residual ``base`` as in every generator of
   the project (``docs/models.md``).

``use_reference=False`` builds the same network without the reference branch (the fusion conv sees
the LR features only): the no-reference control trained on the same data and budget.

:attr:`SSEN.offset_magnitudes` holds the mean absolute offset (in LR-feature pixels) of each
deformable layer after every forward pass (0-d tensors on the model's device, read when logged): the training loop logs it and warns when it explodes, a
known instability of deformable alignment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfsr.model_options import MAX_DEFORM
from sfsr.models.blocks import pixel_shuffle_upsampler, upsampling_factors
from sfsr.models.residual import SRGenerator

__all__ = ["SSEN", "NonLocalBlock", "DynamicOffsetEstimator", "DeformableAlignment", "LocalMatcher"]

# MAX_DEFORM (1..5 deformable layers) lives in the torch-free sfsr.model_options: the workflow checks it
# when it is parsed.


class ResidualBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 plus identity (EDSR's block, res_scale 1, no batch norm)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(num_features, num_features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(num_features, num_features, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


#: Similarity values (float32) a non-local block computes at once outside autograd (64 MiB): the
#: ``hw x hw`` attention matrix of an ``h x w`` map is made in chunks of query rows, so inference on a
#: large image holds at most two such arrays (the logits and their softmax: 128 MiB) instead of
#: ``2 (hw)^2`` values (a 2000x1500 x4 target: 47,000 positions at the first level, 17.7 GB).
ATTENTION_CHUNK_VALUES = 1 << 24


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018): ``x + W(softmax(theta(x)^T
    phi(x)) g(x))`` with 1x1 convs to ``channels // 2``; ``W`` starts at zero (identity block).
    Without autograd the attention is computed in chunks of at most :data:`ATTENTION_CHUNK_VALUES`
    similarities (each row's softmax is its own, so the result is the same up to float rounding);
    under autograd in one piece (training patches are small, and the backward keeps every chunk
    anyway)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)          # (n, hw, c')
        phi = self.phi(x).flatten(2)                              # (n, c', hw)
        g = self.g(x).flatten(2).transpose(1, 2)                  # (n, hw, c')
        rows = max(1, ATTENTION_CHUNK_VALUES // max(1, n * h * w))  # query rows per chunk
        if rows >= h * w or torch.is_grad_enabled():
            attention = torch.softmax(theta @ phi, dim=-1)        # (n, hw, hw)
            y = attention @ g
        else:
            y = torch.cat([torch.softmax(theta[:, i:i + rows] @ phi, dim=-1) @ g
                           for i in range(0, h * w, rows)], dim=1)
        y = y.transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


class DynamicOffsetEstimator(nn.Module):
    """Three-level encoder-decoder over ``cat(lr, ref)`` features with a non-local block per level;
    outputs features at the input size (the offsets are predicted from them by the caller)."""

    def __init__(self, in_channels: int, features: int = 64, levels: int = 3, non_local: bool = True) -> None:
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1, inplace=True)  # noqa: E731
        self.down = nn.ModuleList()
        channels = in_channels
        for _ in range(levels):
            self.down.append(nn.Sequential(nn.Conv2d(channels, features, 3, stride=2, padding=1), act()))
            channels = features
        self.attend = nn.ModuleList(NonLocalBlock(features) if non_local else nn.Identity()
                                    for _ in range(levels))
        self.up = nn.ModuleList(nn.Sequential(nn.Conv2d(features, features, 3, padding=1), act())
                                for _ in range(levels))

    def forward(self, x: Tensor) -> Tensor:
        sizes = [x.shape[-2:]]
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
            sizes.append(x.shape[-2:])
        # from the coarsest level up: attend, add the encoder feature of the level, go one level finer
        y = skips[-1]
        for level in reversed(range(len(skips))):
            y = self.attend[level](y) + skips[level]
            y = self.up[level](F.interpolate(y, size=sizes[level], mode="bilinear", align_corners=False))
        return y


class DeformableAlignment(nn.Module):
    """One similarity-aware deformable layer: offsets from ``cat(lr, ref)`` through the dynamic offset
    estimator, then a 3x3 deformable convolution of ``ref`` at those offsets."""

    def __init__(self, num_features: int, offset_features: int = 64, non_local: bool = True,
                 max_offset: float = 0.0) -> None:
        super().__init__()
        self.max_offset = float(max_offset)
        self.estimator = DynamicOffsetEstimator(2 * num_features, offset_features, non_local=non_local)
        self.to_offset = nn.Conv2d(offset_features, 2 * 3 * 3, 3, padding=1)
        nn.init.zeros_(self.to_offset.weight)  # a fresh layer is a plain convolution
        nn.init.zeros_(self.to_offset.bias)
        self.weight = nn.Parameter(torch.empty(num_features, num_features, 3, 3))
        self.bias = nn.Parameter(torch.zeros(num_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def offsets(self, lr_features: Tensor, ref_features: Tensor) -> Tensor:
        """(N, 18, h, w): (dy, dx) per kernel tap, in LR-feature pixels; within ``max_offset`` (a
        tanh bound, BasicVSR++'s ``max_residue_magnitude``) when it is positive."""
        offset = self.to_offset(self.estimator(torch.cat([lr_features, ref_features], dim=1)))
        if self.max_offset > 0:
            offset = self.max_offset * torch.tanh(offset / self.max_offset)
        return offset

    def forward(self, lr_features: Tensor, ref_features: Tensor, base_offset: Tensor | None = None,
                ) -> tuple[Tensor, Tensor]:
        """``base_offset`` (N, 2, h, w): a (dy, dx) per position every tap is moved by before the
        learnt offsets (the matched correspondence, :class:`LocalMatcher`)."""
        # here, not at the top: importing torchvision costs every job time (docs/PERFORMANCE.md,
        # "The test suite")
        from torchvision.ops import deform_conv2d

        offset = self.offsets(lr_features, ref_features)
        if base_offset is not None:  # torchvision's layout: (dy, dx) per kernel tap
            offset = offset + base_offset.repeat(1, offset.shape[1] // 2, 1, 1)
        # torchvision's CPU kernel has no bfloat16 (half) version: under autocast the op runs in
        # float32 and returns the input's dtype, as torchvision's own CUDA autocast wrapper does
        with torch.autocast(ref_features.device.type, enabled=False):
            aligned = deform_conv2d(ref_features.float(), offset.float(), self.weight.float(),
                                    self.bias.float(), padding=1)
        return aligned.to(ref_features.dtype), offset


class LocalMatcher(nn.Module):
    """Where the reference matches the LR image, near each LR pixel (SSEN's ``match_radius > 0``; not
    in the SSEN paper). Why (docs/refsr.md, the diagnosis ladder): from zero, the deformable offsets
    never learnt even a one-LR-pixel shift on the CPU budget, while block matching finds integer
    shifts exactly before any training.

    The reference is brought down to the LR grid (bicubic, antialiased), so both sides are LR
    images (TTSR's domain match of LR and Ref-down, Yang et al., CVPR 2020); :meth:`similarity` is
    the zero-mean normalised cross-correlation of ``patch`` x ``patch`` RGB patches at every
    displacement within ``radius`` LR pixels. Two readings of it:

    * :meth:`flow` (SSEN's ``match_mode: warp``): the best displacement refined to sub-pixel, and its
      NCC as a confidence; SSEN warps the HR reference by it before extracting features.
    * :meth:`forward` (``match_mode: offset``): the expectation of the displacements under a softmax
      with a learnt temperature; SSEN's first deformable layer starts from it (matching-initialised
      deformable alignment, as C2-Matching's aggregation, Jiang et al., CVPR 2021). Flat patches get
      weights of about equal size, so an offset near 0."""

    def __init__(self, radius: int, patch: int = 5, temperature: float = 100.0) -> None:
        super().__init__()
        self.radius, self.patch = int(radius), int(patch)
        d = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        self.register_buffer("displacements", torch.stack([dy.flatten(), dx.flatten()]), persistent=False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def _patches(self, x: Tensor) -> Tensor:
        """(N, C*p*p, h, w): each pixel's patch, zero-mean and unit-norm."""
        n, c, h, w = x.shape
        p = self.patch
        u = F.unfold(F.pad(x, (p // 2,) * 4, mode="replicate"), p).view(n, c * p * p, h, w)
        return F.normalize(u - u.mean(1, keepdim=True), dim=1, eps=1e-3)

    def similarity(self, lr: Tensor, ref_lr: Tensor) -> Tensor:
        """(N, D, h, w): the NCC of ``lr``'s patch at p with ``ref_lr``'s at p + d, for the D
        displacements d of :attr:`displacements`, one displacement at a time (memory: 2 patch maps
        and D similarities, not D patch maps; a 2000x1500 x4 target would need 4.6 GB at once)."""
        q, k = self._patches(lr), self._patches(ref_lr)
        h, w = q.shape[-2:]
        r, size = self.radius, 2 * self.radius + 1
        k = F.pad(k, (r,) * 4, mode="replicate")
        return torch.stack([(q * k[:, :, i:i + h, j:j + w]).sum(1) for i in range(size) for j in range(size)], 1)

    def forward(self, lr: Tensor, ref_lr: Tensor) -> Tensor:
        """(N, 2, h, w): expected (dy, dx) where ``ref_lr`` matches ``lr`` around each pixel."""
        with torch.autocast(lr.device.type, enabled=False):  # a softmax of similarities: float32
            weights = torch.softmax(self.similarity(lr.float(), ref_lr.float()) * self.log_temperature.exp(), dim=1)
            return torch.einsum("nkhw,ck->nchw", weights, self.displacements).to(lr.dtype)

    def flow(self, lr: Tensor, ref_lr: Tensor) -> tuple[Tensor, Tensor]:
        """Sub-pixel block matching: ((N, 2, h, w) flow (dy, dx), (N, 1, h, w) its NCC). The best
        displacement, refined per axis by the parabola through its similarity and its two
        neighbours' (the standard sub-pixel step of block matching; within half a pixel). Not
        differentiable (no parameters to learn); float32 under autocast."""
        with torch.no_grad(), torch.autocast(lr.device.type, enabled=False):
            sim = self.similarity(lr.float(), ref_lr.float())
            n, _, h, w = sim.shape
            size = 2 * self.radius + 1
            peak, best = sim.max(dim=1, keepdim=True)
            grid = sim.view(n, size, size, h, w)
            iy, ix = best // size, best % size

            def at(dy: Tensor, dx: Tensor) -> Tensor:
                flat = (dy.clamp(0, size - 1) * size + dx.clamp(0, size - 1))
                return grid.view(n, size * size, h, w).gather(1, flat)

            def refine(minus: Tensor, plus: Tensor) -> Tensor:
                curvature = minus - 2 * peak + plus
                step = 0.5 * (minus - plus) / curvature.clamp(max=-1e-6)  # a maximum: curvature < 0
                return step.clamp(-0.5, 0.5)

            dy = iy.float() - self.radius + refine(at(iy - 1, ix), at(iy + 1, ix))
            dx = ix.float() - self.radius + refine(at(iy, ix - 1), at(iy, ix + 1))
            return torch.cat([dy, dx], 1).to(lr.dtype), peak.to(lr.dtype)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """``image`` (N, C, H, W) sampled at p + flow(p) (bilinear, borders repeated); ``flow`` (N, 2, H,
    W) as (dy, dx) in pixels of ``image``."""
    n, _, h, w = image.shape
    ys = torch.arange(h, device=image.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=image.device, dtype=flow.dtype).view(1, 1, w)
    gx = (xs + flow[:, 1]) * (2 / w) + (1 / w - 1)   # pixel centres -> [-1, 1], align_corners=False
    gy = (ys + flow[:, 0]) * (2 / h) + (1 / h - 1)
    return F.grid_sample(image, torch.stack([gx, gy], -1).to(image.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)


class SSEN(SRGenerator):
    """SSEN generator (see the module docstring). ``forward(lr, ref)``; ``ref`` may be None only
    when built with ``use_reference=False``."""

    def __init__(self, scale: int = 4, num_features: int = 64, num_blocks: int = 16,
                 extract_blocks: int = 5, num_deform: int = 3, non_local: bool = True,
                 offset_features: int = 64, use_reference: bool = True, ref_downsample: str = "conv",
                 match_radius: int = 0, match_mode: str = "warp", match_gate: bool = True,
                 max_offset: float = 0.0, base: str = "none") -> None:
        super().__init__()
        factors = upsampling_factors(scale)
        if not 1 <= int(num_deform) <= MAX_DEFORM:
            raise ValueError(f"num_deform must be 1..{MAX_DEFORM} (the paper uses 3), got {num_deform}")
        self.scale = scale
        self.num_features = num_features
        self.use_reference = bool(use_reference)
        warped = False  # the reference is block-matched and warped (match_radius > 0, warp mode)
        self.lr_head = nn.Conv2d(3, num_features, 1)
        self.extractor = nn.Sequential(*[ResidualBlock(num_features) for _ in range(extract_blocks)])
        if ref_downsample not in ("conv", "unshuffle"):
            raise ValueError(f"ref_downsample must be 'conv' or 'unshuffle', got {ref_downsample!r}")
        if self.use_reference:
            ref_layers: list[nn.Module] = []
            if ref_downsample == "unshuffle":
                ref_layers = [nn.PixelUnshuffle(scale), nn.Conv2d(3 * scale * scale, num_features, 3, padding=1)]
            else:
                channels = 3
                for f in factors:
                    ref_layers.append(nn.Conv2d(channels, num_features, 3, stride=f, padding=1))
                    channels = num_features
            self.ref_head = nn.Sequential(*ref_layers)
            self.align = nn.ModuleList(DeformableAlignment(num_features, offset_features, non_local, max_offset)
                                       for _ in range(num_deform))
            if match_mode not in ("offset", "warp"):
                raise ValueError(f"match_mode must be 'offset' or 'warp', got {match_mode!r}")
            self.matcher = LocalMatcher(match_radius) if match_radius > 0 else None
            warped = self.matcher is not None and match_mode == "warp"
            if warped:  # flow() learns nothing (DDP: no unused grads)
                self.matcher.log_temperature.requires_grad_(False)
            self.match_mode = match_mode
            self.match_gate = bool(match_gate) and warped
        elif match_radius:
            raise ValueError("match_radius needs the reference branch (use_reference: true)")
        # warp mode's match confidence is one more fusion channel
        self.fuse = nn.Conv2d(num_features * (2 if self.use_reference else 1) + int(warped), num_features, 1)
        self.trunk = nn.Sequential(*[ResidualBlock(num_features) for _ in range(num_blocks)])
        self.trunk_tail = nn.Conv2d(num_features, num_features, 3, padding=1)
        self.upsampler = pixel_shuffle_upsampler(num_features, scale)
        self.tail = nn.Conv2d(num_features, 3, 3, padding=1)
        self.offset_magnitudes: list[Tensor] = []
        self._init_base(base, scale, self.tail)

    def fit_reference(self, ref: Tensor, lr_size: tuple[int, int]) -> Tensor:
        """The HR reference resized (bicubic, antialiased) to the target's HR size when it differs."""
        target = (lr_size[0] * self.scale, lr_size[1] * self.scale)
        if tuple(ref.shape[-2:]) != target:
            ref = F.interpolate(ref, size=target, mode="bicubic", align_corners=False, antialias=True)
        return ref

    def reference_features(self, ref: Tensor, lr_size: tuple[int, int]) -> Tensor:
        """HR reference (N,3,H,W) -> features on the LR grid (N,F,h,w)."""
        return self.extractor(self.ref_head(self.fit_reference(ref, lr_size)))

    def encode(self, lr: Tensor, ref: Tensor | None = None) -> Tensor:
        lr_features = self.extractor(self.lr_head(lr))
        if self.use_reference:
            if ref is None:
                raise ValueError("SSEN needs a reference image: forward(lr, ref)")
            if ref.ndim != 4 or ref.shape[1] != 3:
                raise ValueError(f"the reference must be an RGB batch (N, 3, H, W), got shape {tuple(ref.shape)}; "
                                 "replicate a gray reference to three channels")
            if ref.shape[0] != lr.shape[0]:
                raise ValueError(f"one reference per LR image: {ref.shape[0]} references for {lr.shape[0]} images")
            ref = ref.to(lr.dtype)
            base_offset, confidence = None, None
            if self.matcher is not None:
                ref = self.fit_reference(ref, lr.shape[-2:])
                ref_lr = F.interpolate(ref, size=lr.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
                if self.match_mode == "warp":
                    flow, peak = self.matcher.flow(lr, ref_lr)
                    # the HR reference moved to where the target is, at HR precision, before any feature
                    hr_flow = F.interpolate(flow, scale_factor=self.scale, mode="bilinear", align_corners=False)
                    ref = warp(ref, hr_flow * self.scale)
                    # the gate's confidence: the NCC clamped to [0, 1]; without the gate the raw NCC
                    confidence = peak.clamp(0, 1) if self.match_gate else peak
                else:
                    base_offset = self.matcher(lr, ref_lr)
            aligned = self.reference_features(ref, lr.shape[-2:])
            magnitudes = []
            for i, layer in enumerate(self.align):
                aligned, offset = layer(lr_features, aligned, base_offset if i == 0 else None)
                magnitudes.append(offset.detach().abs().mean())  # a tensor: no device sync here
            self.offset_magnitudes = magnitudes
            if self.match_gate:  # TTSR's soft attention: the reference counts as much as it matches
                aligned = aligned * confidence
            extra = [] if confidence is None else [confidence]
            fused = self.fuse(torch.cat([lr_features, aligned, *extra], dim=1))
        else:
            fused = self.fuse(lr_features)
        return fused + self.trunk_tail(self.trunk(fused))

    def upsample(self, features: Tensor) -> Tensor:
        return self.tail(self.upsampler(features))

    def forward(self, lr: Tensor, ref: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.decode(self.encode(lr, ref), lr)
