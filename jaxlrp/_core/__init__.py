"""The private core of jaxlrp: tracing a function, analysing its program, running it
with rules.

Every import points down this list (``tests/test_layering.py`` checks it), and
nothing here imports a public module of ``jaxlrp``:

* ``errors``: the typed exceptions and warnings (re-exported by :mod:`jaxlrp`).
* ``kinds``: the layer kinds, defined once.
* ``primitives``: every table of primitive names (by treatment, by example-axis rule,
  canonisation, parameter routing).
* ``program``: a flat view of a jaxpr (``Eqn``, ``Var``, ``Program``) and its replay.
* ``paths``: layer names from name stacks and parameter paths.
* ``patterns``: recognisers of multi-equation constructs (softmax, gates, attention).
* ``canonize``: the affine chain after a layer, folded into it.
* ``analysis``: the registry of treatments; a program in, a plan of nodes out.
* ``example_axes``: the registry of example-axis rules: which axes of a value index
  examples.
* ``engine``: ``Node``, ``Rule`` and the modified-gradient formula the rules of
  :mod:`jaxlrp.rules` are written on.
* ``widening``: narrow float values (bfloat16) computed and carried wide, so that
  their relevance is.
* ``interpreter``: the program re-run with one custom VJP per rule-bearing equation.
* ``types``: the types the core and the public modules share (``Target``, ...).
* ``checks``: small checks shared by every module.
* ``trace``: an explainer's arguments traced, analysed and given their rules.
* ``run``: a traced function run under :func:`jax.vjp`, seeded with the initial
  relevance.
* ``eager``: an eager call run as one compiled program.
* ``parameters``: the relevance of parameters (weights and bias shares).

The public modules (``explain``, ``composites``, ``rules``, ...) import from here,
under the names above (none with a leading underscore).
"""
