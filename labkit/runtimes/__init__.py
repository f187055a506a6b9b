"""ONNX Runtime and OpenVINO: adapters callable like a Hugging Face model, and the tour's builders."""
