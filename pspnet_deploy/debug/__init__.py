"""pspnet-debug: where a deployed model diverges from its reference, and where its time goes,
layer by layer, named by PSPNet module (:mod:`.layerwise`, :mod:`.graph`, :mod:`.capture`,
:mod:`.profile`, :mod:`.report`)."""
from __future__ import annotations

__all__ = ["debug_models"]


def debug_models(*args, **kwargs):
    from .layerwise import debug_models as run

    return run(*args, **kwargs)
