"""The CPU probe: flags parsed from /proc/cpuinfo texts of the machine kinds we meet, the decisions made from
them (native bf16, VNNI), the ONEDNN_MAX_CPU_ISA cap, and ``crossclr info --system``."""

from __future__ import annotations

from click.testing import CliRunner

from crossclr_infer.hardware import CpuCaps, cpu_caps, parse_cpuinfo

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu avx2
"""
ZEN5 = """model name\t: AMD EPYC 9B45
flags\t\t: avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vbmi2
"""
SPR = """model name\t: Intel(R) Xeon(R) Processor
flags\t\t: avx2 avx512f avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 asimddp bf16
"""


def caps(text: str, arch: str = "x86_64", cap: str = "") -> CpuCaps:
    model, flags = parse_cpuinfo(text)
    return CpuCaps(model=model, arch=arch, cores=2, flags=flags, onednn_cap=cap)


def test_machine_kinds() -> None:
    z3, z5, spr, arm = caps(ZEN3), caps(ZEN5), caps(SPR), caps(ARM, "aarch64")
    assert z3.model == "AMD EPYC 7B13" and z3.avx2 and not z3.avx512
    assert (z3.vnni, z3.native_bf16, z3.int8_kind) == (False, False, "no-vnni")
    assert (z5.avx512, z5.vnni, z5.native_bf16, z5.amx) == (True, True, True, False)
    assert (spr.amx, spr.vnni, spr.native_bf16) == (True, True, True)
    assert (arm.vnni, arm.native_bf16, arm.avx2) == (True, True, False)
    assert "AVX2" in z3.line() and "bf16 emulated" in z3.line() and "AVX-512" not in z3.line()
    assert "AMX" in spr.line() and "bf16 native" in spr.line()


def test_onednn_cap_turns_native_bf16_off() -> None:
    assert caps(ZEN5, cap="AVX2").native_bf16 is False
    assert caps(ZEN5, cap="avx512_core").native_bf16 is False
    assert caps(ZEN5, cap="AVX512_CORE_BF16").native_bf16 is True
    assert caps(SPR, cap="AVX512_CORE_AMX").native_bf16 is True
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in caps(ZEN5, cap="AVX2").line()


def test_unknown_machine_reads_safe() -> None:
    none = CpuCaps()
    assert (none.vnni, none.native_bf16, none.avx2) == (False, False, False)
    assert parse_cpuinfo("") == ("unknown CPU", frozenset())


def test_this_machine_and_info_system() -> None:
    import cli

    here = cpu_caps()
    assert here.cores >= 1 and here is cpu_caps()  # read once
    r = CliRunner().invoke(cli.crossclr, ["info", "--system"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "cpu:          " + here.line()
    assert "ort providers:" in r.output
    r = CliRunner().invoke(cli.crossclr, ["info"])
    assert r.exit_code != 0 and "--system" in r.output
