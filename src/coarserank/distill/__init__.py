"""distill subpackage: losses, the one training loop and the library calls of :mod:`.api`.

The package module itself is callable: ``coarserank.distill(...)`` is
:func:`coarserank.distill.api.distill`. Why: the public API promises ``cr.distill(...)``, but
``coarserank.distill`` is also this subpackage, and importing any of its modules binds the
package module to the attribute ``distill`` of ``coarserank``, shadowing a plain function of that
name in the facade. Making the module callable gives one object that is both, whatever was
imported first; ``coarserank.distill.api`` and every other submodule still import as usual.
The function is imported on the first call, so importing a submodule (the LightGBM reference,
say) does not load the training code.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any


class _CallableModule(ModuleType):
    """The ``coarserank.distill`` module, whose call is :func:`coarserank.distill.api.distill`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from coarserank.distill.api import distill

        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
