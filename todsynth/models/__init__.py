"""The generator's parts: mask-conditioned MM-DiT, autoencoders, presets, safetensors I/O."""
