"""Requests that arrive together share one forward pass; the queue is bounded.

    batcher = Batcher(net, max_batch=32, window_s=0.005, queue_size=64)
    await batcher.start()                          # inside the event loop (the app's lifespan)
    with batcher.slot() as ticket:                 # raises Busy when queue_size requests are in
        pixels = ...                               # (S, S, 3) uint8: decoded, §2 resize and centre crop
        result = await ticket.submit(pixels, views=1, codes=False)
    await batcher.stop()

Why batch: AlexNet's fully connected layers hold ~230 MB of weights (fc6 alone 9216 x 4096 floats)
that a forward pass reads whatever the batch size, so one pass over 16 images costs far less than
16 passes over one (benchmarks/serve.py measures it). The batcher takes every job already queued;
it waits for more, at most `window_s`, only while other admitted requests are still being read or
decoded (they are on their way), so a lone request never waits and `window_s = 0` still batches
under load; only `max_batch = 1` gives one forward pass per request.

Bounded: `slot()` admits at most `queue_size` requests at once, counted from the moment a request
arrives until it is answered (reading its body, decoding, waiting, in a forward pass), so neither
bodies nor queued tensors grow without bound; the app answers the rest 503 with Retry-After.

All the tensor work happens in one worker thread, never on the event loop: the requests' uint8
pixels are stacked, turned into the network's views and normalised as one batch (the same
alexnet.data.augment.eval_views as Network.preprocess), then the forward pass. Decoding threads
use Pillow and numpy only, so torch's thread pool is entered from one thread and the cores are not
oversubscribed by several OpenMP teams.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import eval_views
from ..inference import Network

CENTRE_VIEW = {1: 0, 2: 0, 10: 4}  # index of the centre crop among the views (augment.view_offsets order)


class Busy(Exception):
    """queue_size requests are already admitted; the caller should answer 503."""


@dataclass
class Job:
    pixels: np.ndarray  # (S, S, 3) uint8: one image after the §2 resize and centre crop
    views: int  # 1 (the centre crop) or 10 (§4.1)
    codes: bool  # also return the centre crop's fc7 code (for nearest neighbours)
    future: asyncio.Future | None
    queued_at: float  # time.perf_counter()


class Ticket:
    """One admitted request's right to submit its image (see Batcher.slot)."""

    def __init__(self, batcher: "Batcher"):
        self.batcher, self.submitted = batcher, False

    async def submit(self, pixels: np.ndarray, views: int = 1, codes: bool = False) -> "Result":
        """Queue the image and wait for its share of a batch's forward pass."""
        b = self.batcher
        job = Job(pixels, views, codes, asyncio.get_running_loop().create_future(), time.perf_counter())
        try:
            b.queue.put_nowait(job)
        except asyncio.QueueFull:  # cannot happen inside slot(), which admits at most queue_size
            raise Busy from None
        self.submitted = True
        b.incoming -= 1
        b.arrived.set()
        return await job.future


@dataclass
class Result:
    probabilities: torch.Tensor  # (classes,) softmax averaged over the views (§4.1)
    code: torch.Tensor | None  # (4096,) fc7 after ReLU of the centre crop (§6.1), or None
    queue_ms: float  # from submit to the start of its forward pass
    forward_ms: float  # the whole batch's forward pass
    batch_size: int  # images in that forward pass


class Batcher:
    def __init__(self, net: Network, max_batch: int = 32, window_s: float = 0.005, queue_size: int = 64):
        if max_batch < 1 or queue_size < 1 or window_s < 0:
            raise ValueError(f"max_batch and queue_size must be >= 1 and window_s >= 0, got "
                             f"{max_batch}, {queue_size}, {window_s}")
        self.net, self.max_batch, self.window_s, self.queue_size = net, max_batch, window_s, queue_size
        self.admitted = 0  # requests between slot() and their answer (event-loop only: no lock needed)
        self.incoming = 0  # admitted requests not yet submitted (being read or decoded)
        self.batches = 0  # forward passes so far
        self.images = 0  # images through them

    async def start(self) -> None:
        self.queue: asyncio.Queue[Job] = asyncio.Queue(self.queue_size)
        self.arrived = asyncio.Event()  # set by submit(): wakes a batcher waiting out its window
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="alexnet-forward")
        # one pass before the first request: allocations and kernel choice are not a user's latency
        s = self.net.size
        await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, [
            Job(np.zeros((s, s, 3), np.uint8), v, True, None, time.perf_counter()) for v in (1, 10)])
        self.task = asyncio.create_task(self._run(), name="alexnet-batcher")

    async def stop(self) -> None:
        """After the server has drained its requests: end the batcher and its thread."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.executor.shutdown(wait=True)

    @contextlib.contextmanager
    def slot(self):
        """Admit one request (raises Busy when queue_size are in); yields its Ticket."""
        if self.admitted >= self.queue_size:
            raise Busy
        self.admitted += 1
        self.incoming += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            self.admitted -= 1
            if not ticket.submitted:  # it failed before submitting (bad upload): nobody waits for it
                self.incoming -= 1
                self.arrived.set()

    async def _collect(self) -> list[Job]:
        """Wait for a first job, then take the queued ones, and wait for more (until max_batch or the
        window closes) only while other admitted requests are still on their way."""
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        deadline = loop.time() + self.window_s
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or self.incoming == 0:
                break
            # an Event, not wait_for(queue.get()): a timeout then can never swallow a job
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            try:
                results = await loop.run_in_executor(self.executor, self.forward, jobs)
            except Exception as e:  # e.g. out of device memory: these requests fail, the server goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, result in zip(jobs, results):
                if not job.future.done():  # a cancelled request is simply dropped
                    job.future.set_result(result)

    def views(self, jobs: list[Job]) -> torch.Tensor:
        """The jobs' images -> their views, (sum of V, 3, C, C) normalised, in job order."""
        net, c = self.net, self.net.crop
        pixels = torch.from_numpy(np.stack([job.pixels for job in jobs])).to(net.device).permute(0, 3, 1, 2)
        norm = net.norm_for(pixels.shape[-1])
        rows: list[torch.Tensor | None] = [None] * len(jobs)
        for v in sorted({job.views for job in jobs}):  # one eval_views call per view count
            idx = [i for i, job in enumerate(jobs) if job.views == v]
            x = eval_views(pixels[idx], c, v, norm).reshape(len(idx), v, 3, c, c)
            for k, i in enumerate(idx):
                rows[i] = x[k]
        return torch.cat(rows)

    @torch.inference_mode()
    def forward(self, jobs: list[Job]) -> list[Result]:
        """One forward pass over every view of every job (in the worker thread)."""
        start = time.perf_counter()
        x = self.views(jobs)  # (sum of V, 3, C, C)
        if any(job.codes for job in jobs):  # fc7 kept (§6.1) from the same pass
            logits, codes = self.net.logits_and_codes(x)
        else:
            codes, logits = None, self.net.forward(x)  # in the precision `serve --precision` chose
        # as Network.probabilities: the softmax of each view, averaged over an image's views (§4.1)
        probs = F.softmax(logits.float(), dim=1).cpu()  # a device sync point: the answers leave the device
        codes = codes.float().cpu() if codes is not None else None
        forward_ms = 1000 * (time.perf_counter() - start)
        out, row = [], 0
        for job in jobs:
            v = job.views
            code = codes[row + CENTRE_VIEW[v]] if job.codes else None
            out.append(Result(probs[row:row + v].mean(0), code, 1000 * (start - job.queued_at), forward_ms, len(jobs)))
            row += v
        if jobs[0].future is not None:  # not the warm-up pass
            self.batches += 1
            self.images += len(jobs)
        return out
