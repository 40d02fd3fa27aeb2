"""§4.1 augmentation ops against independent references: slicing, float64 numpy, TenCrop."""
import numpy as np
import pytest
import torch
import torchvision.transforms as T

from alexnet.data import augment as A


def images(b=6, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def test_crop_and_flip_match_plain_slicing():
    x = images()
    p = A.sample_params(6, (40, 48), 32, torch.Generator().manual_seed(1), flip=True)
    assert p.flip.any() and not p.flip.all()
    got = A.train_batch(x, p, A.Normalize())
    for i in range(6):
        t, l = int(p.top[i]), int(p.left[i])
        want = x[i, :, t:t + 32, l:l + 32].float()
        if p.flip[i]:
            want = want.flip(-1)
        assert torch.equal(got[i], want)


def test_offsets_cover_the_whole_range_and_are_uniform():
    p = A.sample_params(20000, 256, 224, torch.Generator().manual_seed(0))
    assert p.top.min() == 0 and p.top.max() == 32 and p.left.max() == 32
    counts = torch.bincount(p.left, minlength=33).float()
    assert counts.min() > 0.8 * counts.mean()
    assert abs(p.flip.float().mean().item() - 0.5) < 0.02


def pca_reference(img: np.ndarray, alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray, scale: str):
    """paper.md §4.1 in float64: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel."""
    lam = np.sqrt(eigval) if scale == "authors" else eigval / 255.0 ** 2
    shift = np.zeros(3)
    for i in range(3):
        shift += eigvec[:, i] * (alpha[i] * lam[i])
    if scale == "fbresnet":
        shift *= 255.0
    return img.astype(np.float64) + shift[:, None, None]


@pytest.mark.parametrize("scale", ["authors", "fbresnet"])
def test_pca_lighting_matches_float64_formula(scale):
    rng = np.random.default_rng(0)
    cov = np.cov(rng.normal(size=(3, 500)) * [[60], [40], [20]] + rng.normal(size=(1, 500)) * 30)
    eigval, eigvec = np.linalg.eigh(cov)
    x = images(4, 16, 16)
    p = A.sample_params(4, 16, 16, torch.Generator().manual_seed(3), flip=False, pca_std=0.1)
    got = A.train_batch(x, p, A.Normalize(), torch.tensor(eigval, dtype=torch.float32),
                        torch.tensor(eigvec, dtype=torch.float32), pca_scale=scale)
    for i in range(4):
        want = pca_reference(x[i].numpy(), p.alpha[i].double().numpy(), eigval, eigvec, scale)
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-5, atol=1e-3)
    shift = got[:, :, 0, 0] - x[:, :, 0, 0].float()
    assert shift.abs().max() > 0.5  # the shift is there, and differs per image
    assert not torch.allclose(shift[0], shift[1])


def test_pca_shift_statistics_follow_the_authors_scale():
    eigval = torch.tensor([19.7, 37.1, 121.8]) ** 2  # ImageNet, paper.md
    eigvec = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    alpha = torch.randn(100000, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    shift = A.pca_shift(alpha, eigval, eigvec)
    along = shift @ eigvec  # components along each principal axis
    torch.testing.assert_close(along.std(0), 0.1 * eigval.sqrt(), rtol=0.02, atol=0)


def test_mean_image_is_subtracted_at_the_crop_position():
    x = images(5, 20, 20)
    mean_image = torch.rand(3, 20, 20) * 255
    p = A.sample_params(5, 20, 12, torch.Generator().manual_seed(2), flip=True)
    got = A.train_batch(x, p, A.Normalize(mean_image=mean_image))
    for i in range(5):
        t, l = int(p.top[i]), int(p.left[i])
        want = (x[i].float() - mean_image)[:, t:t + 12, l:l + 12]  # §2: subtract, then crop
        if p.flip[i]:
            want = want.flip(-1)
        torch.testing.assert_close(got[i], want)
    mean, std = torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 55.0, 50.0])
    got = A.train_batch(x, p, A.Normalize(mean=mean, std=std))
    crop = A.train_batch(x, p, A.Normalize())
    torch.testing.assert_close(got, (crop - mean[:, None, None]) / std[:, None, None])


def test_ten_views_match_torchvision_tencrop():
    x = images(3, 30, 34)
    got = A.eval_views(x, 24, 10, A.Normalize())
    assert got.shape == (3, 10, 3, 24, 24)
    for i in range(3):
        want = torch.stack(T.TenCrop(24)(x[i])).float()
        assert torch.equal(got[i], want)
    centre = A.eval_views(x, 24, 1, A.Normalize())
    assert torch.equal(centre, torch.stack([T.CenterCrop(24)(im) for im in x]).float())
    assert torch.equal(got[:, 4], centre)


def test_two_views_are_the_centre_crop_and_its_reflection():
    for width in (36, 35):  # 35: an odd margin, where the mirror's centre crop is 1 px off the centre's mirror
        x = images(3, 30, width)
        mean_image = torch.rand(3, 30, width) * 255
        got = A.eval_views(x, 24, 2, A.Normalize(mean_image=mean_image))
        assert got.shape == (3, 2, 3, 24, 24)
        for i in range(3):
            ten = torch.stack(T.TenCrop(24)(x[i].float() - mean_image))  # the centre crop is 4, its mirror's 9
            torch.testing.assert_close(got[i], ten[[4, 9]])
            if width == 36:
                torch.testing.assert_close(got[i, 1], got[i, 0].flip(-1))
    with pytest.raises(ValueError, match="1, 2 or 10"):
        A.view_offsets(30, 30, 24, 5)


def test_ten_views_with_the_mean_image():
    x = images(2, 20, 20)
    mean_image = torch.rand(3, 20, 20) * 255
    got = A.eval_views(x, 16, 10, A.Normalize(mean_image=mean_image))
    for i in range(2):
        want = torch.stack(T.TenCrop(16)(x[i].float() - mean_image))
        torch.testing.assert_close(got[i], want)


def test_random_resized_boxes_follow_torchvisions_rule():
    g = torch.Generator().manual_seed(0)
    p = A.sample_params(5000, (256, 256), 224, g, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    area = (p.height * p.width).float() / 256 ** 2
    ratio = p.width.float() / p.height.float()
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.mean() > 0.4
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    assert (p.top >= 0).all() and (p.top + p.height <= 256).all() and (p.left + p.width <= 256).all()


def test_scale_jitter_resamples_the_box():
    x = images(4, 64, 64)
    g = torch.Generator().manual_seed(5)
    p = A.sample_params(4, 64, 32, g, scale=(0.3, 0.6), ratio=(0.8, 1.25))
    got = A.train_batch(x, p, A.Normalize())
    assert got.shape == (4, 3, 32, 32)
    for i in range(4):  # against torchvision's resized_crop of the same box (bilinear, no antialias)
        t, l, h, w = (int(v[i]) for v in (p.top, p.left, p.height, p.width))
        want = T.functional.resized_crop(x[i].float(), t, l, h, w, [32, 32], antialias=False)
        if p.flip[i]:
            want = want.flip(-1)
        assert (got[i] - want).abs().mean() < 2.0  # same box; sampling grids differ slightly at edges


def test_output_dtype_and_memory_format():
    x = images(2, 20, 20)
    p = A.sample_params(2, 20, 16, torch.Generator().manual_seed(0))
    y = A.train_batch(x, p, A.Normalize(), dtype=torch.bfloat16, channels_last=True)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    v = A.eval_views(x, 16, 10, A.Normalize(), channels_last=True)
    assert v.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_same_generator_seed_same_batch_different_seed_different_batch():
    x = images()
    a = A.train_batch(x, A.sample_params(6, (40, 48), 32, torch.Generator().manual_seed(9), pca_std=0.1),
                      A.Normalize())
    b = A.train_batch(x, A.sample_params(6, (40, 48), 32, torch.Generator().manual_seed(9), pca_std=0.1),
                      A.Normalize())
    c = A.train_batch(x, A.sample_params(6, (40, 48), 32, torch.Generator().manual_seed(10), pca_std=0.1),
                      A.Normalize())
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("mean", ["pixel", "channel", "none"])
@pytest.mark.parametrize("jitter", [False, True])
def test_cpu_loop_and_gpu_gather_implementations_agree(mean, jitter):
    """The CPU ("loop") and GPU ("gather") code paths compute the same batch."""
    x = images(5, 36, 40)
    norm = {"pixel": A.Normalize(mean_image=torch.rand(3, 36, 40) * 255),
            "channel": A.Normalize(mean=torch.tensor([100.0, 110, 120]), std=torch.tensor([50.0, 60, 70])),
            "none": A.Normalize()}[mean]
    eigval, eigvec = torch.tensor([10.0, 100.0, 1000.0]), torch.linalg.qr(torch.randn(3, 3))[0]
    kw = dict(scale=(0.3, 0.9), ratio=(0.75, 1.33)) if jitter else {}
    p = A.sample_params(5, (36, 40), 28, torch.Generator().manual_seed(4), pca_std=0.1, **kw)
    for dtype, cl in [(torch.float32, False), (torch.bfloat16, True)]:
        loop = A.train_batch(x, p, norm, eigval, eigvec, dtype=dtype, channels_last=cl, impl="loop")
        gather = A.train_batch(x, p, norm, eigval, eigvec, dtype=dtype, channels_last=cl, impl="gather")
        assert loop.dtype == gather.dtype == dtype
        assert loop.is_contiguous(memory_format=torch.channels_last) == cl
        torch.testing.assert_close(loop.float(), gather.float(), rtol=1e-5, atol=1e-4 if dtype == torch.float32 else 1.0)
    for views in (1, 2, 10):
        loop = A.eval_views(list(x), 28, views, norm, impl="loop")
        gather = A.eval_views(x, 28, views, norm, impl="gather")
        torch.testing.assert_close(loop, gather)
