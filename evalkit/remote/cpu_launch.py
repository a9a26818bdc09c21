"""Run an unmodified Chinese-CLIP script on the CPU.

Usage (on the server): python -u cpu_launch.py cn_clip/eval/SCRIPT.py [ARGS...]

Upstream's eval scripts call torch.cuda unconditionally (set_device, Tensor.cuda, Module.cuda,
and zeroshot_evaluation.py's Tensor.to(0)).
Turning exactly those calls into no-ops, from outside the Chinese-CLIP tree, keeps every tensor
on the CPU while the script's own code, and therefore its numbers, stays upstream's. Scripts that
never import torch (the evaluation ones) run without it: importing it costs seconds.
"""
import re
import runpy
import sys


def _stay_on_cpu(obj, *args, **kwargs):
    return obj


def _is_gpu(device) -> bool:
    return isinstance(device, int) or str(device).startswith("cuda")


def _stays_on_cpu_unless_cast(to):
    """Tensor.to with a GPU device (0, "cuda", "cuda:0") keeps the tensor where it is; a dtype still casts."""
    def moved(tensor, *args, **kwargs):
        if args and _is_gpu(args[0]):
            args = args[1:]
        if _is_gpu(kwargs.get("device", "cpu")):
            kwargs.pop("device")
        return to(tensor, *args, **kwargs) if args or kwargs else tensor
    return moved


def _uses_torch(script: str) -> bool:
    # Importing torch takes seconds: the evaluation scripts (numpy only) are run without it.
    with open(script, encoding="utf-8") as handle:
        return re.search(r"^\s*(import torch|from torch)", handle.read(), re.MULTILINE) is not None


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: cpu_launch.py SCRIPT [ARGS...]")
    script = sys.argv[1]
    if _uses_torch(script):
        import torch

        torch.cuda.set_device = lambda *args, **kwargs: None
        torch.Tensor.cuda = _stay_on_cpu
        torch.Tensor.to = _stays_on_cpu_unless_cast(torch.Tensor.to)
        torch.nn.Module.cuda = _stay_on_cpu
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
