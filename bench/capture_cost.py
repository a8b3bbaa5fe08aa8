r"""Host time of the fast search's statistics capture and progress events, without the search.

qwodel's ``AWQModifier`` records each mapping (a ``MappingRecord``) and sends events around the
search: ``MappingStarted``, one ``GridPoint`` per grid point, ``MappingFinished``. On a GPU the
grid points of a mapping are reported together after the search reads its losses. This runs that
capture for ``--mappings`` mappings of SmolLM2's shape (576 input channels, 20 grid points), with
a search that only reports the points, and one counting listener, as bench/awq_speed.py's fast
variant has. It prints the best of ``--repeats`` wall times and the modifier's own ``capture_s``
(the time the capture counts for itself, which awq_speed.py reports as a share of the AWQ phase).

    python3 bench/capture_cost.py --mappings 90 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="host time of capture and events, without the search")
    parser.add_argument("--mappings", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=576)
    args = parser.parse_args(argv)

    import torch

    from qwodel_nb.engine.awq_capture import AWQModifier
    from qwodel_nb.engine.progress import Emitter

    events = [0]
    modifier = AWQModifier().observe(Emitter([lambda event: events.__setitem__(0, events[0] + 1)]), 30)
    mapping = types.SimpleNamespace(smooth_name="model.layers.3.post_attention_layernorm", parent_name="model.layers.3.mlp",
                                    balance_names=["model.layers.3.mlp.gate_proj", "model.layers.3.mlp.up_proj"])
    scales = torch.ones(args.channels)

    def search(mapping, fp16_outputs, orig_layer_weights):  # the points, all at once, as on a GPU
        modifier._on_points(list(range(20)), [1.0 + (i - 7) ** 2 for i in range(20)])
        return scales

    modifier._search = search
    walls, captures = [], []
    for _ in range(args.repeats):
        before = modifier._qw_capture_s
        started = time.perf_counter()
        for _ in range(args.mappings):
            modifier._smooth_activation_stats[mapping.smooth_name] = [torch.rand(args.channels), torch.tensor(8192)]
            modifier._compute_best_scale(mapping, None, None)
        walls.append(time.perf_counter() - started)
        captures.append(modifier._qw_capture_s - before)
    result = {"mappings": args.mappings, "events": events[0], "best_wall_ms": 1000 * min(walls),
              "best_capture_ms": 1000 * min(captures)}
    print(f"{args.mappings} mappings, {events[0]} events in all: best wall {result['best_wall_ms']:.2f} ms, "
          f"best capture_s {result['best_capture_ms']:.2f} ms")
    return result


if __name__ == "__main__":
    main()
