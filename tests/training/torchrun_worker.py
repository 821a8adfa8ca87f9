"""What each process torchrun starts in tests/training/test_dist.py runs: ``bigmodel <args>``, with a
crash on request (a test-side patch, not a switch in the package).

``CRASH_AFTER_STEP=k``: exit right after the checkpoint of step k is committed, as a process dies.
``CRASH_RANK=r``: only rank r dies, by SIGKILL (the others are then stopped by torchrun).
``CRASH_ATTEMPT=a``: only on torchrun's attempt a (0 = first; an elastic restart is attempt 1).
"""

from __future__ import annotations

import os
import signal
import sys

from bigmodel.training import loop


def _crash_after(save, step_to_crash: int):
    def save_then_crash(run_dir, step, *args, **kwargs):
        save(run_dir, step, *args, **kwargs)
        rank = os.environ.get("RANK", "0")
        if step >= step_to_crash and os.environ.get("CRASH_RANK", rank) == rank:
            os.kill(os.getpid(), signal.SIGKILL)

    return save_then_crash


crash_step = int(os.environ.get("CRASH_AFTER_STEP", "0"))
attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
if crash_step and os.environ.get("CRASH_ATTEMPT", attempt) == attempt:
    loop.ckpt.save_train_state = _crash_after(loop.ckpt.save_train_state, crash_step)
    loop.ckpt.save_sharded_state = _crash_after(loop.ckpt.save_sharded_state, crash_step)

if __name__ == "__main__":
    from bigmodel.cli import main

    sys.argv = ["bigmodel", *sys.argv[1:]]
    main()
