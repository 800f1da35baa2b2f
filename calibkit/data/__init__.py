"""Image input: discovery, decoding, preprocessing and batched loading."""
