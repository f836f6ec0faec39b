"""Which qemu accelerator this machine can use: ``kvm`` when it really works, else ``tcg``.

``/dev/kvm`` existing is not enough: on a VM without nested virtualisation the
node is often there but refuses to create or run a virtual machine.  So
:func:`detect_accelerator` *tries*: it opens ``/dev/kvm``, checks the API
version, creates a VM with one vCPU and 64 KiB of memory mapped at the x86
reset vector, and runs that vCPU until it executes a single ``hlt``
instruction.  It also checks which kernel module implements KVM: it must be
the hardware one, ``kvm_intel`` or ``kvm_amd``.  Some sandboxes provide
``/dev/kvm`` through ``kvm_pvm`` (pagetable-based virtual machines), which
passes the ``hlt`` probe but runs only PVM-aware 64-bit guest kernels: a
normal firmware, boot loader or Linux kernel fails under it ("KVM internal
error ... emulation failure", or a vCPU spinning forever).  Only when all of
that succeeds is KVM reported usable.

The answer is cached for the life of the process and logged once at INFO::

    KVM is usable: using kvm
    KVM not usable (<reason>): falling back to TCG software emulation
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Final, Literal

__all__ = ["Accelerator", "detect_accelerator", "kvm_unusable_reason"]

log = logging.getLogger(__name__)

Accelerator = Literal["kvm", "tcg"]

KVM_DEVICE: Final = "/dev/kvm"
SYS_MODULE_DIR: Final = Path("/sys/module")
#: Kernel modules that implement KVM with hardware virtualisation.
HARDWARE_KVM_MODULES: Final = ("kvm_intel", "kvm_amd")

# ioctl numbers from <linux/kvm.h> (type 0xAE).
_KVM_GET_API_VERSION: Final = 0xAE00
_KVM_CREATE_VM: Final = 0xAE01
_KVM_GET_VCPU_MMAP_SIZE: Final = 0xAE04
_KVM_CREATE_VCPU: Final = 0xAE41
_KVM_SET_USER_MEMORY_REGION: Final = 0x4020AE46  # _IOW(0xAE, 0x46, 32-byte struct)
_KVM_RUN: Final = 0xAE80
_KVM_API_VERSION: Final = 12
_KVM_EXIT_HLT: Final = 5

# The probe guest: 64 KiB at the top of the 4 GiB space, so that the vCPU's
# reset vector (physical 0xFFFFFFF0, CS base 0xFFFF0000, IP 0xFFF0) lands at
# offset 0xFFF0, where a single ``hlt`` (0xF4) waits.
_PROBE_MEM_SIZE: Final = 0x10000
_PROBE_MEM_ADDR: Final = 0xFFFF0000
_PROBE_HLT_OFFSET: Final = 0xFFF0
_HLT: Final = b"\xf4"


def _describe(exc: OSError, step: str) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{step} failed: {name} {exc.strerror or exc}"


def _run_probe_vm(kvm_fd: int) -> str | None:
    """Create a one-vCPU VM on ``kvm_fd`` and run it to a ``hlt``; ``None`` on success."""
    try:
        vm_fd = fcntl.ioctl(kvm_fd, _KVM_CREATE_VM, 0)
    except OSError as exc:
        return _describe(exc, "KVM_CREATE_VM")
    memory = mmap.mmap(-1, _PROBE_MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    fds = [vm_fd]
    try:
        memory[_PROBE_HLT_OFFSET : _PROBE_HLT_OFFSET + 1] = _HLT
        view = (ctypes.c_char * _PROBE_MEM_SIZE).from_buffer(memory)
        try:
            region = struct.pack("=IIQQQ", 0, 0, _PROBE_MEM_ADDR, _PROBE_MEM_SIZE, ctypes.addressof(view))
        finally:
            del view  # release the buffer export so that the mmap can be closed
        try:
            fcntl.ioctl(vm_fd, _KVM_SET_USER_MEMORY_REGION, region)
        except OSError as exc:
            return _describe(exc, "KVM_SET_USER_MEMORY_REGION")
        try:
            vcpu_fd = fcntl.ioctl(vm_fd, _KVM_CREATE_VCPU, 0)
        except OSError as exc:
            return _describe(exc, "KVM_CREATE_VCPU")
        fds.append(vcpu_fd)
        try:
            run_size = fcntl.ioctl(kvm_fd, _KVM_GET_VCPU_MMAP_SIZE, 0)
            run = mmap.mmap(vcpu_fd, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            return _describe(exc, "mapping the vCPU run structure")
        try:
            try:
                fcntl.ioctl(vcpu_fd, _KVM_RUN, 0)
            except OSError as exc:
                return _describe(exc, "KVM_RUN")
            (exit_reason,) = struct.unpack_from("=I", run, 8)
        finally:
            run.close()
        if exit_reason != _KVM_EXIT_HLT:
            return f"the probe vCPU stopped with exit reason {exit_reason}, not HLT"
        return None
    finally:
        for fd in reversed(fds):
            os.close(fd)
        memory.close()


def _kvm_backend_problem(sys_module_dir: Path) -> str | None:
    """Why the loaded KVM implementation cannot run ordinary guests, or ``None``."""
    if not sys_module_dir.is_dir():
        return None  # no sysfs to ask (unusual): trust the probe VM alone
    if any((sys_module_dir / name).exists() for name in HARDWARE_KVM_MODULES):
        return None
    others = sorted(p.name for p in sys_module_dir.glob("kvm_*"))
    if others:
        return (
            f"/dev/kvm is provided by {', '.join(others)}, not by {' or '.join(HARDWARE_KVM_MODULES)}; "
            "it cannot run an ordinary guest"
        )
    return f"neither {' nor '.join(HARDWARE_KVM_MODULES)} is loaded"


def kvm_unusable_reason(device: str = KVM_DEVICE, sys_module_dir: Path = SYS_MODULE_DIR) -> str | None:
    """Try KVM for real; return ``None`` when it works, else why it does not.

    Not cached: every call opens ``device`` and runs the probe VM again.
    ``sys_module_dir`` is where the kernel lists its loaded modules.
    """
    try:
        kvm_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror or exc}"
    try:
        try:
            version = fcntl.ioctl(kvm_fd, _KVM_GET_API_VERSION, 0)
        except OSError as exc:
            return _describe(exc, "KVM_GET_API_VERSION")
        if version != _KVM_API_VERSION:
            return f"unexpected KVM API version {version} (want {_KVM_API_VERSION})"
        return _kvm_backend_problem(sys_module_dir) or _run_probe_vm(kvm_fd)
    finally:
        os.close(kvm_fd)


@functools.cache
def detect_accelerator() -> Accelerator:
    """``"kvm"`` when KVM can really create and run a VM here, else ``"tcg"``.

    The probe runs once per process; the result, and the reason KVM was
    rejected, is logged at INFO the first time.
    """
    reason = kvm_unusable_reason()
    if reason is None:
        log.info("KVM is usable: using kvm")
        return "kvm"
    log.info("KVM not usable (%s): falling back to TCG software emulation", reason)
    return "tcg"
