"""§4.1 augmentation as batched tensor operations: the same functions on CPU and GPU.

    params = sample_params(batch=128, size=256, crop=224, generator=g, flip=True)
    x = train_batch(images_u8, params, norm)            # (B, 3, 256, 256) uint8 -> (B, 3, 224, 224)
    v = eval_views(images_u8, 224, views=10, norm=norm)  # (B, 10, 3, 224, 224): TenCrop's order

Every random number comes from an explicit torch.Generator, drawn on the CPU in a fixed order
(offsets, flips, PCA coefficients), so a batch is a function of (generator seed, images) only, and
the CPU and GPU paths agree. §2 subtracts the mean image before cropping; cropping commutes with
that, so the mean is cropped (and reflected) with the image and only kept pixels become float.
Two implementations of the same batch operation, chosen by device (`impl`), tested equal:
- "gather" (GPU): crops and reflections are one gather of precomputed indices over the whole
  batch, the mean image gathered with the same indices;
- "loop" (CPU): the same per-sample crops as slices, image by image into the output, which keeps
  each image's working set in cache (measured 3-5x faster on CPU than whole-batch passes).

PCA colour augmentation (§4.1): to every pixel of an image add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T,
a_i ~ N(0, pca_std) once per image and presentation, p_i, l_i from the eigen-decomposition of the
training set's RGB covariance. Scale convention `pca_scale`:
- "authors" (default): l_i = sqrt(eigenvalue) on the 0-255 scale, as in the authors' code (the
  standard deviation along each principal axis; about [19.7, 37.1, 121.8] on ImageNet), so the
  shift has std pca_std * sqrt(eigenvalue_i) along p_i;
- "fbresnet": l_i = eigenvalue on the 0-1 scale (fb.resnet.torch's [0.2175, 0.0188, 0.0045]),
  the shift computed on the 0-1 scale and applied x255.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PCA_SCALES = ("authors", "fbresnet")


@dataclass
class Normalize:
    """Mean subtraction: the §2 per-pixel mean image (0-255 scale, no division), or per-channel
    (x - mean) / std. Tensors live on the device the batches are made on."""

    mean_image: torch.Tensor | None = None  # (3, S, S) float32, 0-255
    mean: torch.Tensor | None = None  # (3,) 0-255
    std: torch.Tensor | None = None  # (3,) 0-255

    def to(self, device) -> "Normalize":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Normalize(move(self.mean_image), move(self.mean), move(self.std))

    def for_size(self, size: int) -> "Normalize":
        """The same normalisation for S x S images: a mean image of another size is resized
        (bilinear), channel mean/std apply to any size."""
        if self.mean_image is None or self.mean_image.shape[-1] == size:
            return self
        m = torch.nn.functional.interpolate(self.mean_image[None], size=(size, size), mode="bilinear",
                                            align_corners=False)[0]
        return Normalize(mean_image=m)

    def mean_crop_hwc(self, top: int, left: int, crop: int, flip: bool) -> torch.Tensor:
        """The mean image's (C, C, 3) crop at (top, left), reflected when `flip` (a view of a cached
        HWC copy: images decode to HWC memory, so the CPU path works in that layout)."""
        if getattr(self, "_hwc", None) is None:  # _hwc set last: threads that see it see both (resident path)
            hwc = self.mean_image.permute(1, 2, 0).contiguous()
            self._hwc_flipped = hwc.flip(1).contiguous()
            self._hwc = hwc
        if not flip:
            return self._hwc[top:top + crop, left:left + crop]
        w = self._hwc.shape[1]
        return self._hwc_flipped[top:top + crop, w - left - crop:w - left]


@dataclass
class Params:
    """The random choices for one batch (CPU tensors; moved to the images' device when applied)."""

    top: torch.Tensor  # (B,) crop offsets, or box tops for scale jitter
    left: torch.Tensor  # (B,)
    height: torch.Tensor  # (B,) box size in the source (== crop without scale jitter)
    width: torch.Tensor  # (B,)
    flip: torch.Tensor  # (B,) bool
    alpha: torch.Tensor  # (B, 3) PCA coefficients a_i (zeros when off)
    crop: int  # output side C


def sample_params(batch: int, size: int | tuple[int, int], crop: int, generator: torch.Generator,
                  flip: bool = True, pca_std: float = 0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0)) -> Params:
    """Draw a batch's crops, reflections and PCA coefficients, in this order, from `generator`."""
    h, w = (size, size) if isinstance(size, int) else size
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    g = generator
    if tuple(scale) == (1.0, 1.0) and tuple(ratio) == (1.0, 1.0):  # §4.1: fixed-size random crops
        bh = bw = torch.full((batch,), crop)
        top = torch.randint(0, h - crop + 1, (batch,), generator=g)
        left = torch.randint(0, w - crop + 1, (batch,), generator=g)
    else:
        top, left, bh, bw = _random_resized_boxes(batch, h, w, scale, ratio, g)
    flips = torch.rand(batch, generator=g) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool)
    alpha = (torch.randn(batch, 3, generator=g) * pca_std) if pca_std > 0 else torch.zeros(batch, 3)
    return Params(top, left, bh, bw, flips, alpha, crop)


def _random_resized_boxes(batch, h, w, scale, ratio, g):
    """torchvision's RandomResizedCrop box rule (10 tries, else a centre crop), vectorised."""
    area = h * w
    target = area * (torch.rand(batch, 10, generator=g) * (scale[1] - scale[0]) + scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(batch, 10, generator=g) * (log_hi - log_lo) + log_lo)
    bw = torch.round(torch.sqrt(target * aspect)).long()
    bh = torch.round(torch.sqrt(target / aspect)).long()
    ok = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((batch,), -1))
    u = torch.rand(batch, 2, generator=g)
    # fallback: the whole image, clipped to the ratio range (torchvision's central crop)
    in_ratio = w / h
    fw, fh = (w, round(w / ratio[0])) if in_ratio < ratio[0] else (
        (round(h * ratio[1]), h) if in_ratio > ratio[1] else (w, h))
    rows = torch.arange(batch)
    pick = first.clamp(min=0)
    bh = torch.where(first >= 0, bh[rows, pick], torch.full((batch,), fh))
    bw = torch.where(first >= 0, bw[rows, pick], torch.full((batch,), fw))
    top = torch.where(first >= 0, (u[:, 0] * (h - bh + 1)).long(), (h - bh) // 2)
    left = torch.where(first >= 0, (u[:, 1] * (w - bw + 1)).long(), (w - bw) // 2)
    return top, left, bh, bw


def pca_shift(alpha: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor,
              scale: str = "authors") -> torch.Tensor:
    """(B, 3) coefficients a_i -> (B, 3) RGB shift on the 0-255 scale: sum_i a_i l_i p_i (§4.1)."""
    if scale == "authors":
        lam = eigval.clamp(min=0).sqrt()
        return (alpha * lam) @ eigvec.T
    if scale == "fbresnet":
        return ((alpha * (eigval / 255.0 ** 2)) @ eigvec.T) * 255.0
    raise ValueError(f"pca_scale {scale!r} is not one of {', '.join(PCA_SCALES)}")


def crop_indices(size_hw: tuple[int, int], top, left, crop: int, flip) -> torch.Tensor:
    """(B, C*C) flat indices into an (H*W) plane for crops at (top, left), reflected where `flip`."""
    w = size_hw[1]
    r = torch.arange(crop, device=top.device)
    rows = top[:, None] + r  # (B, C)
    cols = torch.where(flip[:, None], left[:, None] + crop - 1 - r, left[:, None] + r)  # (B, C)
    return (rows[:, :, None] * w + cols[:, None, :]).reshape(len(top), crop * crop)


def _normalize(x: torch.Tensor, norm: Normalize, mean_crop: torch.Tensor | None,
               shift: torch.Tensor | None) -> torch.Tensor:
    """x (B, 3, C, C) float on 0-255 -> mean-subtracted (and PCA-shifted) input."""
    if shift is not None:
        x = x + shift[:, :, None, None]
    if norm.mean_image is not None:
        return x - mean_crop
    if norm.mean is not None:
        return (x - norm.mean[:, None, None]) / norm.std[:, None, None]
    return x


def _output(shape, dtype, channels_last: bool, shared: bool) -> torch.Tensor:
    """The output batch; in a DataLoader worker, allocated in shared memory so that handing it to
    the main process needs no copy (torch would otherwise copy it there)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if shared:
        n = 1
        for d in shape:
            n *= d
        storage = torch.UntypedStorage._new_shared(n * torch.empty(0, dtype=dtype).element_size())
        out = torch.empty(0, dtype=dtype).set_(storage).view(shape)
        return out if not channels_last else out.as_strided(
            shape, (shape[1] * shape[2] * shape[3], 1, shape[3] * shape[1], shape[1]))
    return torch.empty(shape, dtype=dtype, memory_format=fmt)


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def _fill(dst: torch.Tensor, src_u8: torch.Tensor, norm: Normalize, top: int, left: int, crop: int,
          flip: bool, shift: torch.Tensor | None, tmp: torch.Tensor | None) -> None:
    """One image: dst (3, C, C) = normalize(crop(src) [+ PCA shift]). Works on HWC views: decoded
    JPEGs are HWC in memory (decode_jpeg returns a permuted view), and so is a channels_last slot.
    Goes through the float32 (C, C, 3) `tmp` when dst is not float32."""
    src = src_u8.permute(1, 2, 0)[top:top + crop, left:left + crop]  # (C, C, 3) uint8
    if flip:
        src = src.flip(1)
    out = dst.permute(1, 2, 0)
    if tmp is not None and norm.mean_image is not None:  # bf16 out: compute in float32 in cache,
        m = norm.mean_crop_hwc(top, left, crop, flip)     # round once (direct bf16 writes are slower)
        if shift is not None:
            m = torch.sub(m, shift, out=tmp)
        torch.sub(src, m, out=tmp)
        out.copy_(tmp)
        return
    work = out if tmp is None else tmp
    if norm.mean_image is not None:
        torch.sub(src, norm.mean_crop_hwc(top, left, crop, flip), out=work)  # uint8 - float32, one pass
    else:
        work.copy_(src)
    if shift is not None:
        work.add_(shift)
    if norm.mean is not None:
        work.sub_(norm.mean).div_(norm.std)
    if tmp is not None:
        out.copy_(tmp)


def train_batch(images, p: Params, norm: Normalize, eigval=None, eigvec=None, pca_scale: str = "authors",
                dtype=torch.float32, channels_last=False, impl: str | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 (a tensor, or a list of (3, H, W)) -> (B, 3, C, C) augmented,
    mean-subtracted batch on the images' device. impl: "gather" | "loop" (default: by device);
    out: a (B, 3, C, C) tensor of that dtype and format to write into (the loop implementation)."""
    first = images[0]
    dev = first.device
    impl = impl or ("loop" if dev.type == "cpu" else "gather")
    shift = None
    if eigval is not None and bool(p.alpha.any()):
        shift = pca_shift(p.alpha, eigval.cpu(), eigvec.cpu(), pca_scale).to(dev)
    fixed = bool((p.height == p.crop).all() and (p.width == p.crop).all())
    b, c = len(images), p.crop
    if impl == "loop":
        out = _output((b, 3, c, c), dtype, channels_last, _in_worker()) if out is None else out
        tmp = None if dtype == torch.float32 else torch.empty(c, c, 3)
        if fixed:
            for i, (t, l, f) in enumerate(zip(p.top.numpy().tolist(), p.left.numpy().tolist(), p.flip.numpy().tolist())):
                _fill(out[i], images[i], norm, t, l, c, f, None if shift is None else shift[i], tmp)
            return out
        # scale/aspect jitter: resample each box to C x C, then normalise. The boxes were drawn for
        # one image size, so the grids are made in one go (elementwise: each row is the one a
        # single-image call gives); per image only the resampling is left, which keeps the Python
        # per image small (the resident path's threads share one interpreter lock)
        grids = _box_grid(p.top, p.left, p.height, p.width, p.flip, *images[0].shape[-2:], c)
        for i in range(b):
            grid = grids[i:i + 1]
            x = F.grid_sample(images[i][None].float(), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)
            m = None if norm.mean_image is None else F.grid_sample(
                norm.mean_image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
            out[i] = _normalize(x, norm, m, None if shift is None else shift[i:i + 1])[0]
        return out
    images = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    _, _, h, w = images.shape
    top, left, flip = p.top.to(dev), p.left.to(dev), p.flip.to(dev)
    if fixed:  # one gather: crop + reflection, uint8 -> (B, 3, C, C)
        idx = crop_indices((h, w), top, left, c, flip)
        x = images.reshape(b, 3, h * w).gather(2, idx[:, None, :].expand(b, 3, -1))
        x = x.reshape(b, 3, c, c).float()
        mean_crop = None
        if norm.mean_image is not None:
            mean_crop = norm.mean_image.reshape(3, h * w)[:, idx].permute(1, 0, 2).reshape(b, 3, c, c)
    else:  # scale/aspect jitter: bilinear resampling of each box to C x C
        grid = _box_grid(top, left, p.height.to(dev), p.width.to(dev), flip, h, w, c)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean_crop = None
        if norm.mean_image is not None:
            mean_crop = F.grid_sample(norm.mean_image.expand(b, -1, -1, -1), grid, mode="bilinear",
                                      padding_mode="border", align_corners=False)
    x = _normalize(x, norm, mean_crop, shift)
    return x.to(dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _box_grid(top, left, bh, bw, flip, h, w, crop):
    """Sampling grid (B, C, C, 2) mapping the output onto each box (pixel-centre aligned)."""
    t = (torch.arange(crop, device=top.device, dtype=torch.float32) + 0.5) / crop  # (C,) in (0, 1)
    xs = left[:, None] + t * bw[:, None]  # (B, C) source x in pixels
    xs = torch.where(flip[:, None], (left + bw)[:, None] - t * bw[:, None], xs)
    ys = top[:, None] + t * bh[:, None]
    gx, gy = xs / w * 2 - 1, ys / h * 2 - 1  # align_corners=False normalisation
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def view_offsets(h: int, w: int, crop: int, views: int) -> list[tuple[int, int, bool]]:
    """(top, left, flip) of the evaluation views: the centre crop (views=1); the centre crop and its
    reflection (2: test-time reflection, the one view §4.1's training augmentation makes as likely
    as the image itself); or §4.1's ten in the order of torchvision's TenCrop (corners tl, tr, bl,
    br, centre; then the same crops of the mirror image). Raises ValueError for another count."""
    ct, cl = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    if views == 1:
        return [(ct, cl, False)]
    if views == 2:  # the mirror of the centre crop at (t, l) is the crop at (t, w - crop - l)
        return [(ct, cl, False), (ct, w - crop - cl, True)]
    if views != 10:
        raise ValueError(f"views must be 1, 2 or 10, got {views}")
    five = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (ct, cl)]
    # a crop at (t, l) of the mirrored image is the mirror of the crop at (t, w - crop - l)
    return [(t, l, False) for t, l in five] + [(t, w - crop - l, True) for t, l in five]


def eval_views(images, crop: int, views: int, norm: Normalize, dtype=torch.float32,
               channels_last=False, impl: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 (tensor or list) -> (B, 3, C, C) for views=1, or (B, V, 3, C, C) for V = 2, 10.
    out: a (B * views, 3, C, C) tensor to write into (the loop implementation)."""
    first = images[0]
    dev = first.device
    impl = impl or ("loop" if dev.type == "cpu" else "gather")
    h, w = first.shape[-2:]
    offsets = view_offsets(h, w, crop, views)
    b, v = len(images), len(offsets)
    if impl == "loop":
        out = _output((b * v, 3, crop, crop), dtype, channels_last, _in_worker()) if out is None else out
        tmp = None if dtype == torch.float32 else torch.empty(crop, crop, 3)
        for i in range(b):
            for j, (t, l, f) in enumerate(offsets):
                _fill(out[i * v + j], images[i], norm, t, l, crop, f, None, tmp)
        return out if views == 1 else out.view(b, v, 3, crop, crop)
    images = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    top = torch.tensor([o[0] for o in offsets], device=dev)
    left = torch.tensor([o[1] for o in offsets], device=dev)
    flip = torch.tensor([o[2] for o in offsets], device=dev)
    idx = crop_indices((h, w), top, left, crop, flip)  # (V, C*C)
    x = images.reshape(b, 1, 3, h * w).expand(b, v, 3, h * w)
    x = x.gather(3, idx[None, :, None, :].expand(b, v, 3, -1)).float()  # (B, V, 3, C*C)
    x = x.reshape(b * v, 3, crop, crop)
    mean_crop = None
    if norm.mean_image is not None:
        m = norm.mean_image.reshape(3, h * w)[:, idx].permute(1, 0, 2).reshape(v, 3, crop, crop)
        mean_crop = m.repeat(b, 1, 1, 1)
    x = _normalize(x, norm, mean_crop, None)
    x = x.to(dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x if views == 1 else x.reshape(b, v, 3, crop, crop)
