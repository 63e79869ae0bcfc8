"""ONNX Runtime side: sessions, host CPU facts, parity metrics. Never imports torch."""
