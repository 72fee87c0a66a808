"""The anchor board of a wavefront render: batch k publishes the latents of its frames 0 and N-1 at the start of each
denoising step; batch k+1 waits for step j's entry before it runs step j (its anchors). One async Ray actor; entries
are dropped once the batch that needs them has finished."""
from __future__ import annotations

import asyncio
from collections import defaultdict


class AnchorBoard:
    """Async actor body (wrapped with ray.remote by the caller). Keys are (batch index, run step)."""

    def __init__(self):
        self._data: dict = {}
        self._ready: dict = defaultdict(asyncio.Event)

    async def put(self, batch: int, step: int, latents) -> None:
        """Record batch's step entry; a re-run of the batch (after a fault) publishes the same values again and the
        first entry is kept."""
        key = (batch, step)
        if key not in self._data:
            self._data[key] = latents
            self._ready[key].set()

    async def get(self, batch: int, step: int):
        """Wait for, then return, batch's entry at step."""
        key = (batch, step)
        await self._ready[key].wait()
        return self._data[key]

    async def drop(self, batch: int) -> None:
        """Forget every entry of `batch` (its follower has finished, or it is on disk)."""
        for key in [k for k in self._data if k[0] == batch]:
            del self._data[key]
            self._ready.pop(key, None)

    async def size(self) -> int:
        return len(self._data)
