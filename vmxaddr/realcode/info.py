"""What a real-code model runs (KVM's or Xen's), for `vmxaddr models` and explain. A module of
its own, importing nothing: the model registry and the Xen module both need it, and the registry
is imported while vmxaddr.models is still being set up."""

from __future__ import annotations

from dataclasses import dataclass

ENV_CALL_TIMEOUT = "VMXADDR_CALL_TIMEOUT"  # how --call-timeout reaches worker processes (fuzz --jobs)
DEFAULT_CALL_TIMEOUT = 2.0  # seconds per call of a compiled model (--call-timeout): they answer in microseconds


@dataclass(frozen=True)
class RealCodeInfo:
    """What a real-code model runs, for `vmxaddr models` and explain."""

    what: str  # e.g. "get_vmx_mem_address() of Debian linux-source-6.1 6.1.176-1"
    source: str = ""  # the sources name (linux-6.1), if from the cache
    package: str = ""
    version: str = ""

    def to_json(self) -> dict[str, str]:
        """The facts as JSON, for `vmxaddr models --json`."""
        return {"what": self.what, "source": self.source, "package": self.package, "version": self.version}
