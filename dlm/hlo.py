"""Reading a compiled XLA program: its collectives, where they run and what they move, and the
peak memory per device. What the FSDP measurements (`dlm.bench --fsdp_sizes`) and the tests
of the train step's communication read."""

import re

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
# `%name = f32[2,64]{1,0} all-gather(...)` or the async `-start` form, whose result is a tuple
_OP = re.compile(r'=\s*(\(?[^=]*?\)?)\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')
_ARRAY = re.compile(r'([a-z]+\d*|pred)\[([\d,]*)\]')
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
          's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def _computations(text: str) -> dict:
  """{name: body} of every computation of the module."""
  return {re.match(r'(?:ENTRY )?%?([\w.\-]+)', b).group(1): b
          for b in re.split(r'\n\n(?=\S)', text) if b.strip() and not b.startswith('HloModule')}


def _runs(comps: dict) -> tuple[dict, set]:
  """({computation: how many times one execution of the module runs it}, the computations
  inside some while loop), from the loops' known trip counts (a loop whose count XLA does not
  know counts once)."""
  runs, looped = {}, set()
  entry = next((n for n, b in comps.items() if b.startswith('ENTRY')), None)

  def visit(name, times, in_loop):
    if name not in comps:
      return
    runs[name] = runs.get(name, 0) + times
    if in_loop:
      looped.add(name)
    for line in comps[name].splitlines():
      loop = re.search(r' while\(.*?condition=%?([\w.\-]+), body=%?([\w.\-]+)', line)
      if loop:
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        n = int(trips.group(1)) if trips else 1
        visit(loop.group(1), times * (n + 1), True)
        visit(loop.group(2), times * n, True)
        continue
      for callees in re.findall(r'(?:calls|to_apply|branch_computations)='
                                r'\{?%?([\w.\-]+(?:, %?[\w.\-]+)*)', line):
        for callee in re.split(r', %?', callees):
          visit(callee, times, in_loop)
  if entry:
    visit(entry, 1, False)
  return runs, looped


def collectives(text: str) -> list[dict]:
  """Every collective of a compiled module's text: {kind, shape (the largest array of its
  result), bytes (its whole result), looped (inside a while loop), runs (how many times one
  step runs it: the product of the trip counts of the loops around it)}."""
  comps = _computations(text)
  runs, looped = _runs(comps)
  out = []
  for name, body in comps.items():
    for line in body.splitlines():
      m = _OP.search(re.sub(r'/\*.*?\*/', '', line))
      if not m:
        continue
      arrays = [(t, tuple(int(d) for d in dims.split(',') if d))
                for t, dims in _ARRAY.findall(m.group(1))]
      sizes = [(_BYTES.get(t, 4) * _prod(s), s) for t, s in arrays]
      if '-start(' in line and m.group(2) != 'all-reduce':
        sizes = sizes[len(sizes) // 2:]  # async: (operands, results); keep the results
      out.append({'kind': m.group(2), 'shape': max(sizes)[1] if sizes else (),
                  'bytes': sum(b for b, _ in sizes), 'looped': name in looped,
                  'runs': runs.get(name, 0)})
  return out


def summary(ops: list[dict]) -> dict:
  """{kind: {'ops': in the program, 'per_step': executions per step, 'bytes': moved per step
  (result sizes), 'in_loops': executions per step inside loops}}."""
  out = {}
  for op in ops:
    e = out.setdefault(op['kind'], {'ops': 0, 'per_step': 0, 'bytes': 0, 'in_loops': 0})
    e['ops'] += 1
    e['per_step'] += op['runs']
    e['bytes'] += op['runs'] * op['bytes']
    e['in_loops'] += op['runs'] if op['looped'] else 0
  return out


def while_loops(text: str) -> int:
  return len(re.findall(r' while\(', text))


def peak_bytes(compiled) -> int:
  """Bytes a device holds at the compiled program's peak, by XLA's own accounting: its
  arguments, the outputs not written over donated arguments, and its temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def _prod(shape) -> int:
  n = 1
  for d in shape:
    n *= d
  return n
