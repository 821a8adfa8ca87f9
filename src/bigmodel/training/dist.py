"""Many processes through PyTorch's own engine: torchrun's environment, DDP, FSDP2, collectives.

A run launched by ``torchrun --nproc-per-node N -m bigmodel train ...`` (or ``bigmodel train ...
--nproc N``, which calls torchrun) finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in its environment and
joins the process group: NCCL on GPUs, gloo on CPUs. The same recipe then gives the same answer as
one process with the same global batch: the sampler gives rank r every w-th sample of each global
batch, the loop divides the summed loss by the *global* item count, and DDP/FSDP average the
gradients over ranks (so each rank scales its loss by the world size first).

Only rank 0 writes the run directory and logs; every rank takes part in collectives in the same order.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.checkpoint import checkpoint

from bigmodel.errors import RecipeError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank r of ``world`` (1 = not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device, strategy: str = "ddp") -> tuple[Dist, torch.device]:
    """Join the process group torchrun described (once per process), and pick this rank's device:
    ``cuda:LOCAL_RANK`` on GPUs. Without torchrun's environment: one process, ``device`` unchanged."""
    if not launched_by_torchrun():
        return Dist(strategy=strategy), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RecipeError(
                f"--nproc / --nproc-per-node: process {local_rank} of this machine needs GPU {local_rank}, "
                f"but {torch.cuda.device_count()} are visible. Use one process per GPU, or train.device=cpu."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(
            backend, store=_attempt_store(rank, world), rank=rank, world_size=world,
            device_id=device if device.type == "cuda" else None,
        )  # fmt: skip
    return Dist(rank, world, local_rank, strategy), device


def _attempt_store(rank: int, world: int) -> tdist.Store:
    """torchrun's key-value store, under a prefix of its own for each restart of the group.

    torchrun (2.13) keeps one store across elastic restarts, so a restarted group's ranks could read
    the addresses the dead group published and fail to connect (gloo: "Connection refused"). The
    prefix makes each attempt's keys its own.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = tdist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
        is_master=not agent_hosts_it and rank == 0, timeout=timedelta(minutes=30),
    )  # fmt: skip
    return tdist.PrefixStore(f"bigmodel/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def current() -> Dist:
    """The process group this process is in (after :func:`setup`), or one process."""
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


# --- the model ---------------------------------------------------------------------------------


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the children of every ``ModuleList`` named ``blocks`` (the
    families' shared vocabulary: ``blocks.{i}``), in order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            found.extend(module)
    return found


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them.

    The block's ``forward`` is wrapped in place (an instance attribute), so parameter names, state
    dicts and checkpoints do not change. Returns the number of blocks wrapped.
    """
    blocks = blocks_of(model)
    if not blocks:
        raise RecipeError(
            f"train.activation_checkpointing: {type(model).__name__} has no `blocks` list of repeated layers "
            "to recompute. Set it to false for this model."
        )
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
    return len(blocks)


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def wrap(model: nn.Module, dist: Dist, device: torch.device, precision) -> nn.Module:
    """The model as the loop trains it: DDP (a full replica per rank, gradients averaged) or FSDP2
    (each block, then the root, ``fully_shard``-ed: weights, gradients and optimizer state split
    over ranks; in bf16 runs parameters are all-gathered in bf16 and gradients reduced in fp32)."""
    if not dist.active:
        return model
    if dist.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()
        if precision.autocast_dtype is not None and precision.weight_dtype == torch.float32:
            policy = MixedPrecisionPolicy(param_dtype=precision.autocast_dtype, reduce_dtype=torch.float32)
        for block in blocks_of(model):
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards the module in place: no wrapper)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_sync(model: nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation window."""
    if not last and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


# --- collectives ---------------------------------------------------------------------------------


def sum_over_ranks(value, dist: Dist):
    """The sum of ``value`` (a number, or a tuple of numbers in one collective) over all ranks
    (exact for integer counts: float64)."""
    if not dist.active:
        return value
    t = torch.tensor(value if isinstance(value, tuple) else [value], dtype=torch.float64, device=_device())
    tdist.all_reduce(t)
    return tuple(t.tolist()) if isinstance(value, tuple) else t.item()


def max_over_ranks(value: int, dist: Dist) -> int:
    if not dist.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return int(t.item())


def _device() -> torch.device:
    """Where a collective's tensors must live: the rank's GPU for NCCL, the CPU for gloo."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj, dist: Dist):
    """Rank 0's ``obj`` on every rank (a run directory's path, a decision)."""
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


def merge_metric(metric, dist: Dist) -> None:
    """Merge every rank's share of a streaming metric into ``metric``, on every rank.

    The rule is the Metric contract's: ``sums`` add up; list attributes (per-example embeddings,
    hypotheses) concatenate in rank order; objects with ``merge`` (a detection tally) merge; anything
    else is configuration and stays as it is. Ranks are added in rank order, so every rank computes
    the same numbers.
    """
    if not dist.active:
        return
    mergeable = {
        name: value
        for name, value in vars(metric).items()
        if name == "sums" or isinstance(value, list) or hasattr(value, "merge")
    }
    shares: list[dict] = [None] * dist.world  # type: ignore[list-item]
    tdist.all_gather_object(shares, mergeable)
    sums: dict[str, torch.Tensor] = {}
    for share in shares:
        for key, value in share.get("sums", {}).items():
            sums[key] = sums[key] + value if key in sums else value.clone()
    metric.sums = sums
    for name, value in mergeable.items():
        if name == "sums":
            continue
        if isinstance(value, list):
            setattr(metric, name, [item for share in shares for item in share[name]])
        else:
            merged = shares[0][name]
            for share in shares[1:]:
                merged.merge(share[name])
            setattr(metric, name, merged)


# --- launching -----------------------------------------------------------------------------------


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run ``python -m bigmodel <argv>`` in ``nproc`` processes through torchrun (standalone, this
    machine); returns torchrun's exit code."""
    if nproc < 1:
        raise RecipeError(f"--nproc: {nproc} is not a number of processes (>= 1).")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}", "-m", "bigmodel", *argv,
    ]  # fmt: skip
    return subprocess.call(command)
