"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class DlmError(Exception):
  """A user-facing problem (bad config, missing data, no checkpoint): printed as one line."""
