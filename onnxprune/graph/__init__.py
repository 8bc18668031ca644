"""Stage 1: the model itself: files, graphsurgeon conversion, inputs and shapes, onnxruntime sessions, validation."""
