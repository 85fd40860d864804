"""Foreign checkpoints: which known layout a state dict (or an unreadable pickle's key names) is in,
so every reader of a checkpoint can say that ``pspnet-convert`` imports it. The pure detection
lives here, below every stage; :mod:`pspnet_deploy.interop` (the importer) uses the same tests."""
from __future__ import annotations

from pathlib import Path

#: layout -> how it is named in messages
LAYOUTS = {"mmseg": "an mmsegmentation checkpoint (backbone.*, decode_head.* weights)",
           "semseg": "a semseg (hszhao) checkpoint (layer0.*, ppm.features.*, cls.* weights)"}


def is_mmseg_state(keys) -> bool:
    """mmsegmentation's layout: ``backbone.*`` and ``decode_head.*`` weights."""
    return any(k.startswith("decode_head.") for k in keys) and any(k.startswith("backbone.") for k in keys)


def is_semseg_state(keys) -> bool:
    """semseg's layout (``module.`` prefixes removed): ``layer0.*`` and ``cls.*`` weights."""
    return any(k.startswith("layer0.") for k in keys) and any(k.startswith("cls.") for k in keys)


def foreign_layout_of_keys(keys) -> str | None:
    """'mmseg', 'semseg' or None for a collection of weight names (``module.`` prefixes allowed)."""
    keys = [k for k in keys if isinstance(k, str)]
    unwrapped = [k[len("module."):] for k in keys if k.startswith("module.")]  # DataParallel's prefix
    if is_mmseg_state(keys) or is_mmseg_state(unwrapped):
        return "mmseg"
    if is_semseg_state(keys) or is_semseg_state(unwrapped):
        return "semseg"
    return None


def foreign_layout(payload) -> str | None:
    """The layout of a loaded checkpoint payload: mmengine's ``{'meta', 'state_dict'}``, semseg's
    ``{'epoch', 'state_dict', 'optimizer'}``, ``{'model': ...}`` or a bare state dict."""
    if not isinstance(payload, dict):
        return None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(payload.get(key), dict):
            return foreign_layout_of_keys(payload[key])
    return foreign_layout_of_keys(payload)


def foreign_layout_of_file(path: str | Path) -> str | None:
    """The layout named by the strings of a ``torch.save`` archive's pickle, read with
    :mod:`pickletools` (which only lists opcodes: nothing in the file is run or even built). For a
    checkpoint that ``torch.load(weights_only=True)`` refuses (mmengine's meta holds Python objects)."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None or z.getinfo(name).file_size > 64 << 20:
                return None
            data = z.read(name)
        strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str) and "." in arg]
    except Exception:  # noqa: BLE001 - a hint only: an unreadable file is just not recognised
        return None
    return foreign_layout_of_keys(strings)


def convert_hint(path, layout: str) -> str:
    """The one line that says what a foreign checkpoint is and how to import it."""
    return (f"{path}: {LAYOUTS[layout]}, not a pspnet-deploy one; import it first: pspnet-convert {path} "
            f"--output OUT.pt (then pass OUT.pt)")
