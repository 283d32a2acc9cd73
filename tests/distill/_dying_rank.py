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

import coarserank.distill.api as distill_api
import coarserank.pipeline.run as pipeline_run
from coarserank.cli import main

# where each name is looked up at call time: the teacher's loss in the distillation API, the
# final barrier in the pipeline
OWNERS = {"hard_loss": distill_api, "barrier": pipeline_run}


def _dying(name: str) -> Callable[..., Any]:
    real = getattr(OWNERS[name], name)
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
    # the callers look these names up in their own module globals, so patching them there is enough
    setattr(OWNERS[where], where, _dying(where))

if __name__ == "__main__":
    main()
