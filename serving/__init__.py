"""Scoring with the exported models over TF Serving's gRPC protocol (no TFX, no Beam)."""
