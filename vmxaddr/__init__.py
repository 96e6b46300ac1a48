"""vmxaddr: the VMX memory-operand address computation, by the SDM."""
