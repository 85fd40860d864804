"""CPU feature detection (pspnet_deploy/machine.py) and the BF16 autocast choice that depends on it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pspnet_deploy.machine import ISA_FEATURES, cpu_flags, cpu_has_bf16, cpu_has_vnni, cpu_model_name

ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
AVX2_ONLY = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t\t: fpu sse2 avx2 fma\n"


def test_parse_cpuinfo_text():
    assert cpu_model_name(ZEN4) == "AMD EPYC 9R14"
    assert {"avx2", "avx512_bf16", "avx512_vnni"} <= cpu_flags(ZEN4)
    assert cpu_has_bf16(cpu_flags(ZEN4)) and cpu_has_vnni(cpu_flags(ZEN4))
    assert not cpu_has_bf16(cpu_flags(AVX2_ONLY)) and not cpu_has_vnni(cpu_flags(AVX2_ONLY))
    assert cpu_has_bf16({"amx_bf16"}) and cpu_has_vnni({"avx_vnni"})
    assert cpu_flags("no flags line here") == set() and cpu_model_name("") is None


def test_this_machine_agrees_with_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert cpu_has_bf16() == bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", text))
    assert set(ISA_FEATURES) & cpu_flags() == {f for f in ISA_FEATURES if re.search(rf"\b{f}\b", text)}


def test_training_autocast_follows_the_cpu():
    """auto: BF16 on a CPU with native BF16, FP32 elsewhere; off: FP32; on: refused without BF16."""
    import torch

    from pspnet_deploy.errors import UserError
    from pspnet_deploy.train import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "off") is None
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if cpu_has_bf16() else None)
    if cpu_has_bf16():
        assert autocast_dtype(cpu, "on") == torch.bfloat16
    else:
        with pytest.raises(UserError, match="no native BF16"):
            autocast_dtype(cpu, "on")
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16  # the dtype only; no GPU is touched
