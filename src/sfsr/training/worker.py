"""The torchrun worker of a training job on several processes (docs/multi_gpu.md):
``python -m sfsr.training.worker '<train arguments as JSON>'``, started N times by
:func:`sfsr.training.distributed.launch`; each calls :func:`sfsr.training.loop.train`.

An entry point, like :mod:`sfsr.workflow` and :mod:`sfsr.cli` (and in their layer,
docs/architecture.md): it imports the loop, which imports :mod:`sfsr.training.distributed`, so it is
not part of that module.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Sequence

from sfsr.training.distributed import _die_with_parent

log = logging.getLogger("sfsr.training")


def main(argv: Sequence[str] | None = None) -> int:
    """A torchrun worker: ``train(**json.loads(argv[0]))``; rank 0 logs at INFO, the others only
    warnings and errors. SIGTERM stops it with cleanup (exit 143)."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # torchrun died before the line above
        return 143
    argv = sys.argv[1:] if argv is None else argv
    args = json.loads(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s [rank {rank}]: %(message)s")
    logging.captureWarnings(True)
    from sfsr.errors import WORKFLOW, SfsrError
    from sfsr.training.loop import train
    from sfsr.workflow import Terminated, _raise_terminated

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        train(**args)
    except SfsrError as exc:
        log.error("%s", exc.message(WORKFLOW))
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        name, status = ("SIGINT", 130) if isinstance(exc, KeyboardInterrupt) else ("SIGTERM", 143)
        log.warning("rank %d stopped by %s", rank, name)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
