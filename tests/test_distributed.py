"""Networks with BSConvU / BSConvS train under DistributedDataParallel and FSDP (2 processes, gloo, CPU).

The BNs inside the layers are SyncBatchNorm (nn.SyncBatchNorm.convert_sync_batchnorm), which the fused path
handles by all-reducing the input moments (native SyncBatchNorm would refuse CPU tensors). Two checks after a few
SGD steps: every parameter and buffer is identical on both ranks, and equals a single-process run of the plain
network (BatchNorm2d, two-layer path) on the same global batch, in float64.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
from bsconv_fused.modules import BSConvS, BSConvU

HERE = Path(__file__).resolve().parent
WORLD = 2
# float64; the distributed run sums the statistics and gradients in another order (per-rank partial sums), and the
# single-process run uses the two-layer path: a few ulps per op over 3 steps.
TOL = dict(rtol=1e-9, atol=1e-11)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(mode: str, tmp_path: Path):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)  # the workers use the extension's CPU kernels
    outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "distributed_worker.py"), str(r), str(WORLD), str(port),
                               mode, str(outs[r])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(WORLD)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{mode}: a rank did not finish in 240 s")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"{mode} rank {r} failed:\n{log[-4000:]}"
    return [torch.load(o) for o in outs]


def single_process_state():
    net = worker.make_net(backend="torch")
    worker.train(net, worker.make_batches())
    return net.state_dict()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_each_other_and_a_single_process_run(mode, tmp_path):
    if mode == "fsdp":
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP is not available in this torch")
    states = run_ranks(mode, tmp_path)
    ref = single_process_state()
    assert set(states[0]) == set(states[1]) == set(ref)
    for name in ref:
        assert torch.equal(states[0][name], states[1][name]), f"{mode}: {name} differs between the ranks"
        if name.endswith("num_batches_tracked"):
            assert int(states[0][name]) == int(ref[name]) == worker.STEPS
        else:
            torch.testing.assert_close(states[0][name], ref[name], **TOL,
                                       msg=lambda s, n=name: f"{mode}: {n} vs single process: {s}")
    # the run really moved the weights (a no-op training would pass the comparisons trivially)
    init = worker.make_net(backend="torch").state_dict()
    assert not torch.allclose(init["0.pw.weight"], ref["0.pw.weight"])


def test_worker_network_uses_the_fused_layers():
    net = worker.make_net()
    assert isinstance(net[0], BSConvU) and isinstance(net[2], BSConvS)
    assert net[0].fused_path_reason() is None and net[2].fused_path_reason() is None
