"""CPU feature detection (pspnet_deploy/machine.py) and the BF16 autocast choice that depends on it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pspnet_deploy.machine import (ISA_FEATURES, ISA_RECORDED, cpu_flags, cpu_has_bf16, cpu_has_vnni, cpu_identity,
                                   cpu_info, cpu_model_name, cpu_summary)

ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
AVX2_ONLY = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t\t: fpu sse2 avx2 fma\n"
# excerpts of real /proc/cpuinfo texts (first processor block, flags shortened)
AMD_ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC 9R14 96-Core Processor\nstepping\t: 1\nmicrocode\t: 0xa10113e\n"
            "flags\t\t: fpu sse4_2 avx f16c avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni\n\n"
            "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n")
INTEL_SPR = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
             "model name\t: Intel(R) Xeon(R) Platinum 8488C\nstepping\t: 8\n"
             "flags\t\t: fpu avx avx2 fma avx512f avx512_vnni avx_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile "
             "amx_int8\n")
ARM_NEOVERSE = ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes sha2 crc32 atomics fphp "
                "asimdhp asimddp sve i8mm bf16 sve2\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
                "CPU variant\t: 0x0\nCPU part\t: 0xd4f\nCPU revision\t: 1\n\nprocessor\t: 1\n"
                "CPU implementer\t: 0x41\nCPU part\t: 0xd40\n")


def test_parse_cpuinfo_text():
    assert cpu_model_name(ZEN4) == "AMD EPYC 9R14"
    assert {"avx2", "avx512_bf16", "avx512_vnni"} <= cpu_flags(ZEN4)
    assert cpu_has_bf16(cpu_flags(ZEN4)) and cpu_has_vnni(cpu_flags(ZEN4))
    assert not cpu_has_bf16(cpu_flags(AVX2_ONLY)) and not cpu_has_vnni(cpu_flags(AVX2_ONLY))
    assert cpu_has_bf16({"amx_bf16"}) and cpu_has_vnni({"avx_vnni"})
    assert cpu_flags("no flags line here") == set() and cpu_model_name("") is None


def test_cpu_identity_from_fed_texts():
    """Vendor, family, model, stepping, name and instruction sets of AMD, Intel and ARM texts, and
    the clean fallback (None, source named) where /proc/cpuinfo is empty or lacks the fields."""
    amd = cpu_identity(AMD_ZEN4)
    assert (amd["vendor"], amd["family"], amd["model"], amd["stepping"]) == ("AuthenticAMD", 25, 17, 1)
    assert amd["model_name"] == "AMD EPYC 9R14 96-Core Processor" and amd["source"] == "/proc/cpuinfo"
    assert amd["isa"] == ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                          "avx512_bf16"]  # in ISA_RECORDED's order, not the text's
    intel = cpu_identity(INTEL_SPR)
    assert (intel["vendor"], intel["family"], intel["model"], intel["stepping"]) == ("GenuineIntel", 6, 143, 8)
    assert {"avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni"} <= set(intel["isa"])
    arm = cpu_identity(ARM_NEOVERSE)  # the first core's part (big.LITTLE lists several)
    assert (arm["vendor"], arm["family"], arm["model"], arm["stepping"]) == ("ARM", 8, 0xD4F, "r0p1")
    assert arm["model_name"] is None and arm["isa"] == ["asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve",
                                                         "sve2"]
    for text in ("", "processor\t: 0\nBogoMIPS\t: 50\n"):  # macOS (no file) / a text without the fields
        ident = cpu_identity(text)
        assert ident["vendor"] is ident["family"] is ident["model"] is ident["stepping"] is None
        assert ident["isa"] == [] and "platform module" in ident["source"]
    rec = cpu_info(INTEL_SPR)
    assert (rec["cpu"], rec["cpu_vendor"], rec["cpu_family"], rec["cpu_model"], rec["cpu_stepping"]) == (
        "Intel(R) Xeon(R) Platinum 8488C", "GenuineIntel", 6, 143, 8)
    assert cpu_summary(rec).startswith("Intel(R) Xeon(R) Platinum 8488C (GenuineIntel family 6 model 143 stepping 8; ")
    assert set(ISA_FEATURES) <= set(ISA_RECORDED)


def test_environment_record_matches_this_proc_cpuinfo():
    """The record's CPU fields are this machine's /proc/cpuinfo values, read independently here."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        rec = cpu_info()
        assert rec["cpu_source"] == "platform module" and rec["cpu_vendor"] is None
        return
    text = path.read_text()

    def field(name):
        m = re.search(rf"^{name}\s*:\s*(.+)$", text, re.M)
        return m.group(1).strip() if m else None

    rec = cpu_info()
    if field("vendor_id") is not None:
        assert rec["cpu_vendor"] == field("vendor_id") and rec["cpu_family"] == int(field("cpu family"))
        assert rec["cpu_model"] == int(field("model")) and rec["cpu"] == field("model name")
        assert rec["cpu_stepping"] == (int(field("stepping")) if field("stepping") not in (None, "unknown") else None)
    flags = set((field("flags") or field("Features") or "").split())
    assert rec["isa"] == [f for f in ISA_RECORDED if f in flags]


def test_this_machine_agrees_with_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert cpu_has_bf16() == bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", text))
    assert set(ISA_FEATURES) & cpu_flags() == {f for f in ISA_FEATURES if re.search(rf"\b{f}\b", text)}


def test_training_autocast_auto_is_measured_and_recorded():
    """auto decides from a measurement made here (FP32 vs BF16 autocast), records it, and takes BF16
    only when it was measured faster by the margin (which way it goes depends on the CPU); a given
    measurement (a resumed run's) decides without measuring; off: FP32; on: refused without native BF16."""
    import torch

    from pspnet_deploy.errors import UserError
    from pspnet_deploy.machine import BF16_MARGIN, bf16_probe
    from pspnet_deploy.train import autocast_choice, autocast_dtype

    cpu = torch.device("cpu")
    dtype, rec = autocast_choice(cpu, "auto")
    m = rec["measured"]
    assert rec["decided_by"] == "measurement" and m["fp32_ms"] > 0 and m["bf16_ms"] > 0 and m["rounds"] >= 2
    assert rec["use_bf16"] == (m["speedup"] >= BF16_MARGIN) and dtype == (torch.bfloat16 if rec["use_bf16"] else None)
    assert f"{m['fp32_ms']:.2f} ms" in rec["reason"] and rec["dtype"] == ("bfloat16" if rec["use_bf16"] else None)
    assert bf16_probe(threads=torch.get_num_threads()) is bf16_probe(threads=torch.get_num_threads())  # cached
    fast = {"fp32_ms": 20.0, "bf16_ms": 10.0, "speedup": 2.0}
    slow = {"fp32_ms": 20.0, "bf16_ms": 19.0, "speedup": 20 / 19}  # faster, but within the margin
    assert autocast_choice(cpu, "auto", probe=fast)[0] == torch.bfloat16
    dtype, rec = autocast_choice(cpu, "auto", probe=slow)
    assert dtype is None and rec["measured"] == slow and "below the" in rec["reason"]
    assert autocast_dtype(cpu, "off") is None and autocast_choice(cpu, "off")[1]["measured"] is None
    if cpu_has_bf16():
        assert autocast_dtype(cpu, "on") == torch.bfloat16
    else:
        with pytest.raises(UserError, match="no native BF16"):
            autocast_dtype(cpu, "on")
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16  # the dtype only; no GPU is touched


def test_record_summary_reads_a_machine_section_and_refuses_in_one_line(tmp_path):
    """A study's results.json keeps its record under ``machine``; the module's CLI cites it, and a file
    without a record is one line, exit 2 (no traceback)."""
    import json
    import subprocess
    import sys

    from pspnet_deploy.machine import record_summary

    rec = tmp_path / "results.json"
    rec.write_text(json.dumps({"machine": {"cpu": "Test CPU", "logical_cpus": 2, "isa": ["avx2"]}}))
    assert record_summary(rec).startswith("Test CPU")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    r = subprocess.run([sys.executable, "-m", "pspnet_deploy.machine", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no environment record" in r.stderr
