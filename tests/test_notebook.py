"""notebooks/sampling.ipynb runs from top to bottom on a tiny labelled run, so it cannot rot."""

import os
import re
import sys

import nbclient
import nbformat

from conftest import ROOT, tiny_config
from dlm import train
from dlm.conditioning import PLACEHOLDER

NOTEBOOK = ROOT / 'notebooks' / 'sampling.ipynb'


def test_the_committed_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def _text(cell) -> str:
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')


def test_sampling_notebook_runs_on_a_tiny_labelled_run(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  c = tiny_config(**{'data.label': 'keyword:the', 'diffusion.condition_fraction': 0.25,
                     'train.num_iterations': 6})
  train.train(c, str(workdir), log=lambda *a, **k: None)
  latent_workdir = tmp_path / 'latent'  # the latent section's run: two steps per stage
  train.train(tiny_config(**{'model.family': 'latent', 'latent.iterations': 2,
                             'train.num_iterations': 2, 'latent.stat_batches': 1}),
              str(latent_workdir), log=lambda *a, **k: None)

  # The kernel is a subprocess: it inherits these. It shares the tests' compilation cache, and
  # a user-level 'python3' kernelspec (~/.local/share/jupyter) cannot shadow this venv's.
  monkeypatch.setenv('DLM_WORKDIR', str(workdir))
  monkeypatch.setenv('DLM_LATENT_WORKDIR', str(latent_workdir))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  monkeypatch.setenv('JUPYTER_DATA_DIR', str(tmp_path / 'jupyter'))
  monkeypatch.delenv('JUPYTER_PATH', raising=False)

  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell('import sys; print(sys.executable)'))
  # Started from notebooks/, as Jupyter would: the notebook finds the repository root itself.
  nbclient.NotebookClient(nb, kernel_name='python3', timeout=120, allow_errors=False,
                          resources={'metadata': {'path': str(ROOT / 'notebooks')}}).execute()

  code = [cell for cell in nb.cells if cell.cell_type == 'code']
  for cell in code:
    assert not [o for o in cell.outputs if o.output_type == 'error'], cell.source[:80]
    # Loading and sampling print nothing to stderr (no Orbax / absl / JAX noise).
    assert not [o.text for o in cell.outputs if o.get('name') == 'stderr'], cell.source[:80]
  assert os.path.samefile(_text(code[-1]).strip(), sys.executable)  # this venv's kernel

  assert f'{workdir}: diffusion run at step 6' in _text(code[0])
  assert len(re.findall(r'^\[\d\] ', _text(code[1]), re.M)) == 4

  prompt_cell = next(cell for cell in code if 'prompt=prompt' in cell.source)
  prompt = re.search(r"prompt: '(.*)'", _text(prompt_cell)).group(1)
  assert _text(prompt_cell).count(f'] {prompt}') == 4

  # The tiny run's 16 tokens are too few for the long template: the notebook picked one that fits,
  # and every sample keeps its fixed text around the generated fills.
  infill_cell = next(cell for cell in code if 'infill=template' in cell.source)
  infill = _text(infill_cell)
  template = re.search(r"template: '(.*)'", infill).group(1)
  assert template == 'Once [MASK:3] a [MASK:2] end'
  fixed = [p.rstrip(' ') for p in PLACEHOLDER.split(template)[::2]]  # 'Once', ' a', ' end'
  samples = re.split(r'^\[\d\] fills: \[.*\]\n    ', infill, flags=re.M)[1:]
  assert len(samples) == 4
  for sample in samples:  # the text, fills included, may span lines
    assert re.match('.*'.join(map(re.escape, fixed)), sample, re.S), sample

  guidance_cell = next(cell for cell in code if 'guidance=W' in cell.source)
  table = re.findall(r'^\s+(\d+)\s+([01]\.\d\d)$', _text(guidance_cell), re.M)
  assert [W for W, _ in table] == ['0', '1', '2', '4']

  trajectory = [cell for cell in code if 'show_trajectory(' in cell.source]
  assert len(trajectory) == 2
  for cell in [guidance_cell, *trajectory]:
    assert any('image/png' in o.get('data', {}) for o in cell.outputs), cell.source[:80]
  for cell in trajectory:
    assert len(re.findall(r'^step +\d+/10: ', _text(cell), re.M)) == 6
    assert re.search(r'^sample   : ', _text(cell), re.M)
  assert "'<|bos|>Once" in _text(trajectory[1])

  # The latent run's sample, decoded at six of its ten steps, then the sample itself: each
  # step's text and its share of the final tokens.
  latent_cell = _text(next(cell for cell in code if 'DLM_LATENT_WORKDIR' in cell.source))
  assert f'{latent_workdir}: latent run at step 2, 4 tokens per latent of 32 numbers' in latent_cell
  steps = re.findall(r"^step +(\d+)/10 \( *(\d+)% final\): '(.*)'$", latent_cell, re.M)
  assert [int(s) for s, _, _ in steps] == [1, 3, 5, 6, 8, 10]
  sample = re.search(r"^sample +: '(.*)'$", latent_cell, re.M).group(1)
  assert sample and all(0 <= int(share) <= 100 and text for _, share, text in steps)
