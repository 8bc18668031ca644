"""Stage 4: calibration statistics streamed through onnxruntime, and the activations kept between runs."""
