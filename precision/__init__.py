"""Precision doctor: where fp16 breaks a model, and the ATC keep_dtype list that fixes it (CPU emulation)."""
