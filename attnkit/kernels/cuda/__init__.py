"""Numba CUDA kernels (numba-cuda), imported only when the cuda backend is used.

* :mod:`.runtime`: is there a GPU (or the simulator), device-array helpers,
  kernel launches with more than 48 KB of dynamic shared memory.
* :mod:`.tiling`: thread-block tilings and shared-memory layouts.
* :mod:`.masking`: the mask programs of :mod:`attnkit.masks` evaluated on the
  device (same postfix format and tile classification as the CPU kernels).
* :mod:`.attention`: kernel factories (forward, exact weights, per-query
  statistics, received attention), cached per tiling, dtype, mask kind and
  score_mod.
* :mod:`.api`: runs a prepared problem (:mod:`attnkit._prepare`) on the GPU.
* :mod:`.rollout`: batched attention rollout of stored attention, and rollout
  rows streamed from per-layer queries and keys.

Importing this package imports ``numba.cuda``; ``import attnkit`` does not.
See docs/gpu.md for the kernel design.
"""
