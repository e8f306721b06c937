"""Inference on real recordings: window placement, sliding windows over whole files, CLI rows."""
