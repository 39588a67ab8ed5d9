"""The private core of jaxlrp: tracing a function, analysing its program, running it
with rules.

Every import points down this list; nothing here imports a public module of
``jaxlrp`` (except the rule engine of :mod:`jaxlrp.rules`, until it moves here):

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
* ``interpreter``: the program re-run with one custom VJP per rule-bearing equation.

The public modules (``explain``, ``composites``, ``rules``, ...) import from here.
"""
