"""The data side: the Tencent-style log format, a synthetic generator, and the Beam join.

Stands on its own: imports nothing of TFX, and TensorFlow only where examples are written.
"""
