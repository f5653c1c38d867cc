"""TensorFlow's own log output, set up before TensorFlow is imported.

Entry points (train.py, the export tool) call `quiet_tensorflow_logs()` first:

- TensorFlow's C++ INFO and WARNING lines (oneDNN notices and the like) are
  hidden (`TF_CPP_MIN_LOG_LEVEL=2`). On a host without an NVIDIA GPU its
  ERROR lines are hidden too (3): TensorFlow probes CUDA when it loads and
  logs the failed probe (`failed call to cuInit`) as an error, though nothing
  is wrong. Errors that matter still surface, as Python exceptions. An
  explicit `TF_CPP_MIN_LOG_LEVEL` is kept.
- absl's logging handler is installed now, not when `app.run` starts:
  TensorFlow's Python logger adds a stderr handler of its own when the root
  logger has none at import, and then every TensorFlow warning prints twice
  (once per handler).

TensorFlow-free: importing this module must not load TensorFlow.
"""
import glob
import os

from absl import logging


def gpu_present() -> bool:
  """Whether this host has an NVIDIA GPU that CUDA may use."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None and visible.strip() in ('', '-1'):
    return False
  # The NVIDIA driver creates one device node per GPU.
  return bool(glob.glob('/dev/nvidia[0-9]*'))


def quiet_tensorflow_logs() -> None:
  """Sets TensorFlow's native log level and the Python log handler.

  Must run before `import tensorflow`.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL',
                        '2' if gpu_present() else '3')
  logging.use_absl_handler()
