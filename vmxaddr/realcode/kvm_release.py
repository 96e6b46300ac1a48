"""The KVM releases the real-code models compile (kvm-linux-6.1, kvm-linux-6.12): their names,
sources, function and what reading their code shows. Data only, below both the listing
(vmxaddr.realcode.registry) and the builder (vmxaddr.realcode.models)."""

from __future__ import annotations

from vmxaddr.models.kvm import LimitCheck
from vmxaddr.realcode import sources
from vmxaddr.realcode.info import RealCodeInfo

# model name -> the source (vmxaddr.realcode.sources) holding its function
RELEASES = {"kvm-linux-6.1": "linux-6.1", "kvm-linux-6.12": "linux-6.12"}
KVM_FUNCTION = "get_vmx_mem_address"
# What reading the code of both releases shows about the limit check (for the classifier):
# flat segments skipped, last byte = off + len - 1, the real length, expand-down unknown.
KVM_LIMIT_CHECK = LimitCheck(fixed_length=None, off_by_one=False, flat_skip=True, expand_down=False)


def release_info(name: str, f: sources.Fetched) -> RealCodeInfo:
    """What the model of KVM release `name` runs, from the fetched source package."""
    return RealCodeInfo(f"{KVM_FUNCTION}() of Debian {f.package} {f.version}", RELEASES[name], f.package, f.version)
