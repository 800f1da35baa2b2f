"""TensorRT-RTX engines built from calibkit's models: the builder (in a child process), its layer log
read back, and the check of what runs at which precision."""
