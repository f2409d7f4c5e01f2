"""What the launcher's fork server loads once, before it forks host processes
(launch/hosts.py): torch, byzctl's roles and components, and the compiled CPU
selection kernel (numba), so no host process imports or compiles them again."""

from __future__ import annotations

import contextlib
import gc

import torch

import byzctl.node.host  # noqa: F401 - the import is the point: roles, aggregators, attacks, data

# The server runs its warm-ups on one thread: an OpenMP pool started here would be
# copied into every forked host without its threads, and the host's first parallel op
# (krum's Gram matrix at n = 25) would wait on them for ever. Each host sets its own
# thread count (device.threads) and starts its own pool.
torch.set_num_threads(1)


def _kernels() -> None:
    """Load (or, the first time on this machine, compile) numba's fp32 kernel."""
    with contextlib.suppress(Exception):  # no numba, no cache directory: nodes fall back as they would anyway
        from byzctl.aggregators._numba_select import MIN_COLUMNS
        from byzctl.aggregators.cw_median import cw_median

        cw_median(torch.zeros(3, MIN_COLUMNS))


def _batched() -> None:
    """torch.func's first batched gradient takes ~1.5 s to set up; pay it here once."""
    from byzctl.learning.batched import batched_gradients

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    d = sum(p.numel() for p in model.parameters())
    batched_gradients(model, torch.zeros(2, d), torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.long))


_kernels()
_batched()

# What the server holds now is never collected: frozen, the collector of a forked host does
# not walk (and so copy, page by page) the server's objects on its first collections.
gc.freeze()
