"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class DlmError(Exception):
  """A user-facing problem (bad config, missing data, no checkpoint): printed as one line."""


def run_cli(body) -> None:
  """The absl entry of a `python -m dlm.X` command: Orbax kept quiet (it logs every save and
  restore at INFO), a DlmError as one line on stderr and exit status 1, no traceback."""
  import sys

  from absl import app, logging

  def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    try:
      body()
    except DlmError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
  app.run(main)
