"""ZeRO-1 over MPI: one step of sharded Adam, split into its parts, against one process.

Run under ``mpiexec`` once per world size, the same total size each time::

    mpiexec -n 1 python benches/bench_zero.py --size 2^24
    mpiexec -n 2 python benches/bench_zero.py --size 2^24
    mpiexec -n 3 python benches/bench_zero.py --size 2^24

Every rank holds the whole float32 model (``--size`` elements in ``--parameters`` arrays, 8 by
default) and steps
``fastopt.distributed.ZeroRedundancyOptimizer`` with ``fastopt.Adam``. Rank 0 prints the
median over ``--rounds`` rounds of

- ``step``: the whole sharded step;
- ``reduce-scatter``: ``MPI.Reduce_scatter_block`` of a gradient buffer of the total size;
- ``local step``: the local optimizer stepping the rank's shard alone;
- ``all-gather``: ``MPI.Allgather`` of the parameters' shards;
- ``rest``: what the step adds to these (copying the gradients in and the gathered
  parameters out, one small ``allgather`` of the ranks' reports);
- ``one process``: ``fastopt.Adam`` over the whole size in one process (``-n 1``).

with the cores shared among the ranks (``numba`` threads per rank: cores / world), and the
bytes each rank sends per step (reduce-scatter and all-gather each send
``(world - 1) / world`` of the buffer: together an all-reduce's). On one machine the
"network" is shared memory and the ranks share its cores and memory bandwidth.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ZeroRedundancyOptimizer


def parse_size(text: str) -> int:
    if text.startswith("2^"):
        return 2 ** int(text[2:])
    return int(text)


def timed(comm, function, repeats: int) -> float:
    """Median seconds of ``function`` over ``repeats`` calls, every rank starting together;
    the slowest rank's time counts."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        times.append(comm.allreduce(elapsed, op=MPI.MAX))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=2**24)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parameters", type=int, default=8, help="arrays the size is split in")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    # The machine's cores shared among the ranks (numba would start one thread per core in
    # each rank); a cluster runs one rank per socket or per node instead.
    numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS // world))
    rng = np.random.default_rng(0)
    sizes = [len(part) for part in np.array_split(np.arange(args.size), args.parameters)]
    params = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    opt = ZeroRedundancyOptimizer(params, fastopt.Adam, lr=1e-4)
    shard = opt.layout.counts[rank]
    send = np.ones(opt.layout.total, np.float32)
    receive = np.empty(shard, np.float32)
    gathered = np.empty(opt.layout.total, np.float32)
    local_grads = [rng.standard_normal(p.shape, dtype=np.float32) for p in opt.optim.params]
    parts = {
        "step": lambda: opt.step(grads),
        "reduce-scatter": lambda: comm.Reduce_scatter_block(send, receive, op=MPI.SUM),
        "local step": lambda: opt.optim.step(local_grads),
        "all-gather": lambda: comm.Allgather(MPI.IN_PLACE, gathered),
    }
    if world == 1:
        alone = fastopt.Adam([p.copy() for p in params], lr=1e-4)
        parts["one process"] = lambda: alone.step(grads)
    for function in parts.values():  # compiled, buffers touched
        function()
    rounds: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, function in parts.items():
            rounds[name].append(timed(comm, function, args.repeats))
    medians = {name: statistics.median(times) for name, times in rounds.items()}
    medians["rest"] = medians["step"] - sum(
        medians[name] for name in ("reduce-scatter", "local step", "all-gather")
    )
    sent = 2 * (world - 1) / world * args.size * 4
    state = comm.gather(opt.state_nbytes(), root=0)
    if rank == 0:
        print(
            f"world {world}, {args.size} float32 elements in {args.parameters} arrays, Adam, "
            f"medians of {args.rounds}"
        )
        print("| part | ms |")
        print("|---|---:|")
        for name in ("step", "reduce-scatter", "local step", "all-gather", "rest", "one process"):
            if name in medians:
                print(f"| {name} | {medians[name] * 1e3:.2f} |")
        print(
            f"sent per rank per step: {sent / 2**20:.1f} MiB; state per rank: "
            f"{[round(s / 2**20, 1) for s in state]} MiB"
        )


if __name__ == "__main__":
    main()
