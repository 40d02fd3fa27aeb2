"""The built-in data set: deterministic, every class drawable, and colour alone does not tell."""
import numpy as np
import torch

from alexnet.data import synthetic as S


def features(split: str, per_class: int):
    x, y = [], []
    for label in range(len(S.CLASSES)):
        for i in range(per_class):
            img = S.draw(label, S.image_rng(0, split, label * per_class + i), 72).astype(np.float64)
            x.append(np.concatenate([img.mean((0, 1)), img.std((0, 1))]))  # mean and spread of colour
            y.append(label)
    return torch.tensor(np.array(x), dtype=torch.float32), torch.tensor(y)


def test_drawing_is_deterministic_and_varied():
    a = S.draw(3, S.image_rng(0, "train", 7))
    assert a.shape == (72, 72, 3) and a.dtype == np.uint8
    assert np.array_equal(a, S.draw(3, S.image_rng(0, "train", 7)))
    assert not np.array_equal(a, S.draw(3, S.image_rng(0, "train", 8)))
    assert not np.array_equal(a, S.draw(3, S.image_rng(0, "val", 7)))
    assert S.draw(0, S.image_rng(1, "train", 0), size=128).shape == (128, 128, 3)


def test_a_linear_classifier_on_colour_stays_near_chance():
    """Colours are drawn independently of the class: mean and std of RGB predict ~10% (chance)."""
    xtr, ytr = features("train", 60)
    xte, yte = features("val", 30)
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(6, 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    train_acc = ((xtr @ w + b).argmax(1) == ytr).float().mean().item()
    test_acc = ((xte @ w + b).argmax(1) == yte).float().mean().item()
    assert test_acc < 0.2, test_acc  # chance is 0.1; 300 test images give a std of ~0.017
    assert train_acc < 0.3


def test_ensure_prepares_once_and_reuses(tmp_path):
    path = S.ensure(train_per_class=3, val_per_class=2, size=72, root=tmp_path, progress=False)
    from alexnet.data.store import open_prepared
    ds = open_prepared(path)
    assert [c["id"] for c in ds.classes] == list(S.CLASSES)
    assert len(ds.split("train")) == 30 and len(ds.split("val")) == 20
    mtime = (path / "manifest.json").stat().st_mtime
    assert S.ensure(train_per_class=3, val_per_class=2, size=72, root=tmp_path, progress=False) == path
    assert (path / "manifest.json").stat().st_mtime == mtime
