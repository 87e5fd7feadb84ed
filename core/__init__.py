"""The compression engine: pure functions over ONNX files and arrays.

No web, queue or database imports here (tests/test_layering.py checks it).
"""
