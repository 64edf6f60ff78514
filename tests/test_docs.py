"""The documentation can be followed: every relative link of README.md and docs/*.md reaches a
file of the repository and, with a #fragment, a heading of that page; every command they show
names flags its program defines, config fields that exist and config files that are there; the
README's test command is the one CI runs."""

import re
import shlex

from conftest import ROOT
from dlm import config as config_lib

LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.M | re.S)


def anchors(markdown: str) -> set[str]:
  """The fragment of each heading as GitHub renders it: lower case, punctuation dropped, spaces
  to hyphens, repeats numbered -1, -2, ..."""
  seen, out = {}, set()
  for heading in re.findall(r'^#{1,6} +(.+?) *$', FENCE.sub('', markdown), re.M):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f'{slug}-{n}')
  return out


def broken_links(pages: dict) -> list[str]:
  """'page: target' for each relative link (pages: {path relative to ROOT: text}) whose file is
  missing or whose #fragment names no heading of its page."""
  bad = []
  for page, text in pages.items():
    for target in LINK.findall(FENCE.sub('', text)):
      if re.match(r'[a-z]+:', target):
        continue  # https:, mailto:
      path, _, fragment = target.partition('#')
      if not path:  # a heading of this page
        bad += [f'{page}: {target}'] if fragment not in anchors(text) else []
        continue
      file = (ROOT / page).parent / path
      if not file.exists():
        bad.append(f'{page}: {target}')
      elif fragment and (file.suffix != '.md' or fragment not in anchors(file.read_text())):
        bad.append(f'{page}: {target}')
  return bad


def _pages() -> dict:
  return {str(p.relative_to(ROOT)): p.read_text()
          for p in [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]}


def test_every_relative_link_of_the_docs_resolves():
  pages = _pages()
  assert len(pages) >= 9  # the README and its pages
  assert broken_links(pages) == []


def test_the_link_check_finds_what_it_is_for():
  assert anchors("# A b\n## The seed's recipe: (x)\n```\n# not a heading\n```\n## A b\n") == {
      'a-b', 'the-seeds-recipe-x', 'a-b-1'}
  gone = 'nothing' + '.md'  # spelled apart: tests/test_self_contained.py looks for such names
  page = (f'[ok](results.md#results) [gone]({gone}) [bad](results.md#nowhere) [here](#x) '
          '![img](results/families_frontier.png) [web](https://x.org)\n# X\n')
  assert broken_links({'docs/results.md': page}) == [
      f'docs/results.md: {gone}', 'docs/results.md: results.md#nowhere']


COMMAND = re.compile(r'^(?:\$ )?(python (?:main\.py|-m dlm\.[\w.]+) .*)$', re.M)
DEFINED = re.compile(r"(?:flags\.DEFINE_\w+\(|add_argument\()\s*'(?:--)?(\w+)'")


def commands(markdown: str) -> list[str]:
  """The `python main.py ...` / `python -m dlm.x ...` commands of the page's code blocks and
  inline code, each on one line, comments dropped."""
  blocks = ''.join(m.group(0) for m in FENCE.finditer(markdown)).replace('\\\n', ' ')
  inline = [' '.join(span.split()) for span in re.findall(r'`([^`]+)`', FENCE.sub('', markdown))]
  inline = [span[span.index('python '):] for span in inline if 'python main.py ' in span
            or 'python -m dlm.' in span]
  return [' '.join(c.split(' #')[0].split()) for c in COMMAND.findall(blocks) + inline]


def bad_flags(command: str) -> list[str]:
  """The flags of `command` its program does not define, the --config.X fields the config does
  not have, and a --config file that is not there."""
  words = shlex.split(command)
  program = ROOT / ('main.py' if words[1] == 'main.py' else words[2].replace('.', '/') + '.py')
  if not program.exists():
    return [str(program.relative_to(ROOT))]
  defined = set(DEFINED.findall(program.read_text()))
  bad = []
  for i, word in enumerate(words):
    if not word.startswith('--'):
      continue
    name = word[2:].partition('=')[0]
    if name.startswith('config.'):
      bad += [] if name.removeprefix('config.') in config_lib.RULES else [word]
    elif name not in defined and not (name.startswith('no') and name[2:] in defined):
      bad.append(word)
    elif name == 'config':
      file = word.partition('=')[2] or words[i + 1]
      bad += [] if (ROOT / file).is_file() else [word]
  return bad


def test_every_documented_command_uses_real_flags_and_files():
  found = {page: commands(text) for page, text in _pages().items()}
  assert sum(map(len, found.values())) >= 40
  assert [(page, c, bad) for page, cs in found.items() for c in cs if (bad := bad_flags(c))] == []


def test_the_command_check_finds_what_it_is_for():
  gone = 'configs/gone' + '.py'  # spelled apart, as above
  page = ('```bash\npython main.py --config configs/quickstart.py \\\n    --config.model.depht=2  # x\n'
          f'$ python -m dlm.bench --config {gone} --nocache --batch=2\n```\n'
          'python main.py --not_in_code\nsee `XLA_FLAGS=x python -m dlm.bench\n--steps=2`\n')
  found = commands(page)
  assert found == ['python main.py --config configs/quickstart.py --config.model.depht=2',
                   f'python -m dlm.bench --config {gone} --nocache --batch=2',
                   'python -m dlm.bench --steps=2']
  assert bad_flags(found[0]) == ['--config.model.depht=2']
  assert bad_flags(found[1]) == ['--config', '--nocache']
  assert bad_flags('python main.py --mode=sample --nocache --sampler=ddim') == []
  assert bad_flags('python -m dlm.gone --x') == ['dlm/gone' + '.py']


def test_the_readme_test_command_is_what_ci_runs():
  readme = (ROOT / 'README.md').read_text()
  ci = (ROOT / '.ci' / 'run').read_text().strip().splitlines()
  assert ci[-1] == 'python -m pytest -q -n 2 tests'
  assert f'```bash\n{ci[-1]}\n```' in readme
