"""NVML: how much device memory the driver says this process uses (nvidia-ml-py, import name pynvml).

`cuda_context` in a profile is NVML per-process usage minus the caching allocator's reserved bytes:
the CUDA context, kernels and library workspaces allocated outside PyTorch's allocator. Every
failure (package missing, no driver, process not visible as in a container without --pid=host)
becomes `available: False` with the reason, never an exception and never a made-up figure.
"""

from __future__ import annotations

import os
from typing import Any


class Nvml:
    """Per-process used memory of one CUDA device, sampled on demand."""

    def __init__(self, device_index: int | None) -> None:
        self.available = False
        self.reason: str | None = None
        self.driver: str | None = None
        self.max_process_used: int | None = None
        self._handle: Any = None
        self._pynvml: Any = None
        if device_index is None:
            self.reason = "no CUDA device is being profiled"
            return
        try:
            import pynvml
        except ImportError:
            self.reason = "the nvidia-ml-py package is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            self._handle = self._device_handle(pynvml, device_index)
            driver = pynvml.nvmlSystemGetDriverVersion()
            self.driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        except pynvml.NVMLError as exc:
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return
        self._pynvml = pynvml
        self.available = True
        if self.process_used() is None:
            self.available = False
            self.reason = (
                f"NVML does not list this process (pid {os.getpid()}); in a container, "
                "run with --pid=host to see per-process usage"
            )

    @staticmethod
    def _device_handle(pynvml: Any, device_index: int) -> Any:
        # CUDA_VISIBLE_DEVICES renumbers devices; the PCI bus id names the same GPU for both.
        try:
            import torch

            props = torch.cuda.get_device_properties(device_index)
            domain, bus, device = (getattr(props, f"pci_{k}_id") for k in ("domain", "bus", "device"))
            bus_id = f"{domain:08X}:{bus:02X}:{device:02X}.0"
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except Exception:
            pass
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)

    def process_used(self) -> int | None:
        """Bytes NVML reports for this process on the device, or None when it cannot tell."""
        if self._pynvml is None:
            return None
        pid = os.getpid()
        try:
            procs = self._pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._pynvml.NVMLError:
            return None
        for p in procs:
            if p.pid == pid and isinstance(p.usedGpuMemory, int):
                return p.usedGpuMemory
        return None

    def sample(self) -> int | None:
        used = self.process_used() if self.available else None
        if used is not None and (self.max_process_used is None or used > self.max_process_used):
            self.max_process_used = used
        return used

    def close(self) -> None:
        if self._pynvml is not None:
            try:
                self._pynvml.nvmlShutdown()
            except self._pynvml.NVMLError:
                pass
            self._pynvml = None
