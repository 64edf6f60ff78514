"""The documentation can be followed: every relative link of README.md and docs/*.md reaches a
file of the repository and, with a #fragment, a heading of that page; the README's test command
is the one CI runs."""

import re

from conftest import ROOT

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
  pages = {'docs/x.md': '[ok](results.md#results) [gone](nothing.md) [bad](results.md#nowhere) '
                        '![img](results/families_frontier.png) [here](#x) [web](https://x.org)\n'
                        '# X\n'}
  assert broken_links(pages) == ['docs/x.md: nothing.md', 'docs/x.md: results.md#nowhere']


def test_the_readme_test_command_is_what_ci_runs():
  readme = (ROOT / 'README.md').read_text()
  ci = (ROOT / '.ci' / 'run').read_text().strip().splitlines()
  assert ci[-1] == 'python -m pytest -q -n 2 tests'
  assert f'```bash\n{ci[-1]}\n```' in readme
