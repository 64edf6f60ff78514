"""The repository stands on its own: its text names no file it does not hold (a design note,
a folder beside the checkout), so a reader of any file can follow every reference."""

import re
import subprocess

from conftest import ROOT

# Files the code writes (experiment reports) or a test makes up: named, never shipped.
GENERATED = {'report.md', 'notes.md'}
# A relative path to a .md or .py file, or a bare NAME.md; ../ anywhere is a path out of the repo.
PATH = re.compile(r'(?<![\w./{}$-])((?:\.\./|[\w-]+/)*[\w-]+\.(?:md|py))\b')


def _tracked() -> list[str]:
  out = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True)
  return out.stdout.split()


def _text_files(tracked):
  for name in tracked:
    try:
      yield name, (ROOT / name).read_text(encoding='utf-8')
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
      continue  # images; a path deleted but not yet committed


def missing_references(tracked: list[str], files) -> list[str]:
  """'file: reference' for each path to a .md / .py file that no tracked file answers (the path
  itself, or the tail of one), for each bare NAME.md no tracked file is called, and for every
  '../shared'."""
  names = {t.rsplit('/', 1)[-1] for t in tracked}
  bad = []
  for name, text in files:
    bad += [f'{name}: ../shared' for _ in re.finditer(r'\.\./shared', text)]
    for ref in PATH.findall(text):
      if ref.rsplit('/', 1)[-1] in GENERATED:
        continue
      if '/' not in ref:
        if ref.endswith('.md') and ref not in names:
          bad.append(f'{name}: {ref}')
      elif ref.startswith('../') or not any(t == ref or t.endswith('/' + ref) for t in tracked):
        bad.append(f'{name}: {ref}')
  return sorted(set(bad))


def test_no_reference_to_a_file_outside_the_repository():
  tracked = _tracked()
  files = [(n, t) for n, t in _text_files(tracked) if n != 'tests/test_self_contained.py']
  assert missing_references(tracked, files) == []  # this file's examples are what it looks for


def test_the_scan_finds_what_it_is_for():
  tracked = ['README.md', 'dlm/config.py', 'configs/d12.py']
  text = ('see PLAN.md and ../shared/data/x.txt; dlm/config.py, configs/d12.py, d12.py and '
          'dlm/gone.py; ../notes/STYLE.md; writes runs/x/report.md')
  assert missing_references(tracked, [('a.py', text)]) == [
      'a.py: ../notes/STYLE.md', 'a.py: ../shared', 'a.py: PLAN.md', 'a.py: dlm/gone.py']
