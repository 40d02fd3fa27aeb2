"""Requests that arrive together share one forward pass; the queue is bounded.

    batcher = Batcher(net, max_batch=32, window_s=0.005, queue_size=64)
    await batcher.start()                          # inside the event loop (the app's lifespan)
    with batcher.slot():                           # raises Busy when queue_size requests are in
        x = ...                                    # (V, 3, C, C): one image's 1 or 10 views
        result = await batcher.submit(x, codes=False)
    await batcher.stop()

Why batch: AlexNet's fully connected layers hold ~230 MB of weights (fc6 alone 9216 x 4096 floats)
that a forward pass reads whatever the batch size, so one pass over 16 images costs far less than
16 passes over one (benchmarks/serve.py measures it). The first request of a batch waits at most
`window_s` for company; requests already queued join without waiting, so `window_s = 0` still
batches under load and only `max_batch = 1` gives one forward pass per request.

Bounded: `slot()` admits at most `queue_size` requests at once, counted from the moment a request
arrives until it is answered (reading its body, decoding, waiting, in a forward pass), so neither
bodies nor queued tensors grow without bound; the app answers the rest 503 with Retry-After.

The forward pass runs in one worker thread, never on the event loop, so the server keeps accepting,
decoding and answering while the network computes; one thread because one pass at a time already
uses every core (torch's intra-op threads) and a queue that builds up meanwhile is the next batch.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import runtime
from ..inference import Network

CENTRE_VIEW = {1: 0, 10: 4}  # index of the centre crop among the views (augment.view_offsets order)


class Busy(Exception):
    """queue_size requests are already admitted; the caller should answer 503."""


@dataclass
class Job:
    x: torch.Tensor  # (V, 3, C, C) the views of one image, V = 1 or 10
    codes: bool  # also return the centre crop's fc7 code (for nearest neighbours)
    future: asyncio.Future
    queued_at: float  # time.perf_counter()


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
        self.batches = 0  # forward passes so far
        self.images = 0  # images through them

    async def start(self) -> None:
        self.queue: asyncio.Queue[Job] = asyncio.Queue(self.queue_size)
        self.arrived = asyncio.Event()  # set by submit(): wakes a batcher waiting out its window
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="alexnet-forward")
        # one pass before the first request: allocations and kernel choice are not a user's latency
        c = self.net.crop
        await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, [
            Job(torch.zeros(1, 3, c, c, device=self.net.device), True, None, time.perf_counter())])
        self.task = asyncio.create_task(self._run(), name="alexnet-batcher")

    async def stop(self) -> None:
        """After the server has drained its requests: end the batcher and its thread."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.executor.shutdown(wait=True)

    @contextlib.contextmanager
    def slot(self):
        if self.admitted >= self.queue_size:
            raise Busy
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def submit(self, x: torch.Tensor, codes: bool = False) -> Result:
        """Queue one image's views (V, 3, C, C) and wait for its share of a batch's forward pass."""
        job = Job(x, codes, asyncio.get_running_loop().create_future(), time.perf_counter())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:  # cannot happen inside slot(), which admits at most queue_size
            raise Busy from None
        self.arrived.set()
        return await job.future

    async def _collect(self) -> list[Job]:
        """Wait for a first job, then take more until max_batch or until the window closes."""
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
            if remaining <= 0:
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

    @torch.inference_mode()
    def forward(self, jobs: list[Job]) -> list[Result]:
        """One forward pass over every view of every job (in the worker thread)."""
        start = time.perf_counter()
        model = self.net.model
        x = torch.cat([job.x for job in jobs]).to(self.net.device)  # (sum of V, 3, C, C)
        with runtime.autocast(self.net.device, self.net.dtype):  # the precision `serve --precision` chose
            if any(job.codes for job in jobs):
                codes = model.embed(x)  # (N, 4096) fc7 after ReLU, §6.1
                logits = model.fc8(model.dropout8(codes))  # what model(x) computes, with fc7 kept
            else:
                codes, logits = None, model(x)
        # as Network.probabilities: the softmax of each view, averaged over an image's views (§4.1)
        probs = F.softmax(logits.float(), dim=1).cpu()  # a device sync point: the answers leave the device
        codes = codes.float().cpu() if codes is not None else None
        forward_ms = 1000 * (time.perf_counter() - start)
        out, row = [], 0
        for job in jobs:
            v = len(job.x)
            code = codes[row + CENTRE_VIEW[v]] if job.codes else None
            out.append(Result(probs[row:row + v].mean(0), code, 1000 * (start - job.queued_at), forward_ms, len(jobs)))
            row += v
        if jobs[0].future is not None:  # not the warm-up pass
            self.batches += 1
            self.images += len(jobs)
        return out
