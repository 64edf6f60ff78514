"""Random inputs keyed by global row, so a training step draws the same values however it is
split over devices, processes and accumulation micro-steps.

A step's batch is A x B windows; its global row r = a * B + b is window b of micro-batch a, the
index the data pipeline gives it too (`dlm.data.pipeline`). Every value drawn for row r comes
from `fold_in(key, r)` with the step's key, and what couples the rows of a step (the
stratified noise levels) is a function of the step's key and r alone. So any device can draw
its own rows of any micro-batch, inside the accumulation scan, and get the numbers a single
device drawing the whole step would.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Rows(NamedTuple):
  """Which rows of a step a draw is for: index (B,) int32 global row numbers, and the number
  of rows the whole step has (static)."""
  index: jax.Array
  total: int


def whole(batch: int) -> Rows:
  """All rows of a batch drawn at once (evaluation, bounds, one-device callers)."""
  return Rows(jnp.arange(batch), batch)


def of(rows: Rows | None, batch: int) -> Rows:
  return whole(batch) if rows is None else rows


def keys(key, rows: Rows):
  """One key per row: fold_in(key, r)."""
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(rows.index)


def per_row(fn, key, rows: Rows):
  """fn(row key) for every row, stacked on a leading axis."""
  return jax.vmap(fn)(keys(key, rows))


def uniform(key, rows: Rows, shape: tuple = ()):
  return per_row(lambda k: jax.random.uniform(k, shape), key, rows)


def normal(key, rows: Rows, shape: tuple = ()):
  return per_row(lambda k: jax.random.normal(k, shape), key, rows)


def stratified(key, rows: Rows):
  """Low-discrepancy points in [0, 1) over the step's rows: one offset shared by the step,
  spaced 1 / total apart, dealt to the rows by a random permutation (Kingma et al. 2021,
  appendix: it cuts the variance of the loss estimate). Row r gets (u + perm[r] / total) mod 1,
  so a device that holds only some rows draws their points without the others. The
  permutation keeps any fixed subset of rows (the self-conditioned half) a random sample of
  levels rather than the lowest ones."""
  k_u, k_perm = jax.random.split(key)
  perm = jax.random.permutation(k_perm, rows.total)
  return (jax.random.uniform(k_u, ()) + perm[rows.index] / rows.total) % 1.0


def even(rows: Rows):
  """The rows that get the self-conditioning pass: every other global row."""
  return rows.index % 2 == 0
