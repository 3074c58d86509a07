"""Modality layers shared by model families (host side: NumPy, no torch)."""
