"""spattn.distributed with 2 and 4 gloo processes on the CPU: results equal the single-process
call (float32, relative error <= 1e-5, forward and backward), the bytes sent equal what the
pattern needs, and bad shards give a clear error on every rank (with a timeout set)."""
import socket

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import _dist_worker  # noqa: E402

if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, suite):
    mp.spawn(_dist_worker.main, args=(world, _free_port(), suite), nprocs=world, join=True)


@pytest.mark.parametrize("world", [2, 4])
def test_patterns_equal_single_process(world):
    _spawn(world, "patterns")


def test_halo_bytes_and_errors_on_every_rank():
    _spawn(2, "bytes_and_errors")
