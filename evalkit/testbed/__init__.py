"""A real, local stand-in for the GPU server: loopback sshd, CPU venv with cn_clip, tiny dataset, random checkpoint. Used by the tests and by `python -m evalkit demo`."""
