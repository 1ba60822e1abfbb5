"""``python -m onnxopt``: the same command as ``onnxopt``."""

from onnxopt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
