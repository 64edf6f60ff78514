"""Stopping cleanly when asked: SIGTERM (what schedulers and `kill` send), SIGINT (Ctrl-C) and
SIGUSR1 (SLURM's advance notice, `launch/slurm.sh`) end training after the current step, with a
checkpoint at that step, instead of losing the steps since the last periodic one.

The loop asks `should_stop(step)` after each step. With one process a handler sets a flag. With
several, all must stop at the same step or the collective checkpoint save hangs: JAX's
preemption sync manager (started by `jax.distributed.initialize`) listens for SIGTERM itself, in
C++, and agrees on the step with the other processes through the coordination service. There
SIGTERM is left to JAX and the other signals are forwarded to it as SIGTERM.

The first signal restores the default action of all three, so a second one ends the process at
once (non-zero exit, no checkpoint), whatever the loop is doing; with several processes, where
JAX keeps SIGTERM and only notes a second one, that is a second SIGINT or SIGUSR1. (A signal
that arrives while the first one's handler waits for the main thread to leave a long call into
XLA counts as the same one.)
"""

import os
import signal
import threading

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Guard:
  """Signal handlers installed while `steps` is iterated, the previous ones restored after."""

  def __init__(self, signals=SIGNALS):
    self.signals = tuple(signals)
    self.received = None  # the name of the first signal
    self._multi = jax.process_count() > 1
    self._previous = {}

  def steps(self, start: int, stop: int):
    """range(start, stop) with the handlers installed; they go when the loop ends, however it
    ends (a return or an exception closes the generator)."""
    self._install()
    try:
      yield from range(start, stop)
    finally:
      self._restore()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (the number of steps done). Every process
    calls this at every step, as the sync manager requires."""
    if self._multi:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM just ends the run
        return False
    return self.received is not None

  def _install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # only the main thread may set handlers (training from a notebook's thread)
    for s in self.signals:
      if not (self._multi and s == signal.SIGTERM):
        self._previous[s] = signal.signal(s, self._handle)

  def _restore(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    self.received = name
    for s in self._previous:
      signal.signal(s, signal.SIG_DFL)
    # os.write, not print: the handler may run in the middle of a print to the same stream.
    os.write(2, f'received {name}: stopping after this step with a checkpoint '
                f'(send it again to stop at once, without one)\n'.encode())
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's handler, which tells the other processes
