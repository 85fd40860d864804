"""Size bounds: the smallest side a model takes, the size a run uses (within the one set of bounds
of :func:`pspnet_deploy.utils.check_input_size`) and a dynamic-shape model's declared range. The
:class:`~pspnet_deploy.card.schema.ModelCard` methods of the same names call these."""
from __future__ import annotations

from ..errors import UserError


def model_min_side(model: dict | None) -> int | None:
    """The smallest input side of a PSPNet configuration (its feature map must hold the largest
    pyramid bin; :func:`pspnet_deploy.geometry.min_input_size`), None without a configuration."""
    if not isinstance(model, dict) or not model:
        return None
    from ..geometry import min_input_size

    return min_input_size(model.get("bins", (1, 2, 3, 6)), model.get("output_stride", 8))


def check_bounds(card, h: int, w: int) -> None:
    """UserError (one line) when an H x W input is outside a dynamic-shape model's declared bounds
    (the one check every runner makes); no-op for other models."""
    if card.size_range is None:
        return
    (lo_h, lo_w), _, (hi_h, hi_w) = card.size_range
    if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w):
        raise UserError(f"{card.path}: input {h}x{w} is outside the model's size range {lo_h}x{lo_w} .. "
                        f"{hi_h}x{hi_w}; resize the image or re-export with wider --min-size/--max-size")


def check_size(card, size=None, what: str = "--input-size", batch: int = 1, training: bool = False
               ) -> tuple[int, int]:
    """The (H, W) a run of ``card``'s model uses: ``size`` when given, else the file's own, within
    the minimum side, the maximum side and the memory rule times ``batch``, and for a dynamic-shape
    model within its declared range (:func:`check_bounds`)."""
    from ..utils import check_input_size

    eff = size if size is not None else card.input_size
    if eff is None:
        raise UserError(f"{card.path}: the file records no input size; pass --input-size H W")
    h, w = check_input_size(eff, what if size is not None else f"{card.path}: stored input size", batch=batch,
                            training=training, min_side=card.min_side)
    check_bounds(card, h, w)
    return h, w
