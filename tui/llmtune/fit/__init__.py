"""Pure estimation: memory plan per device, quantization what-if, throughput prediction, solvers."""
