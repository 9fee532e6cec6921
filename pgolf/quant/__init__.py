"""Post-training quantization: Hessian collection on training data, GPTQ and round-to-nearest."""
