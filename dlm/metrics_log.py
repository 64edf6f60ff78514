"""workdir/metrics.jsonl: one JSON object per logged step, appended across resumes, never with
a step twice or a torn line (`MetricsLog`)."""

import json

from dlm import sharding, storage


class MetricsLog:
  """workdir/metrics.jsonl, one JSON object per logged step, appended across resumes.

  A run first drops the records it is about to write again: those after the checkpoint it
  resumes from (all of them when it starts afresh), and the final evaluation when it resumes at
  the last step (killed during it), so no step appears twice; and a torn last line left by a
  kill mid-write. The new file replaces the old one whole (`storage.write_text`), so a kill
  during the rewrite leaves one or the other.

  tracker: a `dlm.tracking.Tracker` fed the same records: first those kept, then each new one."""

  def __init__(self, workdir: str, resume_step: int, last_step: int | None = None,
               tracker=None):
    self.path = storage.join(workdir, 'metrics.jsonl')
    self.enabled = sharding.is_main_process()
    self.tracker = tracker
    if not self.enabled:
      return
    kept = [(line, r) for line, r in _whole_records(self.path)
            if _kept(r.get('step', 0), 'loss' in r, resume_step, last_step)]
    storage.write_text(self.path, ''.join(line for line, _ in kept))  # whole or not at all
    if tracker is not None:
      tracker.start([r for _, r in kept])

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    storage.append_lines(self.path, [json.dumps(record) + '\n'])
    if self.tracker is not None:
      self.tracker.write(record)


def _kept(step: int, is_loss: bool, resume_step: int, last_step: int | None) -> bool:
  """Whether a record of `step` stays when the run resumes at `resume_step`."""
  if resume_step == 0:  # starting afresh, the run writes everything again
    return False
  if step == resume_step == last_step:  # resuming after the loop: the final evaluation again
    return is_loss
  return step <= resume_step


def _whole_records(path: str):
  """(line, record) for each line of `path` that holds a whole JSON object."""
  if not storage.exists(path):
    return
  for line in storage.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict):
      yield line + '\n', record
