"""Real hypervisor code as vmxaddr models (issue 14).

One module per concern:
  sources  fetch Debian's packages into $VMXADDR_CACHE, list what is cached (package, version, SHA-256)
  extract  find a C function by name (comments and strings masked; macro-made or #if-split
           definitions reported)
  build    compile extracted functions with a shim into a cached shared library; unresolved
           identifiers listed
  shim/    vmxaddr.h (the C interface of every adapter), kvm.h and kvm_adapter.c (KVM's world)
  bridge   ctypes: pack the case into the adapter's structures, call, unpack
  models   kvm-linux-6.1, kvm-linux-6.12, kvm-tree:PATH, c:FILE.c:FUNCTION as models
  xen_compiled  xen-4.17: Debian's Xen decode_vmx_inst() compiled (its Python port is
           vmxaddr.models.xen_port)
  registry, resolve, kvm_release, info  the listing `vmxaddr.models` reads, a name to its model, data
  worker   the process each runs in (shim/worker.c) and its supervisor: a crash, hang or exit
           of the C is a finding (ModelFailure), never vmxaddr's end
  cli      `vmxaddr sources fetch|list`
"""
