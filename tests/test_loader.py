"""The loader: exact per-epoch coverage for any world size, determinism, resume, workers."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from alexnet.data import augment as A
from alexnet.data.loader import Loader, eval_plan, step_seed, train_plan
from alexnet.data.store import decode_jpegs, open_prepared
from alexnet.data.prepare import prepare


def make_source(root, n_per_class=(9, 8), size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    for c, n in zip(("n01440764", "n02102040"), n_per_class):
        for split, k in (("train", n), ("val", n // 2 + 1)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                h = size[0] + int(rng.integers(0, 20))
                Image.fromarray(rng.integers(0, 256, (h, size[1], 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("loader")
    make_source(base / "src")
    prepare(base / "src", base / "jpeg", size=40, workers=0, progress=False)
    prepare(base / "src", base / "raw", size=40, raw=True, workers=0, progress=False)
    prepare(base / "src", base / "aspect", size=40, keep_aspect=True, workers=0, progress=False)
    return base


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,batch", [(17, 4), (24, 4), (5, 2)])
def test_training_epochs_cover_every_sample_once(world, n, batch):
    for epoch in (0, 1):
        plans = [train_plan(n, batch, world, r, seed=3, epoch=epoch, drop_last=False) for r in range(world)]
        assert len({len(p) for p in plans}) == 1  # every rank takes the same number of steps
        seen = np.concatenate([b for p in plans for b in p])
        assert sorted(seen.tolist()) == list(range(n))
        kept = [train_plan(n, batch, world, r, seed=3, epoch=epoch, drop_last=True) for r in range(world)]
        seen = np.concatenate([b for p in kept for b in p] or [np.array([], int)])
        assert len(seen) == len(set(seen.tolist())) == (n // (batch * world)) * batch * world
        assert all(len(b) == batch for p in kept for b in p)


def test_epochs_are_reshuffled_deterministically():
    a = train_plan(100, 10, 1, 0, seed=0, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in train_plan(100, 10, 1, 0, seed=0, epoch=0)]
    assert [x.tolist() for x in a] != [x.tolist() for x in train_plan(100, 10, 1, 0, seed=0, epoch=1)]
    assert [x.tolist() for x in a] != [x.tolist() for x in train_plan(100, 10, 1, 0, seed=1, epoch=0)]
    assert step_seed(0, 0, 0, 1) != step_seed(0, 0, 1, 0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_counts_every_image_once(world):
    n = 23
    seen = np.concatenate([b for r in range(world) for b in eval_plan(n, 4, world, r)])
    assert sorted(seen.tolist()) == list(range(n)) and len(seen) == n


def batches(loader, epoch=0, start=0):
    return [(b.images.clone(), b.labels.clone(), b.indices.clone()) for b in loader.epoch(epoch, start)]


def same(xs, ys):
    return len(xs) == len(ys) and all(torch.equal(a, c) and torch.equal(b, d) and torch.equal(e, f)
                                      for (a, b, e), (c, d, f) in zip(xs, ys))


def test_batches_are_the_same_in_workers_and_alone_and_resume_exactly(data):
    ds = open_prepared(data / "jpeg")
    split = ds.split("train")
    alone = Loader(split, ds, batch_size=4, train=True, crop=32, workers=0, pca_std=0.1)
    workers = Loader(split, ds, batch_size=4, train=True, crop=32, workers=2, pca_std=0.1)
    full = batches(alone)
    assert same(full, batches(workers))  # the op alone == inside DataLoader workers
    assert same(full, batches(Loader(split, ds, batch_size=4, train=True, crop=32, workers=0, pca_std=0.1)))
    assert not same(full, batches(alone, epoch=1))
    assert same(full[2:], batches(alone, start=2)) and same(full[2:], batches(workers, start=2))
    assert full[0][0].shape == (4, 3, 32, 32) and full[0][0].dtype == torch.float32
    assert alone.steps(0) == len(split) // 4 == len(full)
    assert alone.wait_s > 0 and alone.batches > 0


def test_train_batch_is_the_documented_augmentation_of_the_stored_images(data):
    """Rebuild one batch by hand: decode the stored JPEGs, draw the same generator, augment."""
    import io
    ds = open_prepared(data / "jpeg")
    split = ds.split("train")
    loader = Loader(split, ds, batch_size=4, train=True, crop=32, workers=0, pca_std=0.1, seed=5)
    got = next(iter(loader.epoch(2)))
    idx = loader.plan(2)[0]
    assert got.indices.tolist() == idx.tolist() and got.labels.tolist() == split.labels[idx].tolist()
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(split[int(i)][0])).convert("RGB")))
                        .permute(2, 0, 1) for i in idx])
    g = torch.Generator().manual_seed(step_seed(5, 2, 0, 0))
    p = A.sample_params(4, 40, 32, g, pca_std=0.1)
    st = ds.stats
    want = A.train_batch(imgs, p, A.Normalize(mean_image=torch.tensor(st["mean_image"])),
                         torch.tensor(st["eigval"], dtype=torch.float32), torch.tensor(st["eigvec"], dtype=torch.float32))
    torch.testing.assert_close(got.images, want, atol=2.0, rtol=0)  # libjpeg-turbo vs Pillow rounding


def test_evaluation_batches_and_ten_views(data):
    ds = open_prepared(data / "jpeg")
    val = ds.split("val")
    for views, shape in ((1, (3, 32, 32)), (10, (10, 3, 32, 32))):
        loader = Loader(val, ds, batch_size=3, train=False, crop=32, workers=0, views=views)
        got = batches(loader)
        assert all(b[0].shape[1:] == shape for b in got)
        assert sorted(torch.cat([b[2] for b in got]).tolist()) == list(range(len(val)))
    loader = Loader(val, ds, batch_size=3, train=False, crop=32, workers=0, views=10, rank=1, world_size=2)
    assert torch.cat([b[2] for b in batches(loader)]).tolist() == list(range(1, len(val), 2))


def test_raw_and_keep_aspect_data_sets(data):
    ds = open_prepared(data / "raw")
    loader = Loader(ds.split("train"), ds, batch_size=4, train=True, crop=32, workers=2, mean="channel",
                    dtype="bfloat16")
    got = batches(loader)
    assert got[0][0].dtype == torch.bfloat16 and got[0][0].shape == (4, 3, 32, 32)
    ds = open_prepared(data / "aspect")
    assert len({(int(r["height"]), int(r["width"])) for r in ds.split("train").index}) > 1
    for train, kw in ((True, {}), (True, {"scale": (0.3, 1.0), "ratio": (0.75, 1.33)}), (False, {"views": 10})):
        loader = Loader(ds.split("train" if train else "val"), ds, batch_size=4, train=train, crop=32, workers=0, **kw)
        got = batches(loader)
        assert got and all(torch.isfinite(b[0]).all() for b in got)
        assert got[0][0].shape[-2:] == (32, 32)


def test_scale_jitter_on_fixed_size_data(data):
    ds = open_prepared(data / "jpeg")
    loader = Loader(ds.split("train"), ds, batch_size=4, train=True, crop=32, workers=0, mean="channel",
                    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    a, b = batches(loader), batches(loader)
    assert same(a, b) and a[0][0].shape == (4, 3, 32, 32)


def _gloo_worker(rank, world, init_file, root, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ds = open_prepared(root)
    seen = {}
    for name, train in (("train", True), ("val", False)):
        loader = Loader(ds.split(name), ds, batch_size=3, train=train, crop=32, workers=0, rank=rank, world_size=world,
                        drop_last=False)
        mine = [int(i) for b in loader.epoch(1) for i in b.indices]
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        seen[name] = gathered
    if rank == 0:
        torch.save(seen, os.path.join(out_dir, "seen.pt"))
    dist.destroy_process_group()


def test_two_process_gloo_run_covers_each_epoch_exactly_once(data, tmp_path):
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(data / "jpeg"), str(tmp_path)), nprocs=2)
    seen = torch.load(tmp_path / "seen.pt")
    ds = open_prepared(data / "jpeg")
    for name in ("train", "val"):
        per_rank = seen[name]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == list(range(len(ds.split(name))))


def test_pooled_buffers_stay_valid_for_keep_batches(data):
    """CPU batches are written into reused shared buffers: valid until `keep` more are requested."""
    ds = open_prepared(data / "jpeg")
    loader = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=2, keep=2, pca_std=0.1)
    assert loader.pool is not None and len(loader.pool) == 2 * 2 + 2 + 1
    held = []
    for batch in loader.epoch(0):
        held.append((batch.images, batch.images.clone()))
        for images, copy in held[-3:]:  # the current batch and the `keep` before it are intact
            assert torch.equal(images, copy)
    assert len(held) == len(ds.split("train")) // 2 > len(loader.pool)
    fresh = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=0, pool_bytes=0, pca_std=0.1)
    assert fresh.pool is None and same(batches(fresh), batches(loader))


def photo_like_jpegs(n: int, seed: int = 0) -> list[torch.Tensor]:
    """JPEG bytes (quality 90, 4:2:0 like most photographs) of smooth random scenes with a little
    grain: what nvJPEG and libjpeg-turbo are compared on. Uniform noise is no photograph: there the
    two decoders' chroma upsampling differs by ~10 grey levels per pixel (measured on an H200)."""
    import io
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((256, 192), Image.BICUBIC)
        pixels = np.clip(np.asarray(small, np.int16) + rng.integers(-6, 7, (192, 256, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_augmentation_equals_the_cpu_and_nvjpeg_is_close_to_libjpeg(data):
    """The GPU path is the CPU path's code on another device: given the same decoded pixels, its
    batches equal the CPU's (float rounding apart); nvJPEG itself decodes photographs to within a
    grey level of libjpeg-turbo on average (0.82 on 400 Imagenette photos, H200, 2026-11-30)."""
    ds = open_prepared(data / "jpeg")
    for train in (True, False):
        name = "train" if train else "val"
        kw = dict(crop=32, pca_std=0.1, views=1 if train else 10)
        cpu = Loader(ds.split(name), ds, batch_size=4, train=train, workers=0, **kw)
        gpu = Loader(ds.split(name), ds, batch_size=4, train=train, workers=2, device="cuda", **kw)
        same = Loader(ds.split(name), ds, batch_size=4, train=train, workers=2, device="cuda", gpu_decode=False, **kw)
        assert gpu.spec.gpu_decode and not same.spec.gpu_decode
        for a, b, c in zip(cpu.epoch(0), gpu.epoch(0), same.epoch(0)):
            assert b.images.is_cuda and b.images.shape == a.images.shape
            assert torch.equal(a.indices, b.indices.cpu()) and torch.equal(a.indices, c.indices.cpu())
            assert (a.images - c.images.cpu()).abs().max() < 1e-2
    payloads = photo_like_jpegs(16)
    for a, b in zip(decode_jpegs(payloads), decode_jpegs(payloads, "cuda")):
        assert a.shape == b.shape and (a.float() - b.cpu().float()).abs().mean() < 4.0  # measured <= 3.31


def test_workers_inherit_the_decoder_instead_of_importing_it_each_epoch():
    """Workers are forked at each epoch's start; importing torchvision in each of them at its first
    decode cost 1.7-2.6 s of a 2.6-3.1 s epoch on the 2-core CI machine (0.08 s inherited). The
    loader's module must therefore bring torchvision.io into the main process itself."""
    import subprocess
    import sys
    code = "import sys, alexnet.data.loader; print('torchvision.io' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_workers_are_kept_across_epochs_and_an_abandoned_epoch_leaks_nothing(data):
    """Persistent workers: the same processes serve every epoch (starting them cost ~1 s per epoch
    on an H200 host), the batches stay those of workers=0, and an epoch left after 2 batches stops
    the workers, so its prefetched batches never reach the next epoch."""
    ds = open_prepared(data / "jpeg")
    alone = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=0, pca_std=0.1)
    kept = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=2, pca_std=0.1)
    first = batches(kept, 0)
    workers = [w.pid for w in kept._dl._iterator._workers]
    assert same(first, batches(alone, 0)) and same(batches(kept, 1), batches(alone, 1))
    assert [w.pid for w in kept._dl._iterator._workers] == workers and all(w.is_alive() for w in kept._dl._iterator._workers)
    for k, _ in enumerate(kept.epoch(2)):
        if k == 1:
            break
    assert kept._dl is None  # stopped with the abandoned epoch
    assert same(batches(kept, 3), batches(alone, 3)) and same(batches(kept, 2), batches(alone, 2))
    kept.close()


def test_a_new_epoch_does_not_overwrite_the_batches_still_held_from_the_last(data):
    """The pool contract (a batch stays valid until `keep` further batches are requested) also
    holds across an epoch boundary: the next epoch's workers write other buffers. Here the last
    batch of epoch 0 would share its buffer with epoch 1's first if slots restarted each epoch."""
    ds = open_prepared(data / "jpeg")
    loader = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=2, keep=2, pca_std=0.1)
    assert loader.pool is not None and loader.steps(0) % len(loader.pool) == 1  # 8 steps, 7 buffers
    last = None
    for batch in loader.epoch(0):
        last = (batch.images, batch.images.clone())
    it = loader.epoch(1)
    next(it)  # one further batch requested: epoch 0's last must still be intact
    assert torch.equal(*last)
    it.close()


# the start of a child process's script: a small prepared set `ds` and the Loader class
CHILD_WITH_A_SET = ("import sys; sys.path.insert(0, 'tests'); from pathlib import Path; import tempfile\n"
                    "from test_loader import make_source\n"
                    "from alexnet.data.prepare import prepare\n"
                    "from alexnet.data.store import open_prepared\n"
                    "from alexnet.data.loader import Loader\n"
                    "base = Path(tempfile.mkdtemp())\n"
                    "make_source(base / 'src'); prepare(base / 'src', base / 'p', size=40, workers=0, progress=False)\n"
                    "ds = open_prepared(base / 'p')\n")


def test_a_process_with_kept_workers_exits_promptly():
    """Kept workers ignore SIGTERM (they leave it to the main process); without the loader's exit
    hook, multiprocessing's own would wait for them forever at the interpreter's exit."""
    import subprocess
    import sys
    code = CHILD_WITH_A_SET + (
        "loader = Loader(ds.split('train'), ds, batch_size=2, train=True, crop=32, workers=2)\n"
        "print(sum(1 for _ in loader.epoch(0)), loader._dl is not None)\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert proc.returncode == 0 and proc.stdout.split() == ["8", "True"], proc.stderr[-2000:]


def test_workers_whose_iterator_was_lost_are_stopped_and_the_exit_does_not_wait_for_them():
    """A worker's death reported from torch's SIGCHLD handler inside DataLoader.__iter__ loses the
    new iterator, so torch's clean-up never ran: the other workers (which ignore SIGTERM) kept the
    process from exiting for ever (a CI timeout). close() stops them, silently (no "worker killed by
    signal" from torch's handler afterwards), and the interpreter's exit does not wait for them."""
    import subprocess
    import sys
    code = CHILD_WITH_A_SET + (
        "lost = []\n"
        "for close in (True, False):\n"
        "    loader = Loader(ds.split('train'), ds, batch_size=2, train=True, crop=32, workers=2)\n"
        "    assert sum(1 for _ in loader.epoch(0)) == 8\n"
        "    it = loader._dl._iterator; lost.append(it); loader._dl._iterator = None  # as when __iter__ raised\n"
        "    print(*[w.pid for w in it._workers])\n"
        "    if close:\n"
        "        loader.close(); assert not any(w.is_alive() for w in it._workers)\n"
        "        again = Loader(ds.split('train'), ds, batch_size=2, train=True, crop=32, workers=2)\n"
        "        assert sum(1 for _ in again.epoch(0)) == 8; again.close()  # no error from the handler\n"
        "sys.stdout.flush()\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=root, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    pids = [int(p) for p in out.split()]
    assert len(pids) == 4 and not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_second_epoch_while_one_is_open_is_refused_not_mixed(data):
    """Kept workers serve one epoch at a time: a second epoch started while another is still open
    (zip over two epochs, or an abandoned iterator still referenced) would reset the shared workers
    and silently mix or cut both short; it is refused, and works once the first is closed."""
    ds = open_prepared(data / "jpeg")
    for workers in (0, 2):
        loader = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=workers, pca_std=0.1)
        first = loader.epoch(0)
        next(first)
        with pytest.raises(RuntimeError, match="epoch 0 of this Loader is still being read"):
            next(loader.epoch(1))
        first.close()
        alone = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, workers=0, pca_std=0.1)
        assert same(batches(loader, 1), batches(alone, 1))
        loader.close()
