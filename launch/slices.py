"""Cloud TPU slice types: names, replicas, hosts, runtime images.

A Cloud TPU accelerator type is `v<generation>-<TensorCores>`. TPUStrategy
runs one replica per TensorCore on v3 (2 per chip) and one per chip on v4
(its two TensorCores act as one megacore device), so a v3-1024 has 1024
replicas and a v4-1024 has 512. Each TPU VM host holds 4 chips.
"""
import dataclasses
import re

from launch.commands import LaunchError
from official_ext.modeling.layers import group_assignment

# The v3 slice types Cloud TPU offers: those of the chip-mesh table.
V3_CORES = tuple(sorted(group_assignment.TPU_V3_CHIP_MESH))
V4_CORES = tuple(2**k for k in range(3, 13))  # v4-8 .. v4-4096
CHIPS_PER_HOST = 4
_CORES_PER_CHIP = {'v3': 2, 'v4': 2}
_REPLICAS_PER_CHIP = {'v3': 2, 'v4': 1}
_SIZES = {'v3': V3_CORES, 'v4': V4_CORES}


@dataclasses.dataclass(frozen=True)
class SliceType:
  generation: str   # 'v3' or 'v4'
  cores: int        # TensorCores, the number in the name

  @property
  def name(self) -> str:
    return f'{self.generation}-{self.cores}'

  @property
  def chips(self) -> int:
    return self.cores // _CORES_PER_CHIP[self.generation]

  @property
  def replicas(self) -> int:
    """TPUStrategy replicas: what `runtime.tpu_cores` must equal."""
    return self.chips * _REPLICAS_PER_CHIP[self.generation]

  @property
  def hosts(self) -> int:
    return max(1, self.chips // CHIPS_PER_HOST)

  @property
  def is_pod(self) -> bool:
    """More than one TPU VM host: a pod slice, driven from worker 0."""
    return self.hosts > 1

  def runtime_version(self, tf_version: str) -> str:
    """The TPU VM image with this TensorFlow (tpu-vm-tf-X.Y.Z[-pod]-pjrt)."""
    return f'tpu-vm-tf-{tf_version}{"-pod" if self.is_pod else ""}-pjrt'


def accepted() -> str:
  return (f'v3-{{{",".join(map(str, V3_CORES))}}} or '
          f'v4-{{{",".join(map(str, V4_CORES))}}}')


def parse(name: str) -> SliceType:
  """The slice type named `name`, e.g. 'v3-1024'; LaunchError otherwise."""
  match = re.fullmatch(r'(v[34])-(\d+)', name or '')
  if not match or int(match.group(2)) not in _SIZES[match.group(1)]:
    raise LaunchError(f'--slice={name!r} is not a TPU slice type; use '
                      f'{accepted()}')
  return SliceType(match.group(1), int(match.group(2)))


def for_replicas(replicas: int, generation: str = 'v3') -> SliceType:
  """The slice of `generation` with `replicas` TPUStrategy replicas."""
  for cores in _SIZES[generation]:
    candidate = SliceType(generation, cores)
    if candidate.replicas == replicas:
      return candidate
  raise LaunchError(
      f'no {generation} slice has {replicas} replicas; pass --slice '
      f'({accepted()}) with --params_override=runtime.tpu_cores=N')
