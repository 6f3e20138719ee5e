"""Data parallelism under torchrun: N processes, each a disjoint share of every global batch.

    torchrun --standalone --nproc-per-node N -- sft.py ...      (also dpo.py, evaluate.py)

(`--` ends torchrun's own options: without it, evaluate.py's --run reads as an abbreviation of its --run-path.)

torchrun starts N copies of the script with RANK, WORLD_SIZE and LOCAL_RANK in the environment; setup() joins
them into one process group (NCCL between GPUs, one GPU per process; gloo between CPU processes). Without
torchrun (WORLD_SIZE absent or 1) every function here is a no-op and the scripts run exactly as before.

Training stays exact without DistributedDataParallel: every rank takes every N-th example of the step's global
batch (the schedule is fixed by the seed, the same on every rank), and its loss is its share's summed NLL divided
by the WHOLE batch's size, so the sum of the ranks' gradients is the gradient one process would get. sum_grads
adds them up after backward, and every rank then takes the same optimizer step from the same gradients: the
weights stay equal everywhere, bit for bit, without ever being sent. (DDP's wrapper would do the same sum, but it hooks into
model.forward, which our losses bypass: they call model.model and the head separately.)

Evaluation deals whole batches round-robin (shard) and puts the results back in order on every rank (gather):
each batch is computed as one process computes it, so the numbers are the same.
"""
import os

import torch
import torch.distributed as dist


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """Rank 0 alone prints, writes logs, checkpoints, adapters and reports."""
    return rank() == 0


def bar_off():
    """tqdm's `disable`: None (a bar when writing to a terminal) on rank 0, no bar on the others."""
    return None if is_main() else True


def setup(device):
    """Join torchrun's process group when launched by it; returns the device this process uses.

    On CUDA each process takes the GPU of its local rank (cuda:LOCAL_RANK). Calling it again is harmless.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def barrier():
    if world_size() > 1:
        dist.barrier()


def cleanup():
    """Leave the process group together. Without the barrier a rank that finishes first tears down its gloo
    connections while rank 0 still writes the outputs, and has aborted at exit ("terminate called without an active
    exception", SIGABRT) though training had ended."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _device():
    """Where collective tensors live: the current GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(items):
    """This rank's share of `items` (a list, range or array): items rank, rank + N, rank + 2N, ...

    Round-robin, so shares differ by one item at most and, where items are sorted by length (a batch of
    sft.batch_schedule), every rank gets short and long ones alike.
    """
    return items[rank()::world_size()]


def gather(mine):
    """The inverse of shard: every rank's list, interleaved back into the original order, on every rank.

    The items travel pickled, so they should be plain Python values or CPU tensors."""
    n = world_size()
    if n == 1:
        return list(mine)
    parts = [None] * n
    dist.all_gather_object(parts, list(mine))
    out = [None] * sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        out[r::n] = part
    return out


def sum_all(values):
    """Python numbers summed over the ranks (in float64), on every rank."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def cat_all(t):
    """Every rank's tensor, concatenated along dim 0 in rank order, on every rank. The ranks' tensors may differ in
    length along dim 0 (a DPO step of whole prompts, 7 pairs, gives shares of 4 and 3); all_gather wants equal
    shapes, so each share travels padded to the longest and is cut back after."""
    if world_size() == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.empty_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(x) for x in sizes]
    padded = torch.cat([t, t.new_zeros((max(sizes) - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:k] for p, k in zip(parts, sizes)])


def sum_grads(params):
    """Sum the gradients of `params` over the ranks, in place: one all-reduce of one flat buffer."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:        # a rank whose share did not reach a parameter contributes zeros
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def broadcast_(params):
    """Rank 0's values of `params` on every rank (DDP's constructor does the same): one source of truth for the
    starting weights, whatever each rank's random draws were."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, 0)
