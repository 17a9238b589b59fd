"""What the CPU can do, read once: the instruction sets that change speed and numerics here, and the cores.

Defaults that depend on the hardware (bf16 autocast, the int8 weight range) are decided from this probe at
run time, never from the machine a default was tuned on. No torch: ``crossclr_infer`` stays torch-free.

Sources: ``/proc/cpuinfo`` flags on Linux (x86 names ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_bf16``,
``avx512_vnni``, ``avx_vnni``; aarch64 names ``bf16``, ``asimddp``). Elsewhere the flags are unknown and every
capability reads False, which selects the safe choice (fp32 training, reduced-range int8).

``ONEDNN_MAX_CPU_ISA`` caps the kernels torch's oneDNN may use; when it is set below the bf16 ISA, bf16 is
emulated even on a CPU that has it, so ``native_bf16`` honours the cap.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field

from .errors import CrossclrError

# oneDNN ISA names from lowest to highest (the ones that matter for the bf16 decision)
_ONEDNN_ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                     "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                     "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL")
_BF16_ISA = "AVX512_CORE_BF16"


@dataclass(frozen=True)
class CpuCaps:
    """Capabilities of this CPU that the project's defaults depend on."""

    model: str = "unknown CPU"  # model name as the OS reports it
    arch: str = ""  # platform.machine(): x86_64, aarch64, ...
    cores: int = 1  # logical CPUs this process may run on
    flags: frozenset[str] = field(default_factory=frozenset)  # raw flag names from the OS
    onednn_cap: str = ""  # ONEDNN_MAX_CPU_ISA when set, else ""

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products without 16-bit saturation (AVX512-VNNI or AVX-VNNI; aarch64 dot product)."""
        return bool({"avx512_vnni", "avx_vnni", "asimddp"} & self.flags)

    @property
    def hw_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16, AMX-BF16, or aarch64 BF16), ignoring any cap."""
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & self.flags)

    @property
    def native_bf16(self) -> bool:
        """bf16 runs natively for torch: the hardware has it and ONEDNN_MAX_CPU_ISA does not cap it away."""
        if not self.hw_bf16:
            return False
        cap = self.onednn_cap.upper()
        if not cap or self.arch not in ("x86_64", "AMD64"):
            return True
        if cap not in _ONEDNN_ISA_ORDER:
            return True
        return _ONEDNN_ISA_ORDER.index(cap) >= _ONEDNN_ISA_ORDER.index(_BF16_ISA)

    @property
    def int8_kind(self) -> str:
        """``vnni`` when int8 dot products cannot saturate here, else ``no-vnni``."""
        return "vnni" if self.vnni else "no-vnni"

    def line(self) -> str:
        """One line for logs and benchmark headers."""
        isa = [name for name, on in (("AVX2", self.avx2), ("AVX-512", self.avx512),
                                     ("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx),
                                     ("VNNI", self.vnni)) if on]
        cap = f", ONEDNN_MAX_CPU_ISA={self.onednn_cap}" if self.onednn_cap else ""
        return (f"{self.model} ({self.arch}, {self.cores} cores; {' '.join(isa) or 'no AVX2'}; "
                f"bf16 {'native' if self.native_bf16 else 'emulated'}{cap})")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a ``/proc/cpuinfo`` text (x86 ``flags``, arm
    ``Features``)."""
    model, flags = "unknown CPU", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1; read at each call."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# threads or worker processes per usable core that a command accepts: more only add memory and contention
# (`--num-workers 100000` once grew to 6.4 GB and never started; `prepare ntu --workers 100000` hung)
MAX_WORKERS_PER_CORE = 4


def check_worker_count(n: int | None, option: str, low: int = 0) -> int | None:
    """``n`` (None: the command's default) when this machine can run that many threads or processes, else a
    CrossclrError naming ``option``: at most ``MAX_WORKERS_PER_CORE`` per usable core."""
    if n is None:
        return None
    cores = usable_cores()
    if n > MAX_WORKERS_PER_CORE * cores:
        raise CrossclrError(f"{option} {n}: more than this machine can run ({cores} usable cores); expected "
                            f"{low} to {MAX_WORKERS_PER_CORE * cores}")
    return n


@functools.lru_cache(maxsize=1)
def cpu_caps() -> CpuCaps:
    """The probe, read once per process."""
    model, flags = "unknown CPU", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:
        model = platform.processor() or "unknown CPU"
    return CpuCaps(model=model, arch=platform.machine(), cores=usable_cores(), flags=flags,
                   onednn_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", ""))
