"""Run a function in several CPU processes as torchrun would (gloo), with a deadline.

``run_ranks`` spawns the ranks with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT on a
free port) and waits for them at most ``timeout`` seconds: a rank that hangs is killed and the test fails,
instead of a spawned process keeping pytest alive after its own timeout.
"""
import faulthandler
import os
import signal
import socket
import time
from typing import Callable, Sequence

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ranked(rank: int, fn: Callable, world: int, port: int, args: Sequence) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung rank's stacks, asked for before the kill
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    fn(rank, *args)


def run_ranks(fn: Callable, args: Sequence = (), world: int = 2, timeout: float = 600.) -> None:
    """``fn(rank, *args)`` in ``world`` spawned processes; fails the test if they are not done in ``timeout`` s
    (the processes are killed first). A rank that raises fails the test with its traceback (``mp.spawn``)."""
    context = mp.spawn(_ranked, args=(fn, world, free_port(), tuple(args)), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(deadline - time.monotonic(), 0.)):
        if time.monotonic() >= deadline:
            alive = [p for p in context.processes if p.is_alive()]
            for p in alive:
                os.kill(p.pid, signal.SIGUSR1)  # print where it hangs (to the test's captured stderr)
            time.sleep(3)
            for p in alive:
                p.kill()
            for p in context.processes:
                p.join(10)
            pytest.fail(f'{world} ranks of {fn.__name__} not done after {timeout:.0f} s: killed')
