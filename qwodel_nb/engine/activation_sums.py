"""AWQ's activation sums in a distributed run, added up in the order of a one-GPU run.

llm-compressor adds each mapping's input activations up batch by batch in float32 (``x_sum +=``
per batch) and, across processes, all-reduces the per-process sums. Float32 addition is not
associative, so the all-reduced sum differs from a one-GPU run's in its last bits; AWQ's scales
follow it, bf16 smoothing turns that into slightly different weights, and the difference grows
layer by layer. Measured on SmolLM2-135M, two H200s against one, before this module: 77 of 90
grid choices the same, the second layer's round-to-nearest loss already 0.4% apart, perplexity
22.37 against 22.71 (bench/RESULTS.md).

So in a distributed run each process also records its per-batch sums, computed exactly as
llm-compressor's hook computes the values it adds. Before a layer is smoothed, :meth:`settle`
gathers them from every process, puts them in the one-GPU run's batch order (process ``r`` of
``W`` calibrates on the batches ``r, r + W, r + 2W, ...``: ``CalibrationSet.rank_batches``) and adds
them up in that order, which gives the one-GPU run's sum bit for bit. Rank 0 keeps that sum and the
other ranks zeros, so every all-reduce (llm-compressor's and qwodel's, all sums) hands each rank
exactly that value. Outside a distributed run nothing here is used.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .awq_hooks import batch_sum
from .ranks import gather_objects, rank, union_of_names, world_size


class BatchSums:
    """Per-batch activation sums of one process, by mapping (its smooth layer's name)."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}

    def hook(self, smooth_name: str) -> Callable:
        """A forward hook recording what llm-compressor's activation hook adds for this batch."""

        def record(_module: Any, args: tuple, _output: Any) -> None:
            from llmcompressor.core import active_session

            state = active_session().state
            batch = state.current_batch_idx if state else -1
            total, rows = batch_sum(args[0])
            global_index = batch * world_size() + rank()
            self.records.setdefault(smooth_name, []).append((global_index, total.cpu(), torch.tensor(rows)))

        return record

    def settle(self, stats: dict) -> None:
        """Replace this layer's entries of ``stats`` (llm-compressor's ``_smooth_activation_stats``)
        with the one-GPU order's sums on rank 0 and zeros elsewhere, then forget the records."""
        names = union_of_names(list(self.records))
        if not names:
            return
        parts = gather_objects({name: self.records.get(name, []) for name in names})
        for name in names:
            entries = sorted((entry for part in parts for entry in part.get(name, [])), key=lambda e: e[0])
            total = torch.zeros_like(entries[0][1])
            count = torch.zeros_like(entries[0][2])
            for _, batch_sum, batch_count in entries:
                total += batch_sum
                count += batch_count
            if rank() != 0:
                total, count = torch.zeros_like(total), torch.zeros_like(count)
            stats[name] = [total, count]
        self.records.clear()
