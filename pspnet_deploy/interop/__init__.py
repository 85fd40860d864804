"""Bring your own PSPNet: exact import of mmsegmentation and hszhao/semseg checkpoints.

- :mod:`.safe_pickle`: loads foreign checkpoints without running code from them;
- :mod:`.mmconfig`: reads mmengine/mmcv Python configs (``_base_`` inheritance) without executing them;
- :mod:`.mmseg`, :mod:`.semseg`: architecture, key mapping and preprocessing of each peer;
- :mod:`.convert`: :func:`convert_checkpoint`, behind ``pspnet-convert``.

None of it imports mmsegmentation or mmengine; the tests prove the conversion against their code.
"""
from .convert import convert_checkpoint

__all__ = ["convert_checkpoint"]
