"""Engines run a model on a target. Their output is not ONNX, so they are not passes."""
