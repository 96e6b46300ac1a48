"""The running KVM (issue 22): Debian's kernel and kvm-intel nested under Bochs 2.7, as a trace
recorder (`trace record --kvm`), a model (`kvm-live:RELEASE`) and an oracle for the compiled
function (`vmxaddr live run`). docs/live-kvm.md.

    images.py    Debian packages -> initramfs + bootable ISO, manifest (`live build`)
    bochsrun.py  Bochs on the ISO: boot to a saved state, restored runs of one job each
    batch.py     cases (generator, binary encoding), results, the kprobe ring-buffer parser
    campaign.py  a run's answers (KVM's, from the probes; L1's) and the comparison with a model
    record.py    `trace record --kvm`; model.py `kvm-live:RELEASE`; fuzzlive.py `fuzz` in batches
    cli.py       `vmxaddr live build|save|run|status`
    csrc/        stub.c (in the ISO), client.c (the /dev/kvm client), preload.c (LD_PRELOAD in Bochs)
"""
