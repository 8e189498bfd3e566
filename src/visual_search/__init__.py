"""Visual product search: embed product photos with an ONNX model and find them in Qdrant."""

__version__ = "0.1.0"
