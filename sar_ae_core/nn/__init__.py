"""The networks: their configuration (torch-free), the model zoo and trained entropy models (torch), model bundles and the inference runtimes (ONNX Runtime or PyTorch)."""
