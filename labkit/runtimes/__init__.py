"""Other inference runtimes behind a Hugging Face model's call: ONNX Runtime and OpenVINO."""
