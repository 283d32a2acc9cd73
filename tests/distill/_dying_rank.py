"""Test-only torchrun entry point: ``distill`` with one rank that dies without a word.

``torchrun ... tests/distill/_dying_rank.py run --out DIR ...`` behaves like
``torchrun ... -m coarserank.cli run --out DIR ...``, except that the process whose ``RANK`` is
``DYING_RANK`` (default 1) calls ``os._exit(DYING_EXIT)`` (default 3), which skips every handler
and ``finally`` like a process killed by the OOM killer or a crashed interpreter. Where it dies
(``DYING_IN``):

* ``hard_loss`` (default): on its ``DYING_AFTER``-th (default 3) teacher loss evaluation, i.e.
  mid teacher training, while the other ranks are inside a DDP gradient allreduce;
* ``barrier``: at the final barrier of ``run()``, i.e. while rank 0 works alone on the
  single-process stages (gbdt, metrics, exports) and is in no collective at all.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import coarserank.pipeline.run as pipeline_run
from coarserank.cli import main


def _dying(name: str) -> Callable[..., Any]:
    real = getattr(pipeline_run, name)
    after = int(os.environ.get("DYING_AFTER", "3")) if name == "hard_loss" else 1
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls >= after:
            os._exit(int(os.environ.get("DYING_EXIT", "3")))
        return real(*args, **kwargs)

    return wrapper


if os.environ.get("RANK") == os.environ.get("DYING_RANK", "1"):
    where = os.environ.get("DYING_IN", "hard_loss")
    # run.py calls these through its own module globals, so patching the names there is enough
    setattr(pipeline_run, where, _dying(where))

if __name__ == "__main__":
    main()
